"""The seed-loop's wedge detector on recorded ss text (no root needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from hangproof.lab.observe.evidence import ss_records, stuck_handshakes
from hangproof.lab.observe.literal_waiter import WedgeWatcher, count_online, last_error

DATA = Path(__file__).parent.parent / "data" / "lab"
VIP, PORT = "198.18.0.100", 32672


def _records(text: str) -> list[dict]:
    return ss_records(text)


def test_recorded_race_is_stuck_once_idle_past_the_threshold() -> None:
    records = _records((DATA / "ss-node.txt").read_text())
    # Recorded 256 ms after the header went out: not yet past the default 10 s.
    assert stuck_handshakes(records, VIP, PORT) == []
    [s] = stuck_handshakes(records, VIP, PORT, min_idle_ms=200)
    assert (s["owner"], s["pid"], s["fd"]) == ("python3", 8157, 3)
    assert s["local"] == "198.18.0.1:60810" and s["remote"] == f"{VIP}:{PORT}"
    assert s["bytes_sent"] == 8 and s["bytes_received"] == 0 and s["peer_recv_q"] == 8
    assert s["peer_owner"] is None  # the listener's kernel completed it; nobody accepted


def test_fd_is_parsed_from_the_users_field() -> None:
    [r] = _records('ESTAB 0 0 10.20.0.3:48598 10.20.0.6:32672 users:(("celery",pid=29085,fd=3))')
    assert (r["owner"], r["pid"], r["fd"]) == ("celery", 29085, 3)


CLIENT = (
    'ESTAB 0 0 198.18.0.1:40000 198.18.0.100:32672 users:(("celery",pid=9,fd=3)) '
    "bytes_sent:8 bytes_acked:9 {rcv}lastsnd:{idle}"
)
PEER = "ESTAB {q} 0 [::ffff:198.18.0.100]:32672 [::ffff:198.18.0.1]:40000 bytes_received:8"


def test_not_stuck_without_the_local_peer_holding_the_header() -> None:
    client = CLIENT.format(rcv="", idle=60000)
    assert len(stuck_handshakes(_records(client + "\n" + PEER.format(q=8)), VIP, PORT)) == 1
    # A DNATed connection has no peer socket in the node: the broker's pod holds it.
    assert stuck_handshakes(_records(client), VIP, PORT) == []
    # The peer read the header (a process accepted and read it): not the report's wedge.
    assert stuck_handshakes(_records(client + "\n" + PEER.format(q=0)), VIP, PORT) == []


def test_not_stuck_once_anything_was_received_or_while_fresh() -> None:
    answered = CLIENT.format(rcv="bytes_received:500 ", idle=60000)
    assert stuck_handshakes(_records(answered + "\n" + PEER.format(q=8)), VIP, PORT) == []
    fresh = CLIENT.format(rcv="", idle=900)
    assert stuck_handshakes(_records(fresh + "\n" + PEER.format(q=8)), VIP, PORT) == []


def test_other_destinations_are_ignored() -> None:
    other = CLIENT.format(rcv="", idle=60000).replace("198.18.0.100:32672", "198.18.0.100:5672")
    assert stuck_handshakes(_records(other + "\n" + PEER.format(q=8)), VIP, PORT) == []


def test_waiter_output_parsing() -> None:
    out = "->  n1@hptc: OK\n        pong\n->  n1b@hptc: OK\n        pong\n\n2 nodes online.\n"
    assert count_online(out) == ["n1@hptc", "n1b@hptc"]
    assert count_online("Error: No nodes replied within time constraint\n") == []
    assert last_error("x\nError: [Errno 113] No route to host\n") == (
        "Error: [Errno 113] No route to host"
    )
    assert last_error(out) is None


def test_recorded_literal_waiter_wedge_names_only_the_cli() -> None:
    # Recorded by `lab run seed-loop` (literal waiter, --trigger none) on node n1 when
    # the watcher found the waiter's CLI stuck: the report's users:(("celery",...,fd=3)).
    records = _records((DATA / "ss-waiter-wedged.txt").read_text())
    to_vip = [r for r in records if r["state"] == "ESTAB" and r["remote"] == f"{VIP}:{PORT}"]
    assert len(to_vip) == 7  # the CLI and the two n1 workers' six DNATed connections
    [s] = stuck_handshakes(records, VIP, PORT)
    assert (s["owner"], s["pid"], s["fd"]) == ("celery", 10073, 3)
    assert s["bytes_sent"] == 8 and s["peer_recv_q"] == 8 and s["idle_ms"] >= 10_000


def _watcher() -> WedgeWatcher:
    lab = SimpleNamespace(topo=SimpleNamespace(vip=VIP, node_port=PORT))
    w = WedgeWatcher(lab, SimpleNamespace(workers=[]))  # type: ignore[arg-type]
    w.neighbour = lambda node: "STALE"  # type: ignore[method-assign]
    w.cli_pids.add(9)
    return w


SYN_SENT = (
    'SYN-SENT 0 1 198.18.0.1:40000 198.18.0.100:32672 users:(("celery",pid=9,fd=3)) '
    "timer:(on,1.2sec,1)"
)


def test_a_gap_syn_answered_by_the_local_port_holder_is_followed_to_its_fate() -> None:
    w = _watcher()
    w.track_syns("n1", _records(SYN_SENT), None)
    assert w.syn_log == []  # still waiting
    w.track_syns("n1", _records(CLIENT.format(rcv="", idle=10) + "\n" + PEER.format(q=8)), "n1")
    [e] = w.syn_log
    assert (e["kind"], e["vip_at_first"], e["vip_at_end"], e["fate"]) == (
        "cli",
        None,
        "n1",
        "established",
    )
    assert e["peer_local"] is True and e["bytes_received"] == 0 and e["neigh"] == ["STALE"]


def test_a_gap_syn_that_fails_is_gone_before_established() -> None:
    w = _watcher()
    w.track_syns("n1", _records(SYN_SENT), None)
    w.track_syns("n1", [], None)
    [e] = w.syn_log
    assert e["fate"] == "gone before established" and e["vip_at_end"] is None
