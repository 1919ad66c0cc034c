"""The fault matrix's Celery app: :mod:`hangproof.guard.sample_app` plus the seed's timeout.

``HANGPROOF_CONNECTION_TIMEOUT=none`` sets ``broker_connection_timeout=None``:
the seed's Celery 3.1 / py-amqp 1.4 had no deadline on the handshake, and
Celery 5 forces the same under gevent and eventlet. Otherwise the app is
exactly the sample app (stock, or hardened with ``HANGPROOF_GUARD=1``)::

    HANGPROOF_BROKER_URL=amqp://... HANGPROOF_CONNECTION_TIMEOUT=none \\
        celery -A hangproof.lab.clients.matrix_celery worker -P prefork -c 2
"""

from __future__ import annotations

import os

from hangproof.guard.sample_app import app, noop, record, sleep_then_record

if os.environ.get("HANGPROOF_CONNECTION_TIMEOUT") == "none":
    app.conf.broker_connection_timeout = None

__all__ = ["app", "noop", "record", "sleep_then_record"]
