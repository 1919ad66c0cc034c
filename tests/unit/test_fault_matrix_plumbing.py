"""The fault matrix's plumbing, without root: beds, profiles, summaries, message keys."""

from __future__ import annotations

import pytest

from hangproof.errors import HangproofError
from hangproof.lab.clients.matrix_clients import message_key
from hangproof.lab.faults import FAULTS, SEED_LAB, TESTBED, TESTBED_ROUTER, fault_bed
from hangproof.lab.scenarios import needs_lab, scenario_summary
from hangproof.lab.scenarios.fault_matrix import (
    DEFAULT_PROFILES,
    PROFILES,
    _consumer_argv,
    run_matrix,
)


def test_vip_faults_need_the_seed_lab_and_the_others_the_testbed() -> None:
    assert {f: fault_bed(f) for f in ("vip-race", "vip-failover")} == dict.fromkeys(
        ("vip-race", "vip-failover"), SEED_LAB
    )
    cluster = ("url-failover", "cluster-partition")  # the 3-node cluster bed
    assert {f: fault_bed(f) for f in cluster} == dict.fromkeys(cluster, "seed-cluster")
    middle_box = ("flow-state-expiry", "flow-state-rst")
    assert all(fault_bed(f) == TESTBED_ROUTER for f in middle_box)
    others = [f for f in FAULTS if not f.startswith("vip-") and f not in cluster + middle_box]
    assert all(fault_bed(f) == TESTBED for f in others)


def test_fault_matrix_needs_no_shared_lab_and_prints_its_table() -> None:
    assert needs_lab("seed-loop") is True
    assert needs_lab("fault-matrix") is False
    report = {
        "stall_timeout": 4.0,
        "hang_bound": 30.0,
        "producer_rate": 2.0,
        "cells": [
            {"fault": "vip-race", "profile": "kombu", "detect_s": None, "resume_s": "HANG",
             "published": 9, "executed": 3, "stranded": 6, "lost": 0, "duplicated": 0,
             "worker_alive": True, "publish_during_fault": "ok 0.1s"},
        ],
    }  # fmt: skip
    text = scenario_summary("fault-matrix", report)
    assert "stall_timeout 4.0 s" in text
    assert text.splitlines()[1].split()[:4] == ["fault", "profile", "detect", "resume"]
    assert text.splitlines()[2].split()[:4] == ["vip-race", "kombu", "-", "HANG"]


def test_every_profile_builds_a_consumer_command(tmp_path: object) -> None:
    for name, profile in PROFILES.items():
        argv = _consumer_argv(profile, "amqp://x", "q", tmp_path, 4.0)  # type: ignore[arg-type]
        assert ("--guard" in argv) == (profile.guarded and profile.kind != "celery"), name
    assert "celery-prefork-seed" not in DEFAULT_PROFILES


def test_unknown_fault_fails_before_any_bed_is_built(tmp_path: object) -> None:
    with pytest.raises(HangproofError, match="unknown fault or profile 'nope'"):
        run_matrix(["nope"], ["kombu"], tmp_path)  # type: ignore[arg-type]


def test_message_key_reads_celery_protocol_2_bodies() -> None:
    assert message_key([["k1"], {}, {}]) == "k1"
    assert message_key(b'[["k2"], {}, {"callbacks": null}]') == "k2"


def test_tls_cells_give_every_client_the_lab_ca(tmp_path: object) -> None:
    import json
    from pathlib import Path

    from hangproof.lab.scenarios.fault_matrix import _worker_env

    ssl_options = {"ca_certs": "/state/tls/ca.pem", "cert_reqs": 2}
    url = "amqps://guest:guest@198.18.200.1:5671/"
    for name, profile in PROFILES.items():
        argv = _consumer_argv(profile, url, "q", Path("/l"), 4.0, ssl_options)
        if profile.kind == "celery":  # the worker reads broker_use_ssl from its env
            env = _worker_env(url, profile, 4.0, Path("/l"), ssl_options)
            assert json.loads(env["HANGPROOF_BROKER_USE_SSL"]) == ssl_options, name
        else:
            assert argv[argv.index("--cafile") + 1] == "/state/tls/ca.pem", name
    plain = _worker_env("amqp://h/", PROFILES["celery-prefork"], 4.0, Path("/l"))
    assert plain["HANGPROOF_BROKER_USE_SSL"] == ""


