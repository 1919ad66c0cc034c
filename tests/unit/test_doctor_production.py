"""doctor as a DaemonSet: it survives its tools, says when it is degraded, and its liveness
follows the scan loop. Crafted bytes and faked tools; no root, no network but loopback."""

from __future__ import annotations

import json
import struct
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hangproof.doctor import inet_diag
from hangproof.doctor import scan as doctor_scan
from hangproof.doctor import sockets as live
from hangproof.doctor.commands import doctor
from hangproof.doctor.model import HostView, ToolFailure
from hangproof.doctor.rules import DOCTOR_DEGRADED, KINDS, diagnose

# -- partial netlink dumps --------------------------------------------------------


def _sock_msg(port: int, *, flags: int = inet_diag.NLM_F_MULTI) -> bytes:
    msg = bytearray(72)
    struct.pack_into("=BBBB", msg, 0, 2, 10, 0, 0)  # AF_INET, LISTEN
    struct.pack_into(">HH", msg, 4, port, 0)
    body = bytes(msg)
    return struct.pack("=IHHII", 16 + len(body), inet_diag.SOCK_DIAG_BY_FAMILY, flags, 1, 0) + body


def _done(*, flags: int = inet_diag.NLM_F_MULTI) -> bytes:
    return struct.pack("=IHHII", 20, inet_diag.NLMSG_DONE, flags, 1, 0) + b"\0" * 4


def test_dump_cut_off_at_max_recvs_is_reported_not_silently_truncated() -> None:
    chunks = iter([_sock_msg(1000 + n) for n in range(10)])  # never a DONE
    dump = live.collect_dump(lambda: next(chunks), max_recvs=3)
    assert [s.local_port for s in dump.sockets] == [1000, 1001, 1002]
    assert dump.complete is False and dump.interrupted is False


def test_dump_interrupted_flag_is_reported() -> None:
    # NLM_F_DUMP_INTR (linux/netlink.h): the table changed while the kernel dumped it.
    intr = inet_diag.NLM_F_MULTI | inet_diag.NLM_F_DUMP_INTR
    chunks = iter([_sock_msg(1000), _sock_msg(1001, flags=intr) + _done(flags=intr)])
    dump = live.collect_dump(lambda: next(chunks), max_recvs=10)
    assert dump.complete is True and dump.interrupted is True
    assert len(dump.sockets) == 2


def test_whole_dump_is_complete_and_not_interrupted() -> None:
    chunks = iter([_sock_msg(1000) + _done()])
    dump = live.collect_dump(lambda: next(chunks), max_recvs=10)
    assert (dump.complete, dump.interrupted, len(dump.sockets)) == (True, False, 1)


def test_decode_chunk_sees_the_interrupt_flag() -> None:
    chunk = inet_diag.decode_chunk(_sock_msg(7, flags=inet_diag.NLM_F_DUMP_INTR))
    assert chunk.interrupted and not chunk.done and len(chunk.sockets) == 1


def test_partial_dump_becomes_a_degraded_finding_and_a_json_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    intr = inet_diag.NLM_F_MULTI | inet_diag.NLM_F_DUMP_INTR

    def fake_dump(netns: str | None = None) -> live.TcpDump:
        chunks = iter([_sock_msg(1000, flags=intr) + _done(flags=intr)])
        return live.collect_dump(lambda: next(chunks), max_recvs=10)

    monkeypatch.setattr(live, "read_tcp_dump", fake_dump)
    _no_tools(monkeypatch)
    code = doctor(json_output=True, stacks=False)
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["partial_dump"] is True
    degraded = [f for f in doc["findings"] if f["kind"] == DOCTOR_DEGRADED]
    assert degraded and degraded[0]["evidence"]["tool"] == "netlink inet_diag"
    assert "NLM_F_DUMP_INTR" in degraded[0]["evidence"]["error"]
    warnings = [line for line in err.splitlines() if "partial" in line]
    assert len(warnings) == 1
    assert code == 1


# -- tool failures: a finding about doctor itself, never a dead loop --------------------


