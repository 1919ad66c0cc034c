"""doctor against real kernel state in a throwaway network namespace (root).

Each test builds its own namespace ``hpdoc-*`` with only loopback and
198.18.0.0/15 addresses; the finalizer stops the processes it started by pid and
deletes the namespace, even when the test fails. The root namespace's network
configuration is never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.lab

NODE_PORT = 32672
NODE_IP, VIP = "198.18.0.1", "198.18.0.100"
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
#: Every process a test starts ends by itself after this long, even if cleanup fails.
PROCESS_LIFETIME = 120

PORT_HOLDER = f"""
import ctypes, socket, time
# Look like kube-proxy to /proc/PID/comm, ss and doctor (PR_SET_NAME = 15).
ctypes.CDLL(None).prctl(15, b"kube-proxy", 0, 0, 0)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {NODE_PORT}))
s.listen(16)  # never accept(): the port holder only reserves the port
print("ready", flush=True)
time.sleep({PROCESS_LIFETIME})
"""

ANSWERING_SERVER = f"""
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5672))
s.listen(16)
print("ready", flush=True)
s.settimeout({PROCESS_LIFETIME})
conn, _ = s.accept()
conn.recv(8)
conn.sendall(b"\\x01\\x00\\x00\\x00\\x00\\x00\\x04start\\xce")  # stands in for Connection.Start
time.sleep({PROCESS_LIFETIME})
"""

CLIENT = """
import socket, sys, time

def recv_connection_start(sock):
    # py-amqp's transport._read: waits for Connection.Start with no deadline.
    return sock.recv(7)

sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.settimeout(None)
sock.sendall(b"AMQP\\x00\\x00\\x09\\x01")
print("sent", flush=True)
recv_connection_start(sock)
recv_connection_start(sock)  # a healthy client keeps reading frames
"""

KUBE_PROXY_NAT = f"""*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/rabbitmq:amqp" -m tcp --dport {NODE_PORT} -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
"""

#: A nat table without NodePort rules: conntrack tracks every connection with a
#: null NAT binding, which is what the wedged connection had in the incident.
#: kube-proxy 1.9's filter OUTPUT rule (a conntrack match) is what makes this
#: kernel track connections in the namespace; a nat chain alone did not.
NAT_WITHOUT_NODEPORTS = """*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
*nat
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A OUTPUT -j KUBE-SERVICES
COMMIT
"""


@dataclass
class Netns:
    name: str
    tmp: Path
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def run(self, *argv: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["nsenter", f"--net={self.path}", "--", *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    def start(self, script: str, *args: str) -> subprocess.Popen[str]:
        """Run a Python script inside the namespace; wait for its first line (bounded)."""
        path = self.tmp / f"proc{len(self.processes)}.py"
        path.write_text(script)
        # nsenter execs the program, so the pid we hold is Python's own.
        proc = subprocess.Popen(
            ["nsenter", f"--net={self.path}", "--", sys.executable, str(path), *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.processes.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the scripts print as soon as they are ready
        assert line.strip() in ("ready", "sent"), f"{path.name} did not start: {line!r}"
        return proc

    def doctor(self, *extra: str) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            [sys.executable, "-m", "hangproof.doctor", "--netns", self.name, "--json", *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode in (0, 1), done.stderr
        return done.returncode, json.loads(done.stdout)


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[Netns]:
    ns = Netns(f"hpdoc-{secrets.token_hex(3)}", tmp_path)
    subprocess.run(["ip", "netns", "add", ns.name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield ns
    finally:
        for proc in ns.processes:  # by the pid we started, never by name
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns.name], check=False, timeout=10)


def _add_node_addresses(ns: Netns, *, vip: bool) -> None:
    # A veth pair with both ends inside the namespace stands in for the node's NIC
    # (the dummy driver is not available on every kernel).
    ns.run("ip", "link", "add", "hpdoc-eth0", "type", "veth", "peer", "name", "hpdoc-eth1")
    ns.run("ip", "link", "set", "hpdoc-eth0", "up")
    ns.run("ip", "link", "set", "hpdoc-eth1", "up")
    ns.run("ip", "addr", "add", f"{NODE_IP}/24", "dev", "hpdoc-eth0")
    if vip:
        ns.run("ip", "addr", "add", f"{VIP}/32", "dev", "hpdoc-eth0")


def _wait_for(ns: Netns, kind: str, *extra: str) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        code, report = ns.doctor(*extra)
        if any(f["kind"] == kind for f in report["findings"]) or time.monotonic() > deadline:
            return code, report
        time.sleep(0.5)


@pytest.mark.parametrize("reader", [(), ("--ss",)], ids=["netlink", "ss-text"])
def test_wedged_handshake_on_a_port_holder(netns: Netns, reader: tuple[str, ...]) -> None:
    # Both ways of reading sockets: inet_diag, and the parsed `ss -tinpeHOa` text
    # (doctor.ss_text, the parser the lab's evidence reads too).
    _add_node_addresses(netns, vip=False)
    netns.run("iptables-restore", stdin=NAT_WITHOUT_NODEPORTS)
    holder = netns.start(PORT_HOLDER)
    client = netns.start(CLIENT, NODE_IP, str(NODE_PORT))
    time.sleep(1.2)

    code, report = _wait_for(netns, "handshake-unanswered", "--min-silence", "1", *reader)

    assert code == 1
    (finding,) = [f for f in report["findings"] if f["kind"] == "handshake-unanswered"]
    assert finding["pid"] == client.pid
    assert finding["remote"] == f"{NODE_IP}:{NODE_PORT}"
    assert finding["silent_seconds"] >= 1
    ev = finding["evidence"]
    assert ev["peer_owner"] == "kube-proxy" and ev["peer_owner_pid"] == holder.pid
    assert ev["peer_unread_bytes"] == len(AMQP_HEADER)
    assert ev["peer_accepted"] is False
    assert ev["dnat"] is False, ev["conntrack"]
    if ev["python_stack"] is not None:  # py-spy present and ptrace allowed
        assert "recv" in ev["python_stack"]
    else:
        assert any("py-spy" in line for line in report["could_not_see"])


def test_answered_handshake_gives_no_finding(netns: Netns) -> None:
    netns.start(ANSWERING_SERVER)
    netns.start(CLIENT, "127.0.0.1", "5672")
    time.sleep(1.5)

    code, report = netns.doctor("--min-silence", "1")

    assert report["scanned_sockets"] >= 3  # listener and both ends: the scan saw them
    assert [f["kind"] for f in report["findings"]] == []
    assert code == 0


def test_kube_proxy_rules_with_a_vip_are_a_race_hazard(netns: Netns) -> None:
    _add_node_addresses(netns, vip=True)
    netns.run("iptables-restore", stdin=KUBE_PROXY_NAT)
    netns.start(PORT_HOLDER)

    code, report = netns.doctor()

    assert code == 1
    (hazard,) = [f for f in report["findings"] if f["kind"] == "nodeport-vip-race-hazard"]
    assert hazard["severity"] == "warning"
    ev = hazard["evidence"]
    assert [a["address"] for a in ev["floating_addresses"]] == [VIP]
    assert ev["node_ports"] == [{"port": NODE_PORT, "service": "default/rabbitmq:amqp"}]
    assert ev["port_holders"][0]["owner"] == "kube-proxy"
    assert "--dst-type LOCAL" in ev["local_gate"]
    for mitigation in ("conntrack -D -d", "! --ctstate DNAT", "108496"):
        assert mitigation in hazard["remedy"]


def test_the_same_rules_without_a_floating_address_are_no_hazard(netns: Netns) -> None:
    _add_node_addresses(netns, vip=False)
    netns.run("iptables-restore", stdin=KUBE_PROXY_NAT)

    code, report = netns.doctor()

    assert code == 0 and report["findings"] == []
