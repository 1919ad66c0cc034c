"""hangproof.lab: the incident rebuilt in network namespaces, laid out as rooms.

- ``engine/``: topology, network, state, processes, the Lab. The only code that
  starts, signals or deletes anything (by pid, from the state file).
- ``components/``: kube-proxy's rules and port holder, keepalived, RabbitMQ
  (cookie, TLS), the SYN hook counters, a DNS responder.
- ``beds/``: the topologies faults run on (two-namespace testbed, seed lab, cluster).
- ``faults/`` and ``mitigations/``: plug-ins, one base class and one registry each.
- ``scenarios/``: ``lab run`` experiments, ``lab race``, ``demo``, and the
  renderers of their docs tables (fault-matrix, kube-proxy modes, seed-loop).
- ``observe/``: ss evidence, connection timelines, race stories, the report's
  literal wait_celery loop and its wedge watch.
- ``clients/``: the lab's Celery app and workers, the ledger, race and matrix
  clients, the call probe.
- ``commands``: the ``hangproof lab`` CLI.
"""
