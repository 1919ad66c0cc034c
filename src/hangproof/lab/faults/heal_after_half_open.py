"""heal-after-half-open: a half-open link that heals before the broker drops the old connection.

Real-world event: the incident's second act. A network blip (blackhole) long
enough for the client to give up and reconnect, short enough that the broker
still holds the dead connection and its exclusive ``celery@host.celery.pidbox``
queue. Stock Celery reconnects into ``ResourceLocked (405)`` and exits.

``inject()`` blackholes the link; ``heal()`` lifts it. The caller keeps the
fault shorter than the broker's heartbeat timeout (RabbitMQ's default is 60 s,
the broker closes after two missed heartbeats), which is the point.
"""

from __future__ import annotations

from hangproof.failure import FaultClass
from hangproof.lab.faults.blackhole import Blackhole

#: Longest the fault may last and still be "before the broker drops the old
#: connection": RabbitMQ's default heartbeat is 60 s and it closes a connection
#: after missing two of its own heartbeats' worth of reads.
MAX_SECONDS_BEFORE_BROKER_NOTICES = 60.0


class HealAfterHalfOpen(Blackhole):
    """A blackhole, healed while the broker still holds the client's old connection."""

    name = FaultClass.HEAL_AFTER_HALF_OPEN.value
