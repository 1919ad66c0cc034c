"""The one ss parser (hangproof.doctor.ss_text) on recorded ss text, against the two it replaced.

Until issue 11 item 5 the lab read ss with its own parser (``join_ss_records`` +
``parse_ss_record`` in lab/observe/evidence.py) and the doctor with
doctor/ss_text.py. Both are copied below, frozen as they were on main at
b122716, as the reference: on every recorded text, the merged parser must give
byte for byte what each of them gave (``repr`` compares, so 8 is not 8.0 and an
absent ``bytes_received`` is not 0). The literal expectations on the wedged
pair do not depend on the copies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from hangproof.doctor.model import ProcessRef, TcpSocket
from hangproof.doctor.ss_text import parse_ss, parse_users, read_line, read_records
from hangproof.lab.observe.evidence import ss_records, stuck_handshakes
from hangproof.lab.scenarios.race import _socket_summary

DATA = Path(__file__).parent.parent / "data"
VIP, PORT = "198.18.0.100", 32672

#: Recorded ss text: the lab's ``ss -Htanpie`` of a node (ss-node: a race's wedge;
#: ss-waiter-wedged: the literal waiter's CLI wedged), the doctor's ``ss -tinpeHOa``,
#: and what a seed-loop run read in its lab namespaces (recorded for this merge).
RECORDED = sorted(
    [
        DATA / "lab" / "ss-node.txt",
        DATA / "lab" / "ss-waiter-wedged.txt",
        DATA / "doctor" / "ss_wedged.txt",
        *(DATA / "lab" / "ss-recorded").glob("*.txt"),
    ]
)


# --- the lab's parser, removed from lab/observe/evidence.py (main b122716) -------------

_OLD_USERS = re.compile(r'\("(?P<name>[^"]+)",pid=(?P<pid>\d+),fd=(?P<fd>\d+)\)')
_OLD_KV = re.compile(
    r"\b(bytes_sent|bytes_acked|bytes_received|bytes_retrans|segs_out|segs_in|"
    r"data_segs_out|data_segs_in|lastsnd|lastrcv|lastack|unacked|retrans|ino|"
    r"rtt|timer)[:=](\S+)"
)


def _old_parse_ss_users(line: str) -> list[tuple[str, int]]:
    return [(m["name"], int(m["pid"])) for m in _OLD_USERS.finditer(line)]


def _old_join_ss_records(text: str) -> list[str]:
    records: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t" and records:
            records[-1] += " " + line.strip()
        else:
            records.append(line.strip())
    return records


def _old_parse_ss_record(record: str) -> dict[str, Any]:
    parts = record.split()
    state, recv_q, send_q, local, remote = parts[0], parts[1], parts[2], parts[3], parts[4]
    users = _old_parse_ss_users(record)
    first = _OLD_USERS.search(record)
    info: dict[str, Any] = {
        "state": state,
        "recv_q": int(recv_q),
        "send_q": int(send_q),
        "local": _old_plain_addr(local),
        "remote": _old_plain_addr(remote),
        "owner": users[0][0] if users else None,
        "pid": users[0][1] if users else None,
        "fd": int(first["fd"]) if first else None,
    }
    for key, value in _OLD_KV.findall(record):
        info[key] = _old_number(value)
    return info


def _old_plain_addr(addr: str) -> str:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if host.startswith("::ffff:"):
        host = host[len("::ffff:") :]
    return f"{host}:{port}"


def _old_number(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


# --- the doctor's parser as it was (doctor/ss_text.py, main b122716) -------------------

_OLD_D_USERS = re.compile(r"users:\((.*?)\)\s")
_OLD_D_USER = re.compile(r'\("((?:[^"\\]|\\.)*)",pid=(\d+),fd=(\d+)\)')
_OLD_D_STATE = {"ESTAB": "ESTABLISHED", "UNCONN": "UNCONN"}
_OLD_D_INT_KEYS = {
    "ino": "inode",
    "uid": "uid",
    "bytes_received": "bytes_received",
    "bytes_acked": "bytes_acked",
    "bytes_sent": "bytes_sent",
    "lastrcv": "last_data_recv_ms",
    "lastsnd": "last_data_sent_ms",
    "lastack": "last_ack_recv_ms",
    "unacked": "unacked",
}


@dataclass(frozen=True)
class _OldSsRecord:
    socket: TcpSocket
    users: tuple[ProcessRef, ...]


def _old_split_endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.split("%", 1)[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, int(port) if port.isdigit() else 0


def _old_parse_ss(text: str) -> list[_OldSsRecord]:
    out = []
    for line in text.splitlines():
        record = _old_parse_ss_line(line)
        if record is not None:
            out.append(record)
    return out


def _old_parse_ss_line(line: str) -> _OldSsRecord | None:
    users: tuple[ProcessRef, ...] = ()
    match = _OLD_D_USERS.search(line + " ")
    if match:
        users = tuple(
            ProcessRef(int(pid), name, int(fd))
            for name, pid, fd in _OLD_D_USER.findall(match.group(1))
        )
        line = line[: match.start()] + line[match.end() - 1 :]
    tokens = line.split()
    if len(tokens) < 5 or not tokens[1].isdigit() or not tokens[2].isdigit():
        return None
    state = _OLD_D_STATE.get(tokens[0], tokens[0])
    local_addr, local_port = _old_split_endpoint(tokens[3])
    remote_addr, remote_port = _old_split_endpoint(tokens[4])
    if state == "LISTEN" and local_addr in ("0.0.0.0", "::", "*"):
        local_addr = "*"
    fields: dict[str, int] = {}
    for token in tokens[5:]:
        key, sep, value = token.partition(":")
        if sep and key in _OLD_D_INT_KEYS and value.isdigit():
            fields[_OLD_D_INT_KEYS[key]] = int(value)
    sock = TcpSocket(
        state=state,
        local_addr=local_addr,
        local_port=local_port,
        remote_addr=remote_addr,
        remote_port=remote_port,
        recv_q=int(tokens[1]),
        send_q=int(tokens[2]),
        has_tcp_info="<->" in tokens or "->" in tokens or "<-" in tokens or "<?>" in tokens,
        **fields,  # type: ignore[arg-type]
    )
    if sock.bytes_sent is None and "bytes_sent" not in fields and sock.has_tcp_info:
        sock = replace(sock, bytes_sent=0)
    return _OldSsRecord(sock, users)


# --- the merged parser against them ---------------------------------------------------


def test_the_recordings_are_there() -> None:
    # A glob that finds nothing would make the comparisons below vacuous.
    assert len(RECORDED) >= 4
    assert all(p.read_text().strip() for p in RECORDED)


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
def test_lab_view_is_byte_for_byte_the_lab_parser_it_replaced(path: Path) -> None:
    text = path.read_text()
    old = [_old_parse_ss_record(r) for r in _old_join_ss_records(text)]
    new = ss_records(text)
    assert len(new) == len(old) > 0
    for got, want in zip(new, old, strict=True):
        assert repr(got) == repr(want)  # same keys, same order, same types and values


#: Hand-made records for what the recordings do not hold: a float field, a repeated
#: field (the last value in the first place), wildcard and IPv6 endpoints, a SYN-SENT timer.
EDGE = [
    "ESTAB 0 0 198.18.0.1:40000 198.18.0.100:32672 rtt:0.05 lastsnd:1 ino:4 lastsnd:2",
    'LISTEN 0 4096 [::]:5672 [::]:* users:(("beam.smp",pid=5,fd=60)) ino:9 sk:2 v6only:1 <->',
    "LISTEN 0 4096 0.0.0.0:4369 0.0.0.0:* ino:10 sk:3 <->\n\t bbr cwnd:10 unacked:1",
    'SYN-SENT 0 1 198.18.0.1:40000 198.18.0.100:32672 users:(("celery",pid=9,fd=3)) '
    "timer:(on,1.2sec,1) ino:5 sk:4 <->\n\t ts sack cubic rto:1000 backoff:1 "
    "bytes_retrans:0 segs_out:2 lastsnd:1200 lastrcv:1200 lastack:1200 unacked:1 retrans:1/2",
    "ESTAB 0 0 [::1]:5672 [::1]:41000 ino:6 sk:5 -->",
]


@pytest.mark.parametrize("text", EDGE)
def test_lab_view_is_the_lab_parser_on_hand_made_records(text: str) -> None:
    old = [_old_parse_ss_record(r) for r in _old_join_ss_records(text)]
    assert repr(ss_records(text)) == repr(old)
    assert repr(old) != "[]"


@pytest.mark.parametrize("text", EDGE)
def test_doctor_view_is_the_doctor_parser_on_hand_made_records(text: str) -> None:
    old = _old_parse_ss("\n".join(_old_join_ss_records(text)))
    assert [(r.socket, r.users) for r in parse_ss(text)] == [(r.socket, r.users) for r in old]
    assert len(old) == 1


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
def test_doctor_view_is_the_doctor_parser_it_was(path: Path) -> None:
    text = path.read_text()
    # The doctor read one line per record (-O); the lab's text it reads glued.
    old = _old_parse_ss("\n".join(_old_join_ss_records(text)))
    new = parse_ss(text)
    assert len(new) == len(old) > 0
    assert [(r.socket, r.users) for r in new] == [(r.socket, r.users) for r in old]


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
def test_listener_owner_and_record_text_as_before(path: Path) -> None:
    text = path.read_text()
    # Lab.listener_owner read the first users:(...) of any line; the record text is the
    # timeline's evidence string.
    assert [r.text for r in read_records(text)] == _old_join_ss_records(text)
    for line in text.splitlines():
        old = _old_parse_ss_users(line)
        rec = read_line(line.strip())
        if rec is not None:
            assert [(u.name, u.pid) for u in rec.users] == old


WEDGED = DATA / "lab" / "ss-waiter-wedged.txt"

#: The literal waiter's CLI, wedged: ESTAB, Recv-Q 0, 8 bytes sent (acked 9: the SYN
#: counts one), nothing received, the report's users:(("celery",pid=..,fd=3)).
WEDGED_CLIENT = {
    "state": "ESTAB",
    "recv_q": 0,
    "send_q": 0,
    "local": "198.18.0.1:48782",
    "remote": "198.18.0.100:32672",
    "owner": "celery",
    "pid": 10073,
    "fd": 3,
    "timer": "(keepalive,49sec,0)",
    "ino": 140887,
    "rtt": "0.879/0.514",
    "bytes_sent": 8,
    "bytes_acked": 9,
    "segs_out": 4,
    "segs_in": 2,
    "data_segs_out": 1,
    "lastsnd": 10664,
    "lastrcv": 10664,
    "lastack": 10664,
    "retrans": "0/1",
}
#: Its peer in the same namespace: the listener's kernel completed the handshake and
#: holds the 8 header bytes unread (Recv-Q 8); no process has it (inode 0, no users).
WEDGED_PEER = {
    "state": "ESTAB",
    "recv_q": 8,
    "send_q": 0,
    "local": "198.18.0.100:32672",
    "remote": "198.18.0.1:48782",
    "owner": None,
    "pid": None,
    "fd": None,
    "ino": 0,
    "rtt": "0.053/0.026",
    "bytes_received": 8,
    "segs_out": 1,
    "segs_in": 3,
    "data_segs_in": 1,
    "lastsnd": 10688,
    "lastrcv": 10688,
    "lastack": 10688,
}


def test_the_recorded_wedge_and_its_peer_field_by_field() -> None:
    records = ss_records(WEDGED.read_text())
    client = next(r for r in records if r["local"] == "198.18.0.1:48782")
    peer = next(r for r in records if r["remote"] == "198.18.0.1:48782")
    assert repr(client) == repr(WEDGED_CLIENT)
    assert "bytes_received" not in client  # absent, not 0: nothing ever came back
    assert repr(peer) == repr(WEDGED_PEER)  # [::ffff:198.18.0.100]:32672 -> plain
    [stuck] = stuck_handshakes(records, VIP, PORT)
    assert (stuck["pid"], stuck["fd"], stuck["peer_recv_q"], stuck["idle_ms"]) == (
        10073,
        3,
        8,
        10664,
    )


def test_the_reports_evidence_summary_of_the_wedge() -> None:
    # What collect_evidence puts in the seed-loop's report (client_socket, peer_socket).
    records = ss_records(WEDGED.read_text())
    client = next(r for r in records if r["local"] == "198.18.0.1:48782")
    peer = next(r for r in records if r["remote"] == "198.18.0.1:48782")
    assert _socket_summary(client) == {
        "state": "ESTAB",
        "local": "198.18.0.1:48782",
        "remote": "198.18.0.100:32672",
        "recv_q": 0,
        "send_q": 0,
        "owner": "celery",
        "pid": 10073,
        "bytes_sent": 8,
        "bytes_acked": 9,
        "bytes_received": 0,  # the summary says 0 where ss printed nothing
        "lastrcv": 10664,
        "lastsnd": 10664,
    }
    assert peer["recv_q"] == 8  # collect_evidence's peer_socket.unread_bytes


def test_the_doctor_reads_the_same_wedge() -> None:
    [client] = [r for r in parse_ss(WEDGED.read_text()) if r.socket.local == "198.18.0.1:48782"]
    assert client.socket == TcpSocket(
        "ESTABLISHED",
        "198.18.0.1",
        48782,
        "198.18.0.100",
        32672,
        recv_q=0,
        send_q=0,
        inode=140887,
        bytes_received=0,
        bytes_acked=9,
        bytes_sent=8,
        last_data_recv_ms=10664,
        last_data_sent_ms=10664,
        last_ack_recv_ms=10664,
        has_tcp_info=True,
    )
    assert client.users == (ProcessRef(10073, "celery", 3),)


def test_a_kernel_without_bytes_sent_keeps_bytes_acked() -> None:
    # Before 4.19 tcp_info has no bytes_sent: the wedge is bytes_acked:9 alone.
    text = WEDGED.read_text().replace(" bytes_sent:8", "")
    [client] = [r for r in ss_records(text) if r["local"] == "198.18.0.1:48782"]
    assert "bytes_sent" not in client and client["bytes_acked"] == 9
    [rec] = [r for r in parse_ss(text) if r.socket.local == "198.18.0.1:48782"]
    assert rec.socket.bytes_sent == 0 and rec.socket.bytes_acked == 9


def test_a_state_filter_leaves_out_the_state_column() -> None:
    # `ss -Htn state syn-sent ...` (race.wait_syn_sent): Recv-Q Send-Q Local Peer.
    text = "0      1         198.18.0.1:40000     198.18.0.100:32672\n"
    [line] = read_records(text, state="SYN-SENT")
    assert (line.state, line.local, line.remote) == ("SYN-SENT", "198.18.0.1:40000", VIP + ":32672")
    assert text.split()[2].rpartition(":")[2] == "40000"  # what race.py read by hand
    assert [r["local"] for r in ss_records(text, state="SYN-SENT")] == ["198.18.0.1:40000"]


def test_users_names_with_spaces_parentheses_and_several_users() -> None:
    line = (
        'ESTAB 0 0 10.0.0.2:41000 10.0.0.3:5672 users:(("celery worker",pid=9,fd=12),'
        '("a) b",pid=10,fd=13)) ino:77 sk:1 <-> bytes_sent:8'
    )
    assert parse_users(line) == (ProcessRef(9, "celery worker", 12), ProcessRef(10, "a) b", 13))
    rec = read_line(line)
    assert rec is not None and rec.fields["ino"] == "77" and rec.fields["bytes_sent"] == "8"


def test_lines_that_are_not_records_are_skipped() -> None:
    text = "Failed to find cgroup2 mount\n\nESTAB 0 0 198.18.0.1:1 198.18.0.2:2\n"
    assert [r["local"] for r in ss_records(text)] == ["198.18.0.1:1"]
    assert len(parse_ss(text)) == 1


SEED_LOOP = DATA / "lab" / "ss-recorded"


def test_the_recorded_worker_wedge_is_the_socket_that_received_nothing() -> None:
    # The seed-loop's wedged worker on n2: beside it two healthy connections of the same
    # process that received 613 and 625 bytes (DNATed: no local peer). The wedge found
    # is the one with bytes_sent 8 and no bytes_received, never a healthy one.
    node = (SEED_LOOP / "seed-loop-n2-dport-32672.txt").read_text()
    peer = (SEED_LOOP / "seed-loop-n2-wedged-peer.txt").read_text()
    records = ss_records(node + peer)
    assert [r.get("bytes_received") for r in records] == [613, 625, None, 8]
    [stuck] = stuck_handshakes(records, VIP, PORT)
    assert (stuck["local"], stuck["pid"], stuck["fd"]) == ("198.18.0.2:51552", 18839, 11)
    assert (stuck["bytes_sent"], stuck["peer_recv_q"], stuck["idle_ms"]) == (8, 8, 20092)
    [client] = ss_records((SEED_LOOP / "seed-loop-n2-wedged-client.txt").read_text())
    assert _socket_summary(client)["bytes_received"] == 0
    [peer_rec] = ss_records(peer)
    assert (peer_rec["local"], peer_rec["recv_q"], peer_rec["owner"]) == (f"{VIP}:{PORT}", 8, None)


def test_the_recorded_listener_owner() -> None:
    before, after = read_records((SEED_LOOP / "seed-loop-listener.txt").read_text())
    assert before.users == () and after.users == (ProcessRef(17940, "kube-proxy", 3),)
