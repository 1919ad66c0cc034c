"""vip-race on the seed lab: guarded Celery recovers, seed-like stock Celery wedges.

The seed lab (own name ``hpfvt``: 3 node namespaces, kube-proxy 1.9 rules
with port holders, VIP 198.18.0.100:32672, RabbitMQ in n1's pod) is up for
the module and torn down in a finalizer. Each test measures one fault-matrix
cell: the clients on n1 lose their connections while the VIP is on no node,
and the VIP lands on n1 while their reconnect SYN is in SYN-SENT.

Over TLS (``HANGPROOF_LAB_TLS=1``, as for every guard lab test): the NodePort
forwards to the pods' TLS listener, the clients dial ``amqps://`` verified
against the lab CA, and the port holder is a TLS port that never answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from guard_workers import LAB_TLS

from hangproof.lab.beds.seed_bed import SeedBed
from hangproof.lab.scenarios.fault_matrix import run_cell

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

STALL = 4.0
#: Reconnect time after detection: one backoff step plus Celery's consumer
#: restart on 2 cores (measured ~0.5 s); generous for a slow CI box.
RECONNECT = 12.0
BOUND = STALL + RECONNECT


@pytest.fixture(scope="module")
def bed() -> Iterator[SeedBed]:
    bed = SeedBed("hpfvt", tls=LAB_TLS)
    try:
        bed.up()
        yield bed
    finally:
        bed.close()


def test_guarded_celery_recovers_from_vip_race_without_loss(bed: SeedBed, tmp_path: Path) -> None:
    cell = run_cell(
        bed, "vip-race", "celery-prefork+harden", tmp_path, stall_timeout=STALL, hang_bound=BOUND
    )
    print(cell)
    assert cell.fault_detail.get("wedged_sport") is not None, cell  # the race was triggered
    assert cell.worker_alive, cell.notes
    assert cell.detect_s is not None and cell.detect_s <= STALL, cell
    assert isinstance(cell.resume_s, float) and cell.resume_s <= BOUND, cell
    assert cell.published > 0
    assert cell.lost == 0 and cell.stranded == 0, cell


def test_seed_like_stock_celery_hangs_on_vip_race(bed: SeedBed, tmp_path: Path) -> None:
    cell = run_cell(
        bed, "vip-race", "celery-prefork-seed", tmp_path, stall_timeout=STALL, hang_bound=BOUND
    )
    print(cell)
    assert cell.fault_detail.get("wedged_sport") is not None, cell
    assert cell.resume_s == "HANG", cell
    assert cell.worker_alive  # alive and wedged: a supervisor would not restart it
    # Still no Connection.Start after the bound: the worker's socket is
    # ESTABLISHED to VIP:32672 and has received nothing; the port holder's
    # peer socket holds the unread 8-byte protocol header; conntrack never NATed it.
    evidence = cell.fault_detail["evidence"]
    client, peer = evidence["client_socket"], evidence["peer_socket"]
    assert client["state"] == "ESTAB" and client["remote"].endswith(":32672"), evidence
    assert client["bytes_received"] == 0, evidence
    # Over TLS the unread first flight is the ClientHello (Python's is 517 bytes), not the header.
    assert peer["unread_bytes"] > 8 if LAB_TLS else peer["unread_bytes"] == 8, evidence
    assert evidence["listener_owner"] == "kube-proxy", evidence
    assert evidence["conntrack"]["dnat"] is False, evidence
    # Tasks published meanwhile wait in the queue (stranded), none executed after the wedge.
    assert cell.stranded > 0, cell
