"""hangproof: AMQP task consumers that cannot hang silently.

Parts: ``lab`` (reproduce the failure for real), ``probe`` (where does a broker
address stall), ``doctor`` (what is wedged on this host) and ``guard`` (clients
that cannot hang). See README.md.
"""

from hangproof.credentials import mask_logger

__version__ = "0.1.0"

# Every guard module (runtime, transport, celery_steps, aio) logs on this one
# logger. Its filter masks URL passwords in messages and tracebacks: a kombu,
# py-amqp or aiormq repr(exc) may carry the broker URL. Installed here, so it is
# in place whichever public face (celery, kombu, aio) the user imported.
mask_logger("hangproof.guard")