def _no_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    """conntrack / iptables-save / ip answer with nothing, quickly."""

    def run_tool(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(live, "run_tool", run_tool)
    monkeypatch.setattr(doctor_scan, "_keepalived_configs", lambda *a, **k: [])


def _timing_out_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_tool(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(argv, 15)

    def netlink_refused(netns: str | None = None) -> live.TcpDump:
        raise OSError(93, "Protocol not supported")  # sandboxes without sock_diag: ss fallback

    monkeypatch.setattr(live, "run_tool", run_tool)
    monkeypatch.setattr(live, "read_tcp_dump", netlink_refused)
    monkeypatch.setattr(doctor_scan, "_keepalived_configs", lambda *a, **k: [])


def test_watch_survives_tool_timeouts_and_reports_itself_degraded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _timing_out_tools(monkeypatch)
    code = doctor(json_output=True, watch=1.0, count=2, stacks=False)
    out, err = capsys.readouterr()
    scans = [json.loads(line) for line in out.splitlines()]
    assert len(scans) == 2  # the loop went on after the first failure
    for report in scans:
        degraded = {
            f["evidence"]["tool"]: f for f in report["findings"] if f["kind"] == DOCTOR_DEGRADED
        }
        assert "ss" in degraded and "timed out" in degraded["ss"]["evidence"]["error"]
        assert degraded["ss"]["severity"] == "warning"
    assert code == 1
    assert "Traceback" not in err


def test_one_shot_scan_with_a_hung_tool_is_a_finding_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _timing_out_tools(monkeypatch)
    assert doctor(json_output=True, stacks=False) == 1
    report = json.loads(capsys.readouterr().out)
    tools = {f["evidence"]["tool"] for f in report["findings"] if f["kind"] == DOCTOR_DEGRADED}
    assert {"ss", "conntrack", "iptables-save", "ip"} <= tools


def test_watch_survives_an_unexpected_scan_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []

    def broken_scan(request: object) -> object:
        calls.append(1)
        raise RuntimeError("amqp://bob:s3cret@rabbit went wrong")

    monkeypatch.setattr(doctor_scan, "run_scan", broken_scan)
    code = doctor(json_output=True, watch=1.0, count=2, stacks=False)
    out, err = capsys.readouterr()
    reports = [json.loads(line) for line in out.splitlines()]
    assert len(calls) == 2 and len(reports) == 2
    finding = reports[0]["findings"][0]
    assert finding["kind"] == DOCTOR_DEGRADED and finding["evidence"]["tool"] == "scan"
    assert "RuntimeError" in finding["evidence"]["error"]
    assert "s3cret" not in out + err
    assert code == 1


def test_degraded_rule_is_pure_and_listed() -> None:
    assert DOCTOR_DEGRADED in KINDS
    view = HostView([], tool_failures=[ToolFailure("conntrack", "timed out after 15 s")])
    (finding,) = diagnose(view)
    assert finding.kind == DOCTOR_DEGRADED
    assert finding.evidence == {"tool": "conntrack", "error": "timed out after 15 s"}


# -- liveness follows the scan loop, not the HTTP thread ---------------------------------


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_healthz_fails_when_the_last_completed_scan_is_too_old() -> None:
    from hangproof.doctor.metrics import DoctorMetrics

    now = [1000.0]
    metrics = DoctorMetrics(clock=lambda: now[0])
    server = metrics.serve(0, "127.0.0.1", watch=10.0, stale_scans=3)
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert _get(base + "/healthz")[0] == 200  # starting: within the first max age
        metrics.update([], scanned=1, seconds=0.1)
        now[0] += 59.0
        code, body = _get(base + "/healthz")
        assert code == 200 and body["last_scan_age"] == pytest.approx(59.0)
        now[0] += 2.0  # 61 s > max(3 x 10 s, 60 s): the loop is stuck
        code, body = _get(base + "/healthz")
        assert code == 503 and body["healthy"] is False and body["max_age"] == 60.0
        metrics.update([], scanned=1, seconds=0.1)
        assert _get(base + "/healthz")[0] == 200
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            text = response.read().decode()
        assert "hangproof_doctor_scans_total 2.0" in text
        assert "hangproof_doctor_last_scan_age_seconds" in text
    finally:
        server.close()


def test_metrics_host_binds_only_that_address() -> None:
    from hangproof.doctor.metrics import DoctorMetrics

    server = DoctorMetrics().serve(0, "127.0.0.1", watch=30.0)
    try:
        assert server.address == ("127.0.0.1", server.port)
    finally:
        server.close()


def test_metrics_host_option_in_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Exception, match="--metrics-host"):
        doctor(metrics_host="127.0.0.1")  # without --watch/--metrics-port: usage error


# -- notify_master scripts are read through keepalived's own root ----------------------


def test_notify_script_is_read_through_the_keepalived_root(tmp_path: Path) -> None:
    # keepalived's mount namespace (as /proc/PID/root shows it) holds the script;
    # doctor's own filesystem has no such path.
    root = tmp_path / "root"
    (root / "etc/keepalived").mkdir(parents=True)
    (root / "etc/keepalived/notify.sh").write_text("#!/bin/sh\nconntrack -D -d 198.18.0.100\n")
    assert not Path("/etc/keepalived/notify.sh").exists()
    text = doctor_scan.notify_command_text("/etc/keepalived/notify.sh MASTER", str(root))
    assert "conntrack -D -d 198.18.0.100" in text
    # Without a root (doctor's own namespace) the script is not there: only the command.
    assert doctor_scan.notify_command_text("/etc/keepalived/notify.sh MASTER", "") == (
        "/etc/keepalived/notify.sh MASTER"
    )
