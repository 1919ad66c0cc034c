"""Evidence parsers on text recorded from a live race (no root needed)."""

from __future__ import annotations

from pathlib import Path

from hangproof.doctor.conntrack import parse_conntrack
from hangproof.lab.components.hooks import parse_trace_counters, seen, trace_rules
from hangproof.lab.observe.evidence import ss_records
from hangproof.lab.observe.story import repeat_summary

DATA = Path(__file__).parent.parent / "data" / "lab"


def test_ss_records_of_a_wedged_race() -> None:
    records = ss_records((DATA / "ss-node.txt").read_text())
    client = next(
        r for r in records if r["state"] == "ESTAB" and r["local"].startswith("198.18.0.1:")
    )
    assert client["remote"] == "198.18.0.100:32672"
    assert client["owner"] == "python3" and client["bytes_acked"] == 9
    assert "bytes_received" not in client  # nothing ever came back
    peer = next(r for r in records if r["state"] == "ESTAB" and r["local"] == "198.18.0.100:32672")
    assert peer["recv_q"] == 8 and peer["owner"] is None
    listener = next(r for r in records if r["state"] == "LISTEN")
    assert listener["owner"] == "kube-proxy"


def test_conntrack_without_dnat() -> None:
    [entry] = parse_conntrack((DATA / "conntrack-node.txt").read_text())
    assert entry.state == "ESTABLISHED"
    assert entry.dnat is False
    assert entry.reply.src == "198.18.0.100"


def test_conntrack_with_dnat() -> None:
    line = (
        "tcp      6 431999 ESTABLISHED src=198.18.0.1 dst=198.18.0.100 sport=5000 dport=32672 "
        "src=198.19.1.2 dst=198.19.1.1 sport=5672 dport=5000 [ASSURED] mark=0 use=1"
    )
    [entry] = parse_conntrack(line)
    assert entry.dnat is True


def test_syn_counters_from_iptables_save() -> None:
    counts = parse_trace_counters((DATA / "iptables-save-c-mangle.txt").read_text())
    assert seen(counts) == [
        {"hook": "OUTPUT", "interface": "eth0", "packets": 1},
        {"hook": "OUTPUT", "interface": "lo", "packets": 1},
        {"hook": "INPUT", "interface": "lo", "packets": 1},
    ]


def test_trace_rules_count_both_paths() -> None:
    text = trace_rules("198.18.0.100", 32672, ["eth0"])
    for rule in ("-A HP-TRACE-OUT -o eth0", "-A HP-TRACE-OUT -o lo", "-A HP-TRACE-IN -i lo"):
        assert rule in text


def test_repeat_summary_counts_outcomes() -> None:
    races = [
        {
            "outcome": "hang",
            "race_seconds": 10.5,
            "connect_seconds": 1.1,
            "evidence": {"peer_socket": {"unread_bytes": 8}, "conntrack": {"dnat": False}},
        },
        {
            "outcome": "hang",
            "race_seconds": 10.7,
            "connect_seconds": 1.2,
            "evidence": {"peer_socket": {"unread_bytes": 8}, "conntrack": {"dnat": False}},
        },
        {
            "outcome": "connected",
            "race_seconds": 1.3,
            "connect_seconds": None,
            "evidence": {"peer_socket": None, "conntrack": {"dnat": True}},
        },
    ]
    s = repeat_summary(races)
    assert s["outcomes"] == {"hang": 2, "connected": 1}
    assert s["median_race_seconds"] == 10.5
    assert s["peer_unread_bytes"] == {"8": 2, "None": 1}
