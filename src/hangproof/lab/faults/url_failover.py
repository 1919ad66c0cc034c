"""url-failover: the broker node first in the worker's failover URL list stops.

Upstream reports: celery#3921 / kombu#706 (with ``broker_url =
"amqp://n1;amqp://n2;..."`` the worker does not move to the next URL when the
first node goes away, or moves and then stops consuming), celery#6183
(failover between broker URLs never happens, the worker keeps retrying the
dead node).

Real-world event: a RabbitMQ cluster node is taken down for maintenance
(``rabbitmqctl stop_app``: the node closes its client connections with
CONNECTION_FORCED and stops listening; its Erlang VM keeps running). The
worker was connected to it because it is first in the failover list; the
queues are mirrored, so the other nodes keep them and the producer, on
another node, keeps publishing. The worker must move to the next URL and
consume again.

The lab (:mod:`hangproof.lab.beds.cluster_bed`, three clustered nodes, clients on n1):

- ``configure()``: the consumer's URL is the ``;``-separated list
  n2;n3;n1 (pod addresses). aio-pika has no failover list, so its cells get
  n2 alone: they can only come back when n2 does (measured, with a note);
- ``inject()``: ``stop_app`` on n2 (through the lab's RabbitNode.ctl());
- ``heal()``: ``start_app`` on n2 (it rejoins the cluster); resume is then a
  task published through the same list (a fresh publisher dials n2 first
  again) reaching the worker wherever it now is;
- ``detail``: the worker's connections per node just before heal (proof the
  worker left n2, and where it went) and whether n2 really stopped
  answering AMQP.
"""

from __future__ import annotations

import contextlib
from typing import Any

from hangproof.errors import HangproofError
from hangproof.failure import FaultClass
from hangproof.lab.beds.cluster_bed import (
    SEED_CLUSTER,
    WORKER_NODE,
    connections_by_node,
    pod_address,
)
from hangproof.lab.faults import CellContext, Fault

#: The failover order: the worker's node first, then the others.
URL_ORDER = (WORKER_NODE, "n3", "n1")


class UrlFailover(Fault):
    """``stop_app`` the first node of the worker's failover list."""

    name = FaultClass.URL_FAILOVER.value
    bed = SEED_CLUSTER
    #: attach() only records where the consumers are connected (all of them, the
    #: producers excluded): the profiles of a matrix run share one stop_app.
    parallel = True

    def __post_init__(self) -> None:
        if self.target.lab is None:
            raise HangproofError("url-failover needs the cluster bed (faults.cluster_bed)")
        self.lab = self.target.lab
        self.detail: dict[str, Any] = {}
        self.stopped = False

    def urls(self) -> list[str]:
        """The failover list, in order."""
        return [self.lab.broker(n).url for n in URL_ORDER]

    def configure(self, ctx: CellContext) -> None:
        """The consumer (and the cell's client-side publishes) dial the failover list."""
        urls = self.urls()
        if ctx.kind == "aio-pika":
            ctx.client_url = urls[0]
            self.detail["note"] = "aio-pika cells take one URL (no failover list): n2 only"
        else:
            ctx.client_url = ";".join(urls)
        ctx.env["HANGPROOF_BROKER_URL"] = ctx.client_url
        self.detail["urls"] = [u.split("@", 1)[-1] for u in ctx.client_url.split(";")]

    def _exclude(self) -> tuple[str, ...]:
        # The producer's connections (from n1's pod) are not the worker's.
        return (pod_address(self.lab, "n1"),)

    def attach(self, ctx: CellContext) -> None:
        """Where the running consumer is connected (before inject: not in detect time)."""
        with contextlib.suppress(Exception):
            self.detail["before"] = connections_by_node(self.lab, self._exclude())

    def inject(self) -> None:
        """stop_app on the worker's node."""
        self.stopped = True
        self.lab.broker(WORKER_NODE).ctl("stop_app", timeout=60)

    def heal(self) -> None:
        """start_app on the node again (idempotent)."""
        if not self.stopped:
            return
        node = self.lab.broker(WORKER_NODE)
        with contextlib.suppress(Exception):
            self.detail["stopped_node_answered_amqp"] = node.answers_amqp(2)
            self.detail["at_heal"] = connections_by_node(self.lab, self._exclude())
        node.ctl("start_app", timeout=90)
        self.stopped = False

    def close(self) -> None:
        """Heal; the bed waits for the cluster to be whole again before the next cell."""
        with contextlib.suppress(Exception):
            self.heal()
