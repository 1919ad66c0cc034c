"""doctor's pure parsers on recorded text and bytes: no root, no network."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from hangproof.doctor import inet_diag
from hangproof.doctor.conntrack import find_entry, parse_conntrack, parse_conntrack_line
from hangproof.doctor.netfilter import (
    floating_from_ip_addr,
    flushes_conntrack,
    parse_iptables_save,
    parse_keepalived,
)
from hangproof.doctor.ss_text import parse_ss, split_endpoint

DATA = Path(__file__).parent.parent / "data" / "doctor"


def _recorded_netlink() -> list[bytes]:
    # Recorded in a namespace with a kube-proxy-named port holder on *:32672 and a
    # client that sent the AMQP header and blocks in recv (see tests/lab).
    return [bytes.fromhex(line) for line in (DATA / "inet_diag_wedged.hex").read_text().split()]


def test_inet_diag_recorded_wedge_decodes_the_three_sockets() -> None:
    socks = inet_diag.parse_dumps(_recorded_netlink())
    by_state = {(s.state, s.local_port): s for s in socks}
    holder = by_state[("LISTEN", 32672)]
    assert holder.local == "*:32672"
    assert holder.recv_q == 1  # one connection waiting in the accept queue
    peer = by_state[("ESTABLISHED", 32672)]
    assert (peer.recv_q, peer.inode, peer.bytes_received) == (8, 0, 8)
    client = next(s for s in socks if s.remote_port == 32672)
    assert client.bytes_sent == 8 and client.bytes_acked == 9 and client.bytes_received == 0
    assert client.inode != 0 and client.unacked == 0
    assert client.last_data_sent_ms > 1000


def test_inet_diag_each_chunk_ends_its_dump() -> None:
    # The kernel sent: IPv4 sockets, IPv4 DONE, then an IPv6 dump that is only DONE.
    chunks = _recorded_netlink()
    assert len(inet_diag.parse_dump(chunks[0])[0]) == 3
    assert inet_diag.parse_dump(chunks[0])[1] is False
    assert inet_diag.parse_dump(chunks[1]) == ([], True)
    assert inet_diag.parse_dump(chunks[2]) == ([], True)


def test_inet_diag_error_message_raises_with_errno() -> None:
    header = struct.pack("=IHHII", 36, inet_diag.NLMSG_ERROR, 0, 1, 0)
    with pytest.raises(inet_diag.NetlinkError) as err:
        inet_diag.parse_dump(header + struct.pack("=i", -1) + b"\0" * 16)
    assert err.value.errno == 1


def test_inet_diag_truncated_message_is_not_read_past_its_end() -> None:
    chunk = _recorded_netlink()[0]
    socks, done = inet_diag.parse_dump(chunk[:100])
    assert socks == [] and done is False


def test_inet_diag_short_tcp_info_of_old_kernels_leaves_new_fields_unset() -> None:
    # A 4.x kernel sends a tcp_info without tcpi_bytes_sent (offset 200).
    msg = bytearray(72)
    struct.pack_into("=BBBB", msg, 0, socket.AF_INET, 1, 0, 0)
    struct.pack_into(">HH", msg, 4, 40000, 5672)
    msg[8:12] = socket.inet_aton("198.18.0.1")
    msg[24:28] = socket.inet_aton("198.18.0.100")
    struct.pack_into("=IIIII", msg, 52, 0, 0, 0, 0, 4242)  # rqueue wqueue uid inode
    info = bytearray(136)
    struct.pack_into("=Q", info, 120, 9)  # bytes_acked
    attr = struct.pack("=HH", 4 + len(info), inet_diag.INET_DIAG_INFO) + bytes(info)
    body = bytes(msg) + attr
    data = struct.pack("=IHHII", 16 + len(body), inet_diag.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body
    (sock,), _ = inet_diag.parse_dump(data)
    assert sock.bytes_sent is None and sock.data_bytes_sent == 8
    assert sock.remote == "198.18.0.100:5672" and sock.inode == 4242


def test_inet_diag_request_asks_for_tcp_info_of_all_states() -> None:
    req = inet_diag.build_request(socket.AF_INET6, seq=3)
    length, mtype, flags, seq, _ = struct.unpack_from("=IHHII", req)
    assert (length, mtype, seq) == (len(req), inet_diag.SOCK_DIAG_BY_FAMILY, 3)
    assert flags & inet_diag.NLM_F_DUMP == inet_diag.NLM_F_DUMP
    family, proto, ext, states = struct.unpack_from("=BBBxI", req, 16)
    assert (family, proto, ext) == (socket.AF_INET6, socket.IPPROTO_TCP, 2)
    assert states == inet_diag.ALL_STATES


def test_ss_text_recorded_wedge_matches_netlink_view() -> None:
    records = parse_ss((DATA / "ss_wedged.txt").read_text())
    assert len(records) == 3
    holder = next(r for r in records if r.socket.state == "LISTEN")
    assert holder.socket.local == "*:32672"
    assert [u.name for u in holder.users] == ["kube-proxy"]
    peer = next(r for r in records if r.socket.local_port == 32672 and r.socket.state != "LISTEN")
    assert (peer.socket.recv_q, peer.socket.inode, peer.users) == (8, 0, ())
    client = next(r for r in records if r.socket.remote_port == 32672)
    assert client.socket.bytes_sent == 8 and client.socket.bytes_received == 0
    assert client.socket.last_data_sent_ms > 1000
    assert client.users[0].name == "python"


def test_ss_text_ipv6_and_garbage_lines() -> None:
    text = (
        "Failed to find cgroup2 mount\n"
        'ESTAB 0 0 [::ffff:10.0.0.2]:41000 [::1]:5672 users:(("celery worker",pid=9,fd=12)) '
        "ino:77 sk:1 <-> bytes_sent:8 bytes_acked:9 lastsnd:30000 lastrcv:30000 lastack:29990\n"
    )
    (rec,) = parse_ss(text)
    assert rec.socket.local == "10.0.0.2:41000" and rec.socket.remote == "[::1]:5672"
    assert rec.users[0].name == "celery worker" and rec.users[0].pid == 9
    assert split_endpoint("[fe80::1%eth0]:22") == ("fe80::1", 22)


def test_conntrack_extended_and_plain() -> None:
    entries = parse_conntrack((DATA / "conntrack_extended.txt").read_text())
    assert len(entries) == 3  # the udp entry is skipped
    wedged, healthy, syn = entries
    assert wedged.dnat is False and wedged.state == "ESTABLISHED"
    assert healthy.dnat is True and healthy.reply.src == "198.19.1.5"
    assert syn.state == "SYN_SENT" and "UNREPLIED" in syn.flags
    plain = parse_conntrack((DATA / "conntrack_plain.txt").read_text())
    assert [e.dnat for e in plain] == [False, True]
    assert find_entry(entries, "198.18.0.1", 40312, "198.18.0.100", 32672) is wedged
    # Seen from the pod side (the DNATed destination), the reply tuple matches.
    assert find_entry(entries, "198.19.1.1", 51000, "198.19.1.5", 5672) is healthy


def test_conntrack_summary_and_broken_lines_are_skipped() -> None:
    assert parse_conntrack_line("conntrack v1.4.7 (conntrack-tools): 3 flow entries") is None
    assert parse_conntrack_line("tcp 6 10 ESTABLISHED src=1.2.3.4 dst=") is None
    assert parse_conntrack_line("tcp 6 1 CLOSE src=a dst=b sport=x dport=1 src=b dst=a") is None


def test_iptables_kube_proxy_1_9_node_port_gate() -> None:
    gate = parse_iptables_save((DATA / "iptables_kube_proxy_1_9.txt").read_text())
    assert gate.local_gate is not None
    assert "--dst-type LOCAL -j KUBE-NODEPORTS" in gate.local_gate
    assert gate.local_gate.startswith("-A KUBE-SERVICES")
    assert gate.reached_from_output is True
    assert [(r.port, r.service) for r in gate.node_ports] == [
        (31672, "default/rabbitmq:management"),
        (32672, "default/rabbitmq:amqp"),
    ]
    assert gate.reject_undnat_ports == frozenset() and gate.reject_undnat_all is False


def test_iptables_mitigation_2_is_recognised_per_port() -> None:
    text = (DATA / "iptables_kube_proxy_1_9.txt").read_text() + (
        "*filter\n:INPUT ACCEPT [0:0]\n:HP-GUARD - [0:0]\n-A INPUT -j HP-GUARD\n"
        "-A HP-GUARD -p tcp -m tcp --dport 32672 -m conntrack ! --ctstate DNAT "
        "-j REJECT --reject-with tcp-reset\nCOMMIT\n"
    )
    gate = parse_iptables_save(text)
    assert gate.reject_undnat_ports == frozenset({32672})


def test_iptables_without_kube_proxy_and_with_negated_addrtype() -> None:
    assert parse_iptables_save("").local_gate is None
    text = (
        "*nat\n:KUBE-SERVICES - [0:0]\n"
        "-A KUBE-SERVICES -m addrtype ! --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n"
    )
    gate = parse_iptables_save(text)
    assert gate.local_gate is None and gate.reached_from_output is False


def test_floating_address_from_ip_addr_json() -> None:
    (vip,) = floating_from_ip_addr((DATA / "ip_addr_vip.json").read_text())
    assert vip.address == "198.18.0.100" and vip.held_here
    assert "198.18.0.1/24" in vip.source and "hplab-n1-eth0" in vip.source
    # A lone /32 (a point-to-point pod address) is not "beside a primary".
    lone = [
        {
            "ifname": "eth0",
            "addr_info": [{"family": "inet", "local": "198.19.1.5", "prefixlen": 32}],
        }
    ]
    assert floating_from_ip_addr(lone) == []


def test_keepalived_config_of_the_report() -> None:
    conf = parse_keepalived((DATA / "keepalived.conf").read_text())
    assert conf.vips == ("198.18.0.100",)
    assert conf.notify_master == ()
    assert flushes_conntrack("/usr/sbin/conntrack -D -d 198.18.0.100")
    assert not flushes_conntrack("/usr/bin/curl 127.0.0.1:8978")


def test_inet_diag_recorded_ipv6_dump_decodes_ipv6_and_mapped_addresses() -> None:
    # Recorded by tests/data/doctor/record_ipv6.py in a throwaway namespace: a listener
    # on [::1]:5672 whose accepted socket holds an unread AMQP header, and a dual-stack
    # listener on [::]:5673 with an IPv4 client (the server's socket is IPv4-mapped).
    chunks = [bytes.fromhex(line) for line in (DATA / "inet_diag_ipv6.hex").read_text().split()]
    socks = inet_diag.parse_dumps(chunks)
    v6 = [s for s in socks if ":" in s.local_addr]
    assert v6, "the recording holds no IPv6 socket"
    listener = next(s for s in socks if s.state == "LISTEN" and s.local_port == 5672)
    assert listener.local == "[::1]:5672"
    client = next(s for s in socks if s.remote_port == 5672 and s.state == "ESTABLISHED")
    assert (client.local_addr, client.remote) == ("::1", "[::1]:5672")
    assert client.bytes_sent == 8 and client.bytes_received == 0
    server_side = next(s for s in socks if s.local_port == 5672 and s.state == "ESTABLISHED")
    assert server_side.remote == f"[::1]:{client.local_port}"
    assert server_side.recv_q == 8 and server_side.bytes_received == 8
    assert next(s for s in socks if s.state == "LISTEN" and s.local_port == 5673).local == "*:5673"
    mapped = next(s for s in socks if s.local_port == 5673 and s.state == "ESTABLISHED")
    assert (mapped.local_addr, mapped.remote_addr) == ("127.0.0.1", "127.0.0.1")
    # Each family's dump ended with its own NLMSG_DONE, and nothing was cut off.
    assert sum(inet_diag.decode_chunk(c).done for c in chunks) == 2
    assert not any(inet_diag.decode_chunk(c).interrupted for c in chunks)
