"""The AMQP programs the lab runs in its namespaces: the lab's one Celery app and
its workers, the ledger, the race clients, the matrix clients, the call probe."""