def test_tls_seed_bed_forwards_the_nodeport_to_the_tls_listener() -> None:
    from hangproof.lab.beds.seed_bed import SeedBed

    bed = SeedBed("hpfvx", tls=True)
    assert bed.client_url == "amqps://guest:guest@198.18.0.100:32672/"
    node = bed.node
    assert (node.tls, node.tls_port, node.amqp_port) == (True, 5671, 5672)
    assert bed.lab.topo.broker_endpoints()[0][1] == 5671  # kube-proxy DNATs to TLS
    assert SeedBed("hpfvx").client_url.startswith("amqp://")


def test_a_bed_whose_broker_does_not_recover_is_rebuilt_and_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """The second whole run (b2b7068) ended after 38 min on "the broker of the
    seed-cluster did not recover", and published nothing. Now the bed is built
    again and the run goes on; a bed that cannot be built (or keeps breaking)
    turns only its own remaining cells into ERROR cells, each with why."""
    from hangproof.lab.scenarios import fault_matrix as fm

    events: list[str] = []

    class FakeBed:
        built = 0

        def __init__(self, *_a: object, **_k: object) -> None:
            FakeBed.built += 1
            self.n = FakeBed.built
            self.target = None

        def up(self) -> None:
            events.append(f"up{self.n}")
            if self.n == 3:
                raise HangproofError("rabbitmq-server did not start")

        def healthy(self) -> bool:
            return self.n != 1 or len([e for e in events if e.startswith("cell")]) < 2

        def close(self) -> None:
            events.append(f"close{self.n}")

    def run_group(bed, fault_name, group, work, **_k):
        events.append(f"cell {fault_name} on bed {bed.n}")
        return [fm.Cell(fault_name, p, detect_s=1.0, resume_s=1.0) for p in group]

    monkeypatch.setattr(fm, "FaultBed", FakeBed)
    monkeypatch.setattr(fm, "run_group", run_group)
    monkeypatch.setattr(fm, "make_fault", lambda *_a: object())
    monkeypatch.setattr(fm, "_fault_parallel", lambda *_a: True)
    monkeypatch.setattr(fm, "version_set", lambda *_a: {})
    faults = ["blackhole", "broker-freeze", "broker-kill", "memory-alarm"]
    r = run_matrix(faults, ["kombu+guard"], tmp_path)
    # Bed 1's broker does not recover after its 2nd cell (broker-freeze); bed 2
    # is built and runs the other two.
    by_fault = {c["fault"]: c for c in r["cells"]}
    assert list(by_fault) == faults  # every cell is reported, none dropped
    assert "bed rebuilt" in " ".join(by_fault["broker-freeze"]["notes"])
    assert by_fault["broker-kill"]["resume_s"] == 1.0  # measured on the rebuilt bed
    assert r["beds"][0]["rebuilt"][0]["after"] == "broker-freeze"
    assert r["beds"][0]["rebuilt"][0]["ok"] is True
    assert events.count("close1") == 1 and events[-1] == "close2"
    assert "broken" not in r["beds"][0]


def test_a_bed_that_does_not_come_up_errors_its_cells_and_not_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from hangproof.lab.scenarios import fault_matrix as fm

    class DeadBed:
        target = None

        def __init__(self, *_a: object, **_k: object) -> None:
            pass

        def up(self) -> None:
            raise HangproofError("rabbitmq-server did not start")

        def healthy(self) -> bool:
            return False

        def close(self) -> None:
            pass

    ran: list[str] = []
    monkeypatch.setattr(fm, "FaultBed", DeadBed)
    monkeypatch.setattr(fm, "run_group", lambda *a, **k: ran.append(a[1]) or [])
    monkeypatch.setattr(fm, "version_set", lambda *_a: {})
    r = run_matrix(["blackhole"], ["kombu", "kombu+guard"], tmp_path)
    assert ran == []
    cells = r["cells"]
    assert [(c["profile"], c["resume_s"]) for c in cells] == [
        ("kombu", "ERROR"),
        ("kombu+guard", "ERROR"),
    ]
    assert "did not come up: rabbitmq-server did not start" in cells[1]["notes"][0]
    assert cells[1]["promise"]["met"] is False  # a guarded cell not measured is a miss
    assert cells[0]["promise"] is None  # stock cells are measured, not judged
    assert r["beds"][0]["broken"].startswith("the testbed did not come up")
