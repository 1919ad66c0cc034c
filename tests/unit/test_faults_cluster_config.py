"""The cluster and DNS faults' configuration, on pure data (no root, no lab)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from celery import Celery

from hangproof.celery import harden
from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.engine.lab import Lab
from hangproof.lab.engine.topology import Topology
from hangproof.lab.faults import CellContext, FaultTarget, fault_bed, make_fault


def cluster_target() -> FaultTarget:
    topo = Topology.seed("hpzz")
    lab = Lab(dataclasses.replace(topo, brokers=("n1", "n2", "n3")))
    node = RabbitNode("n1", Path("/nonexistent"), host=topo.node("n1").pod_address, netns="x")
    return FaultTarget(node, topo.pod_ns("n1"), "eth0", lab=lab)


def ctx(kind: str) -> CellContext:
    return CellContext(
        queue="fm-q", client_netns="hpzz-n1", client_url="amqp://x/", producer_url="amqp://y/",
        kind=kind, guarded=True, work=Path("/nonexistent"), stall_timeout=15.0,
    )  # fmt: skip


def test_cluster_faults_run_on_the_cluster_bed_dns_on_the_testbed() -> None:
    assert fault_bed("url-failover") == fault_bed("cluster-partition") == "seed-cluster"
    assert fault_bed("dns-stall") == "testbed"


def test_url_failover_lists_the_worker_node_first_and_harden_keeps_the_alternates() -> None:
    target = cluster_target()
    fault = make_fault("url-failover", target)
    c = ctx("celery")
    fault.configure(c)  # type: ignore[attr-defined]
    urls = c.client_url.split(";")
    pods = [target.lab.topo.node(n).pod_address for n in ("n2", "n3", "n1")]  # type: ignore[union-attr]
    assert [u.split("@")[1].split(":")[0] for u in urls] == pods
    assert c.env["HANGPROOF_BROKER_URL"] == c.client_url
    app = Celery("t", broker=c.client_url)
    harden(app)
    hardened = app.conf.broker_url.split(";")
    assert len(hardened) == 3 and all(u.startswith("hangproof://") for u in hardened)


def test_url_failover_gives_aio_pika_one_url_and_says_so() -> None:
    fault = make_fault("url-failover", cluster_target())
    c = ctx("aio-pika")
    fault.configure(c)  # type: ignore[attr-defined]
    assert ";" not in c.client_url
    assert "no failover list" in fault.detail["note"]  # type: ignore[attr-defined]


def test_cluster_partition_drops_only_inter_node_ports_both_ways_on_the_worker_node() -> None:
    target = cluster_target()
    fault = make_fault("cluster-partition", target)
    c = ctx("kombu")
    fault.configure(c)  # type: ignore[attr-defined]
    assert target.lab.topo.node("n2").pod_address in c.client_url  # type: ignore[union-attr]
    assert ";" not in c.client_url
    rules = fault._rules()  # type: ignore[attr-defined]
    ports = {
        r[r.index("--dport") + 1] if "--dport" in r else r[r.index("--sport") + 1] for r in rules
    }
    assert ports == {"25672", "4369"}  # never 5672: clients still reach the node
    assert {r[0] for r in rules} == {"INPUT", "OUTPUT"} and len(rules) == 8
    assert fault.netns == "hpzz-n2p"  # type: ignore[attr-defined]


def test_guarded_kombu_client_keeps_the_guard_on_every_failover_alternate() -> None:
    from kombu import Connection

    from hangproof.lab.clients.matrix_clients import kombu_connection

    # What kombu does by itself: the alternate's scheme wins over transport=.
    plain = Connection("amqp://a:5672//;amqp://b:5672//", transport="hangproof.kombu:Transport")
    plain.switch(plain.alt[1])
    assert plain.transport_cls == "amqp"
    guarded = kombu_connection("amqp://a:5672//;amqp://b:5672//", True, 15.0)
    assert guarded.transport_cls in ("hangproof", "hangproof.kombu:Transport")
    guarded.switch(guarded.alt[1])
    assert guarded.transport_cls == "hangproof" and guarded.hostname == "b"
