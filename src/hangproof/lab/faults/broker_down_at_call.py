"""broker-down-at-call: the broker is stopped when the application makes its call.

Real-world event: a web request calls ``delay()``/``apply_async()`` or a
liveness probe runs ``celery inspect ping`` while RabbitMQ is down for an
upgrade, a restart or a crash loop: nothing listens on the AMQP port, every
connect is refused at once (TCP RST). Upstream reports:

- celery#6911 / kombu#1463 (open): ``delay()`` hangs forever while the broker
  is unreachable;
- celery#5067: ``celery inspect ping --timeout`` ignores its timeout when the
  broker is down (the probe itself hangs);
- celery#1305: ``apply_async`` blocks while the broker is unavailable.

Injected with ``rabbitmqctl stop_app`` through the lab's ``RabbitNode.ctl``
(the Erlang VM stays up, its AMQP listener is closed: connects are refused,
open connections are closed by the broker); healed with ``start_app``.
``detail`` records that AMQP really stopped answering during the fault.
"""

from __future__ import annotations

import contextlib

from hangproof.failure import FaultClass
from hangproof.lab.faults import Fault


class BrokerDownAtCall(Fault):
    """``stop_app`` the node: its AMQP port refuses connections until ``start_app``."""

    name = FaultClass.BROKER_DOWN_AT_CALL.value

    def __post_init__(self) -> None:
        self.stopped = False
        self.detail: dict[str, object] = {}

    def inject(self) -> None:
        """Stop the RabbitMQ application (the VM stays); check AMQP no longer answers."""
        self.stopped = True
        self.target.node.ctl("stop_app", timeout=60)
        self.detail["amqp_answers_during_fault"] = self.target.node.answers_amqp(2)

    def heal(self) -> None:
        """Start the application again (idempotent); blocks until AMQP answers (bounded)."""
        if not self.stopped:
            return
        with contextlib.suppress(Exception):
            self.target.node.ctl("start_app", timeout=90)
            self.target.node.wait_ready(60)
        self.stopped = False
