"""The prometheus-alerts scenario's worker app: the guard's sample app plus a publishing task.

A worker whose tasks publish follow-up messages is what gets ``connection.blocked``
under a broker resource alarm. ``hangproof.publish_for`` holds one connection of the
app's (guarded) transport and publishes once a second for ``seconds``, so the
worker's ``hangproof_broker_blocked`` is 1 for exactly as long as the broker blocks
it. Run it with the threads pool: the guard's metrics live in the worker's main
process, and a prefork child's blocked connection is not seen there::

    HANGPROOF_BROKER_URL=amqp://... HANGPROOF_GUARD=1 HANGPROOF_LIVENESS_PORT=9808 \\
        celery -A hangproof.lab.clients.alerts_app worker -P threads -c 2
"""

from __future__ import annotations

import logging
import time

from hangproof.guard.sample_app import app, noop, record, sleep_then_record

log = logging.getLogger("hangproof.lab.clients.alerts_app")


@app.task(name="hangproof.publish_for")
def publish_for(routing_key: str, seconds: float) -> int:
    """Publish one small message a second for ``seconds`` on one connection; count the ok ones."""
    ok = 0
    deadline = time.monotonic() + seconds
    with app.connection_for_write() as connection:
        producer = connection.Producer()
        for n in range(int(seconds) + 2):
            if time.monotonic() > deadline:
                break
            try:
                producer.publish({"n": n}, routing_key=routing_key, retry=False)
                ok += 1
            except Exception as exc:  # BrokerBlocked / PublishTimeout while the alarm lasts
                log.warning("publish %d failed: %s", n, exc)
            time.sleep(1.0)
    return ok


__all__ = ["app", "noop", "publish_for", "record", "sleep_then_record"]
