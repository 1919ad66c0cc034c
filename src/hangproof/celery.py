"""``harden(app)``: one line that makes a Celery worker unable to hang silently.

    >>> from celery import Celery
    >>> from hangproof.celery import harden
    >>> app = Celery("proj", broker="amqp://guest:guest@127.0.0.1:5672//")
    >>> policy = harden(app)
    >>> app.conf.broker_heartbeat, app.conf.broker_transport
    (5, 'hangproof.kombu:Transport')

Everything is derived from ``policy.stall_timeout`` (docs/guard.md explains
each setting and its trade-off). This module is ``hangproof.celery``; the
imports below are absolute, so ``celery`` is the real Celery.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.utils.imports import symbol_by_name

from hangproof.failure import Policy
from hangproof.guard import connection, upstream
from hangproof.guard.celery_steps import (
    APP_ATTRIBUTE,
    ConsumingStep,
    GuardConsumerMixin,
    WatchdogStep,
    guard_consumer_class,
)
from hangproof.guard.runtime import LivenessConfig
from hangproof.guard.transport import (
    SSL_TRANSPORT_ALIAS,
    SSL_TRANSPORT_PATH,
    TRANSPORT_ALIAS,
    TRANSPORT_PATH,
)

__all__ = ["harden", "socket_settings", "transport_options"]


def socket_settings(policy: Policy) -> dict[int, int]:
    """py-amqp ``socket_settings`` (TCP level option -> value) from the policy.

    >>> s = socket_settings(Policy(stall_timeout=15))
    >>> s[socket.TCP_USER_TIMEOUT], s[socket.TCP_KEEPIDLE], s[socket.TCP_KEEPCNT]
    (15000, 5, 3)
    """
    settings: dict[int, int] = {}
    user_timeout = getattr(socket, "TCP_USER_TIMEOUT", 18)  # 18 on Linux
    settings[user_timeout] = int(policy.tcp_user_timeout_ms or 0)
    for name, value in (
        ("TCP_KEEPIDLE", policy.keepalive_idle),
        ("TCP_KEEPINTVL", policy.keepalive_interval),
        ("TCP_KEEPCNT", policy.keepalive_count),
    ):
        if hasattr(socket, name) and value is not None:
            settings[getattr(socket, name)] = int(value)
    return settings


def transport_options(policy: Policy) -> dict[str, Any]:
    """The ``broker_transport_options`` harden() merges into the app's.

    >>> options = transport_options(Policy(stall_timeout=15))
    >>> options["handshake_deadline"], options["confirm_publish"], options["publish_timeout"]
    (7.5, True, 7.5)
    """
    backoff = policy.backoff
    return {
        "handshake_deadline": policy.handshake_deadline,
        # Publisher confirms with one total deadline (guard transport): a
        # publish returns only once the broker has the message, and fails
        # with BrokerBlocked / PublishTimeout instead of hanging or lying.
        "confirm_publish": True,
        "publish_timeout": policy.publish_timeout,
        # Close-Ok / Cancel-Ok waits on a possibly dead connection (guard transport).
        "teardown_timeout": policy.teardown_timeout,
        "socket_settings": socket_settings(policy),
        "read_timeout": policy.read_timeout,
        "write_timeout": policy.write_timeout,
        # kombu's reconnect pacing (the worker's ensure_connection, via
        # guard/connection.py, and ensure()): the first retry after
        # backoff.initial, as Backoff.delay(0), then linear steps up to
        # backoff.maximum. Never 0: a broker that refuses (a wrong CA, a
        # restart) must not see an immediate retry on top of the failure.
        "interval_start": backoff.initial,
        "interval_step": backoff.initial,
        "interval_max": backoff.maximum,
    }


#: URL schemes (and ``broker_transport`` names) that mean TLS, as kombu reads them.
TLS_SCHEMES = ("amqps", SSL_TRANSPORT_ALIAS)


def _guard_url(url: str) -> str:
    """The URL with its scheme set to the guard's alias (TLS kept: amqps -> hangproofs).

    >>> _guard_url("amqp://h//"), _guard_url("amqps://h//"), _guard_url("redis://h")
    ('hangproof://h//', 'hangproofs://h//', 'redis://h')
    """
    # kombu re-parses failover alternates with parse_url(), which takes the
    # transport from the URL scheme and so would fall back to stock py-amqp;
    # the registered aliases keep the guard transport on every alternate, and
    # TLS on those that asked for it.
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if scheme in ("amqp", "pyamqp"):
        return f"{TRANSPORT_ALIAS}://{rest}"
    if scheme == "amqps":
        return f"{SSL_TRANSPORT_ALIAS}://{rest}"
    return url


def _wants_tls(url: object, transport: object) -> bool:
    """Whether the first broker URL (or an explicit ``broker_transport``) asks for TLS.

    >>> _wants_tls("amqps://h//", None), _wants_tls(["amqp://a", "amqps://b"], None)
    (True, False)
    """
    if isinstance(url, list | tuple):
        url = url[0] if url else None
    if isinstance(url, str) and ";" in url:
        url = url.split(";", 1)[0]
    scheme = url.partition("://")[0] if isinstance(url, str) and "://" in url else None
    if scheme in TLS_SCHEMES:
        return True
    return scheme is None and transport in TLS_SCHEMES


def harden(
    app: Celery,
    policy: Policy | None = None,
    *,
    late_acks: bool = False,
    liveness_port: int | None = None,
    liveness_host: str = "127.0.0.1",
    heartbeat_file: str | Path | None = None,
    consuming_probe: bool = True,
) -> Policy:
    """Configure ``app`` so its workers notice any stall within ``stall_timeout``.

    - connection settings from ``policy`` (see docs/guard.md);
    - the broker transport becomes ``hangproof.kombu:Transport`` (total
      handshake deadline, also under gevent/eventlet where Celery sets
      ``broker_connection_timeout=None``), or ``hangproof.kombu:SSLTransport``
      for an ``amqps://`` URL; ``broker_use_ssl`` is kept as it is, and
      failover alternates keep their own scheme's TLS (``hangproofs://``);
    - a consumer bootstep watchdog, and a consumer subclass that survives
      ``ResourceLocked`` on reconnect;
    - broker connections that reconnect with the policy's backoff (a kombu
      ``Connection`` subclass, given through the app's ``amqp_cls``);
    - fails closed: if celery, kombu or py-amqp no longer has a private name
      the guard relies on, raises
      :class:`~hangproof.guard.upstream.UpstreamChanged` (package, version,
      what is missing) instead of configuring a weaker guard;
    - ``late_acks=True`` also sets ``task_acks_late`` and
      ``task_reject_on_worker_lost`` (at-least-once: a task interrupted by a
      lost worker or connection runs again, so it must be idempotent);
    - ``liveness_port`` serves /livez, /readyz, /consumingz, /healthz,
      /metrics (0: any free port); ``heartbeat_file`` is rewritten every
      watchdog round while live;
    - ``consuming_probe`` (default on): a private canary queue and a prober
      that proves the worker consumes (the health contract: docs/guard.md);
      one short-lived broker connection every ``stall_timeout`` seconds.

    Returns the policy in force.

    >>> from celery import Celery
    >>> harden(Celery("p", broker="amqp://localhost//"), Policy(stall_timeout=3)).heartbeat
    3
    """
    for package in ("celery", "kombu", "amqp"):
        upstream.check(package)
    policy = policy or Policy()
    conf = app.conf
    backoff = policy.backoff

    broker_url = conf.broker_url
    # TLS wherever the user asked for it: an amqps:// URL (kombu's amqps
    # transport sets ssl=True) or broker_use_ssl (passed on as ``ssl``, True or
    # a dict, to every connection, as stock Celery does).
    tls = _wants_tls(broker_url, conf.broker_transport)
    conf.broker_transport = SSL_TRANSPORT_PATH if tls else TRANSPORT_PATH
    if isinstance(broker_url, str) and ";" in broker_url:
        conf.broker_url = ";".join(_guard_url(u) for u in broker_url.split(";"))
    elif isinstance(broker_url, list | tuple) and len(broker_url) > 1:
        conf.broker_url = [_guard_url(u) for u in broker_url]

    # Per connection attempt: TCP connect bound (the transport also bounds the
    # whole handshake by policy.handshake_deadline).
    conf.broker_connection_timeout = policy.handshake_deadline
    conf.broker_heartbeat = policy.heartbeat
    conf.broker_heartbeat_checkrate = 2.0
    conf.broker_transport_options = {
        **(conf.broker_transport_options or {}),
        **transport_options(policy),
    }
    conf.broker_connection_retry = True
    conf.broker_connection_retry_on_startup = True
    conf.broker_connection_max_retries = backoff.max_retries
    # ResourceLocked (405) is a *channel* error; Celery treats channel errors
    # as unrecoverable (worker exits) unless this is set
    # (celery/worker/consumer/consumer.py, Consumer.start, Celery 5.7.0).
    conf.broker_channel_error_retry = True
    conf.worker_cancel_long_running_tasks_on_connection_loss = True
    # A publish (e.g. from a web request) must fail within the policy rather
    # than retry forever: a bounded number of linear retries.
    conf.task_publish_retry_policy = {
        "max_retries": 3,
        "interval_start": 0,
        "interval_step": backoff.initial,
        "interval_max": backoff.maximum,
    }
    if late_acks:
        conf.task_acks_late = True
        conf.task_reject_on_worker_lost = True

    # kombu's ensure_connection defaults (2 s, +2 s, max 30 s) would apply to
    # the consumer's reconnects; the app's connections take the intervals
    # from the transport options above instead.
    connection.install(app)
    base = symbol_by_name(conf.worker_consumer or "celery.worker.consumer:Consumer")
    if not issubclass(base, GuardConsumerMixin):
        conf.worker_consumer = guard_consumer_class(base)
    if WatchdogStep not in app.steps["consumer"]:
        app.steps["consumer"].add(WatchdogStep)
    if consuming_probe and ConsumingStep not in app.steps["consumer"]:
        app.steps["consumer"].add(ConsumingStep)

    setattr(
        app,
        APP_ATTRIBUTE,
        (
            policy,
            LivenessConfig(
                port=liveness_port,
                host=liveness_host,
                heartbeat_file=Path(heartbeat_file) if heartbeat_file else None,
            ),
        ),
    )
    return policy
