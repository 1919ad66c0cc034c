"""doctor's rules on constructed socket records, and its output contract."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from hangproof.doctor import commands, scan
from hangproof.doctor.conntrack import parse_conntrack
from hangproof.doctor.metrics import DoctorMetrics
from hangproof.doctor.model import FloatingAddress, HostView, ProcessRef, TcpSocket
from hangproof.doctor.netfilter import parse_iptables_save
from hangproof.doctor.report import render_findings
from hangproof.doctor.rules import RuleSettings, diagnose
from hangproof.failure import Severity

DATA = Path(__file__).parent.parent / "data" / "doctor"
FINDING_KEYS = {
    "kind",
    "severity",
    "pid",
    "process",
    "local",
    "remote",
    "silent_seconds",
    "evidence",
    "remedy",
}
CLIENT, VIP, NODE_PORT = "198.18.0.1", "198.18.0.100", 32672


def wedged_view(**client_changes: object) -> HostView:
    """The incident on the node: client -> VIP:32672 taken by kube-proxy's port holder."""
    client = TcpSocket(
        "ESTABLISHED",
        CLIENT,
        40312,
        VIP,
        NODE_PORT,
        inode=101,
        bytes_acked=9,
        bytes_sent=8,
        last_data_sent_ms=42_000,
        last_data_recv_ms=42_000,
        last_ack_recv_ms=42_000,
    )
    client = replace(client, **client_changes)  # type: ignore[arg-type]
    peer = TcpSocket("ESTABLISHED", VIP, NODE_PORT, CLIENT, 40312, recv_q=8, bytes_received=8)
    holder = TcpSocket("LISTEN", "*", NODE_PORT, "0.0.0.0", 0, recv_q=1, inode=55)
    conntrack = parse_conntrack((DATA / "conntrack_extended.txt").read_text())
    return HostView(
        sockets=[holder, peer, client],
        owners={101: [ProcessRef(812, "python", 3)], 55: [ProcessRef(640, "kube-proxy", 7)]},
        conntrack=conntrack,
    )


def healthy_view() -> HostView:
    """A worker talking to a real broker: header answered, heartbeats flowing."""
    client = TcpSocket(
        "ESTABLISHED",
        CLIENT,
        40400,
        VIP,
        NODE_PORT,
        inode=201,
        bytes_acked=2_000,
        bytes_sent=1_999,
        bytes_received=5_000,
        last_data_sent_ms=3_000,
        last_data_recv_ms=4_000,
        last_ack_recv_ms=3_000,
    )
    fresh = TcpSocket(  # just connected: header sent 50 ms ago, no answer yet (normal)
        "ESTABLISHED",
        CLIENT,
        40401,
        "198.18.0.2",
        5672,
        inode=202,
        bytes_acked=9,
        bytes_sent=8,
        last_data_sent_ms=50,
        last_data_recv_ms=50,
    )
    return HostView(sockets=[client, fresh], owners={201: [ProcessRef(900, "celery", 5)]})


def test_wedged_handshake_reports_every_evidence_key() -> None:
    (finding,) = diagnose(wedged_view())
    assert finding.kind == "handshake-unanswered"
    assert finding.severity == Severity.CRITICAL
    assert (finding.pid, finding.process) == (812, "python")
    assert (finding.local, finding.remote) == ("198.18.0.1:40312", "198.18.0.100:32672")
    assert finding.silent_seconds == 42.0
    ev = finding.evidence
    assert ev["peer_owner"] == "kube-proxy" and ev["peer_owner_pid"] == 640
    assert ev["peer_unread_bytes"] == 8
    assert ev["peer_accepted"] is False
    assert ev["dnat"] is False and "sport=40312" in ev["conntrack"]
    assert ev["peer_listener"] == "*:32672"
    assert "python_stack" in ev  # filled by the scan adapter when py-spy can read it
    assert set(finding.as_dict()) >= FINDING_KEYS
    for mitigation in ("conntrack -D -d", "! --ctstate DNAT", "108496", "deadline"):
        assert mitigation in finding.remedy
    assert "--dport 32672" in finding.remedy
    assert "kube-proxy" in finding.summary and "never accepted" in finding.summary


def test_healthy_connections_give_no_finding() -> None:
    assert diagnose(healthy_view()) == []


def test_silence_below_threshold_is_not_a_wedge() -> None:
    view = wedged_view(last_data_sent_ms=3_000)
    assert diagnose(view, RuleSettings(min_silence=5)) == []
    assert [f.kind for f in diagnose(view, RuleSettings(min_silence=1))] == ["handshake-unanswered"]


def test_client_that_sent_a_real_request_is_not_a_handshake_wedge() -> None:
    assert diagnose(wedged_view(bytes_sent=400, bytes_acked=401)) == []


def test_server_side_sockets_are_never_taken_for_clients() -> None:
    # The port holder's own socket received 8 bytes; it must not be flagged,
    # nor a server socket that sent a greeting and heard nothing.
    greeting = TcpSocket(
        "ESTABLISHED",
        VIP,
        NODE_PORT,
        CLIENT,
        50000,
        inode=9,
        bytes_sent=8,
        bytes_acked=9,
        last_data_sent_ms=60_000,
    )
    view = wedged_view()
    view.sockets.append(greeting)
    assert [f.local for f in diagnose(view)] == ["198.18.0.1:40312"]


def test_remote_peer_still_reported_without_peer_evidence() -> None:
    view = wedged_view()
    view.sockets = [s for s in view.sockets if s.remote_port == NODE_PORT]  # client only
    view.conntrack = None
    (finding,) = diagnose(view)
    assert finding.severity == Severity.WARNING
    assert finding.evidence["peer_on_this_host"] is False
    assert finding.evidence["peer_owner"] is None and finding.evidence["dnat"] is None


