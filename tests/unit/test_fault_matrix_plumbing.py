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
