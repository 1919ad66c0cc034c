"""hangproof: AMQP task consumers that cannot hang silently.

Parts: ``lab`` (reproduce the failure for real), ``probe`` (where does a broker
address stall), ``doctor`` (what is wedged on this host) and ``guard`` (clients
that cannot hang). See README.md.
"""

__version__ = "0.1.0"
