"""The VIP-alternatives plumbing: broker URL setups, progress gaps, the docs' summary."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from hangproof.errors import HangproofError
from hangproof.lab.clients.accounting import Ledger
from hangproof.lab.clients.celery_app import make_app
from hangproof.lab.clients.workers import WorkerFleet
from hangproof.lab.engine.lab import Lab
from hangproof.lab.engine.topology import Topology
from hangproof.lab.scenarios.seed_loop import _node_down_rules, max_gap

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "vip_alternatives", ROOT / "scripts/vip_alternatives.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["vip_alternatives"] = module
    spec.loader.exec_module(module)
    return module


def test_nodes_setup_gives_every_node_address_as_failover_urls() -> None:
    lab = Lab(Topology.seed("hpu"))
    nodes = WorkerFleet(lab, urls="nodes")
    assert nodes.broker_url == (
        "amqp://guest:guest@198.18.0.1:32672//;amqp://guest:guest@198.18.0.2:32672//;"
        "amqp://guest:guest@198.18.0.3:32672//"
    )
    assert "198.18.0.100" not in nodes.broker_url
    assert WorkerFleet(lab).broker_url == "amqp://guest:guest@198.18.0.100:32672//"
    with pytest.raises(HangproofError, match="vip, nodes"):
        WorkerFleet(lab, urls="dns")


def test_harden_profile_guards_every_failover_url() -> None:
    app = make_app(
        "amqp://guest:guest@198.18.0.1:32672//;amqp://guest:guest@198.18.0.2:32672//", "harden"
    )
    assert app.conf.broker_transport == "hangproof.kombu:Transport"
    assert app.conf.broker_url.split(";") == [
        "hangproof://guest:guest@198.18.0.1:32672//",
        "hangproof://guest:guest@198.18.0.2:32672//",
    ]
    assert app.conf.broker_connection_timeout is not None
    # The seed profile stays the report's: no handshake deadline.
    assert make_app("amqp://x//", "seed").conf.broker_connection_timeout is None


def test_node_down_drops_the_nodeport_to_the_node_and_the_vip_only() -> None:
    rules = _node_down_rules(Lab(Topology.seed("hpu")), "n2")
    assert [
        "PREROUTING",
        "-d",
        "198.18.0.2",
        "-p",
        "tcp",
        "--dport",
        "32672",
        "-j",
        "DROP",
    ] in rules
    assert [
        "PREROUTING",
        "-d",
        "198.18.0.100",
        "-p",
        "tcp",
        "--dport",
        "32672",
        "-j",
        "DROP",
    ] in rules
    assert all(r[r.index("--dport") + 1] == "32672" for r in rules)


def test_max_gap_spans_the_window_edges() -> None:
    assert max_gap([1.0, 1.2, 1.4], 0.0, 10.0) == 8.6
    assert max_gap([2.0, 9.0], 0.0, 10.0) == 7.0
    assert max_gap([5.0], 0.0, 10.0) == 5.0
    # Executions outside the window do not count as progress inside it.
    assert max_gap([-1.0, 11.0], 0.0, 10.0) == 10.0


def test_ledger_execution_times_are_sorted_wall_clock(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l")
    ledger.reset()
    for task in ("b", "a", "c"):
        ledger.record_executed(task)
    times = ledger.execution_times()
    assert len(times) == 3 and times == sorted(times) and times[0] > 1.7e9


def test_summary_counts_cycles_wedges_and_failover() -> None:
    va = _script()
    runs = [
        {"urls": "nodes", "profile": "harden", "trigger": "node-down", "outcome": "survived",
         "cycles": 2, "tasks": {"published": 10, "lost": 0},
         "cycle_log": [{"max_progress_gap_seconds": 2.0, "since_down_seconds": 12.0},
                       {"max_progress_gap_seconds": 4.0, "since_down_seconds": 8.0}]},
        {"urls": "vip", "profile": "seed", "trigger": "reconnect", "outcome": "wedged",
         "cycles": 3, "wedged_after_seconds": 40.0, "wedged_worker": "n1@h", "wedged_node": "n1",
         "tasks": {"published": 20, "lost": 2, "stranded": 1},
         "cycle_log": [{"max_progress_gap_seconds": 1.0}, {"max_progress_gap_seconds": 1.0},
                       {"max_progress_gap_seconds": 21.0, "silent": ["n1@h"]}]},
        {"urls": "vip", "profile": "seed", "trigger": "reconnect", "outcome": "error"},
        {"urls": "nodes", "profile": "seed", "trigger": "reconnect", "outcome": "wedged",
         "cycles": 1, "wedged_worker": "n1b@h", "wedged_node": "n1",
         "cycle_log": [{"max_progress_gap_seconds": 3.0, "silent": ["n1b@h"],
                        "recheck": {"seconds": 60, "still_silent": [],
                                    "recovered_after_seconds": 4.5}}]},
    ]  # fmt: skip
    rows = {r["setup"]: r for r in va.summarize(runs)}
    assert set(rows) == {"nodes:harden:node-down", "vip:seed:reconnect", "nodes:seed:reconnect"}
    slow = rows["nodes:seed:reconnect"]
    assert (slow["wedged_runs"], slow["recovered_on_recheck"]) == (1, 1)
    assert slow["wedged_workers"] == [
        "n1b@h (n1, cycle 1; 0 silent; in unknown; all answered again 4.5 s later)"
    ]
    vip = rows["vip:seed:reconnect"]
    assert (vip["runs"], vip["wedged_runs"], vip["cycles_survived"], vip["cycles_total"]) == (
        1,
        1,
        2,
        3,
    )
    assert vip["first_wedge_s"] == "40.0 (40.0-40.0)" and vip["lost"] == 2
    assert vip["wedged_workers"] == ["n1@h (n1, cycle 3; 0 silent; in unknown)"]
    assert vip["recovered_on_recheck"] == 0
    nodes = rows["nodes:harden:node-down"]
    assert nodes["wedged_runs"] == 0 and nodes["first_wedge_s"] == "-"
    assert nodes["failover_s"] == "10.0 (8.0-12.0)" and nodes["max_gap"] == "4.0 (4.0-4.0)"


def test_a_silence_is_classed_by_where_the_worker_was_blocked() -> None:
    va = _script()
    handshake = ["TCPTransport._read (amqp/transport.py:648)", "read_frame (amqp/transport.py:297)"]
    connect = ["_AbstractTransport._connect (amqp/transport.py:187)"]
    loop = ["_epoll.poll (kombu/utils/eventio.py:83)", "asynloop (celery/worker/loops.py:130)"]
    assert va.blocked_in({"silent_workers": [{"stack_top": handshake}]}) == "connect/handshake"
    assert va.blocked_in({"silent_workers": [{"stack_top": connect}]}) == "connect/handshake"
    assert va.blocked_in({"silent_workers": [{"stack_top": loop}]}) == "event loop"
    assert va.blocked_in({"silent_workers": []}) == "unknown"