def test_pid_filter_keeps_only_that_process() -> None:
    assert diagnose(wedged_view(), RuleSettings(pid=999)) == []
    assert len(diagnose(wedged_view(), RuleSettings(pid=812))) == 1


def test_nodeport_vip_race_hazard_names_the_three_mitigations() -> None:
    view = wedged_view()
    view.node_port_gate = parse_iptables_save((DATA / "iptables_kube_proxy_1_9.txt").read_text())
    view.floating = [FloatingAddress(VIP, "ip addr: /32 beside 198.18.0.1/24", True)]
    hazard = next(f for f in diagnose(view) if f.kind == "nodeport-vip-race-hazard")
    assert hazard.severity == Severity.WARNING
    assert hazard.evidence["port_holders"][0]["owner"] == "kube-proxy"
    assert hazard.evidence["reached_from_output"] is True
    assert {p["port"] for p in hazard.evidence["node_ports"]} == {31672, 32672}
    assert "conntrack -D -d" in hazard.remedy
    assert "! --ctstate DNAT" in hazard.remedy and "tcp-reset" in hazard.remedy
    assert "108496" in hazard.remedy


def test_hazard_needs_both_the_local_gate_and_a_floating_address() -> None:
    view = wedged_view()
    view.node_port_gate = parse_iptables_save((DATA / "iptables_kube_proxy_1_9.txt").read_text())
    assert all(f.kind != "nodeport-vip-race-hazard" for f in diagnose(view))
    view.node_port_gate = None
    view.floating = [FloatingAddress(VIP, "keepalived", False)]
    assert all(f.kind != "nodeport-vip-race-hazard" for f in diagnose(view))


def test_hazard_mitigated_by_conntrack_flush_is_info() -> None:
    view = HostView(sockets=[])
    view.node_port_gate = parse_iptables_save((DATA / "iptables_kube_proxy_1_9.txt").read_text())
    view.floating = [FloatingAddress(VIP, "keepalived", False, conntrack_flush_on_master=True)]
    (hazard,) = diagnose(view)
    assert hazard.severity == Severity.INFO and not hazard.is_problem


def test_half_open_unacked_data_to_broker() -> None:
    sock = TcpSocket(
        "ESTABLISHED",
        CLIENT,
        40500,
        "198.18.0.2",
        5672,
        inode=301,
        bytes_acked=5000,
        bytes_sent=5008,
        bytes_received=9000,
        unacked=1,
        last_data_sent_ms=20_000,
        last_ack_recv_ms=20_000,
        last_data_recv_ms=20_000,
    )
    (finding,) = diagnose(HostView(sockets=[sock]))
    assert finding.kind == "half-open-suspect" and finding.severity == Severity.WARNING
    assert finding.silent_seconds == 20.0 and finding.evidence["unacked_segments"] == 1


def test_half_open_silence_past_heartbeats() -> None:
    base = TcpSocket(
        "ESTABLISHED",
        CLIENT,
        40501,
        "198.18.0.2",
        5672,
        bytes_acked=5000,
        bytes_sent=4999,
        bytes_received=9000,
        last_data_recv_ms=400_000,
        last_data_sent_ms=10_000,
    )
    (one_way,) = diagnose(HostView(sockets=[base]))
    assert one_way.severity == Severity.WARNING
    (idle,) = diagnose(HostView(sockets=[replace(base, last_data_sent_ms=400_000)]))
    assert idle.severity == Severity.INFO
    other_port = replace(base, remote_port=443)
    assert diagnose(HostView(sockets=[other_port])) == []


def test_human_text_reads_like_the_report() -> None:
    text = render_findings(diagnose(wedged_view()))
    first = text.splitlines()[0]
    assert first.startswith("CRITICAL handshake-unanswered: pid 812 (python)")
    assert "peer_owner: kube-proxy" in text and "peer_unread_bytes: 8" in text
    assert "remedy:" in text


def _fake_report(view: HostView) -> scan.ScanReport:
    return scan.ScanReport(diagnose(view), view, 0.01)


@pytest.mark.parametrize(("view", "code"), [(wedged_view(), 1), (healthy_view(), 0)])
def test_cli_json_and_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], view: HostView, code: int
) -> None:
    monkeypatch.setattr(scan, "run_scan", lambda request: _fake_report(view))
    assert commands.doctor(json_output=True) == code
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"findings", "scanned_sockets", "seconds", "could_not_see"}
    for finding in out["findings"]:
        assert set(finding) >= FINDING_KEYS


def test_cli_watch_is_bounded_by_count(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[object] = []
    monkeypatch.setattr(scan, "run_scan", lambda r: calls.append(r) or _fake_report(healthy_view()))
    monkeypatch.setattr(commands.time, "sleep", lambda s: None)
    assert commands.doctor(json_output=True, watch=5, count=3) == 0
    assert len(calls) == 3
    assert len(capsys.readouterr().out.strip().splitlines()) == 3  # one JSON line per scan


def test_cli_rejects_count_without_watch() -> None:
    from hangproof.errors import HangproofError

    with pytest.raises(HangproofError):
        commands.doctor(count=2)


def test_metrics_count_findings_by_kind() -> None:
    metrics = DoctorMetrics()
    metrics.update(diagnose(wedged_view()), scanned=3, seconds=0.02)
    text = metrics.render().decode()
    assert 'hangproof_doctor_findings{kind="handshake-unanswered",severity="critical"} 1.0' in text
    assert 'hangproof_doctor_findings{kind="half-open-suspect",severity="warning"} 0.0' in text
