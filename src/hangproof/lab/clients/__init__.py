"""The AMQP programs the lab runs in its namespaces: the sample Celery apps and
their workers, the ledger, the race clients, the matrix clients, the call probe."""
