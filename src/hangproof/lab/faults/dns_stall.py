"""dns-stall: the worker's resolver stops answering, and the broker's record flips meanwhile.

Upstream reports: celery#2417 (the worker stalls in the broker's name lookup
when DNS is unreachable), celery#2304 (a broker behind a DNS name that moves:
workers keep the old address, or never reconnect after the lookup failed).

Real-world event: the broker is known by a host name (a cloud broker, a
Kubernetes service name, an RDS-style endpoint). The broker moves to a new
address (a failover, a re-created service) at the moment the resolver is
unreachable (a DNS outage, a dropped UDP path, a restarting CoreDNS). The old
address stops answering without RST; every reconnect first needs the name.
A client that resolves once and caches, or whose lookup has no bound, never
gets back; one that resolves again once DNS returns moves to the new address.

The lab (on the faults' testbed, :mod:`hangproof.lab.beds.testbed`, plain AMQP):

- ``configure()``: the client namespace gets its own resolv.conf
  (``/etc/netns/<ns>/resolv.conf``, which ``ip netns exec`` bind-mounts over
  /etc/resolv.conf; glibc's defaults, ``timeout:5 attempts:2``) naming a lab
  DNS server (:mod:`hangproof.lab.components.dns_server`, started by pid in the broker's
  namespace); ``broker.hangproof.test`` resolves to the broker's address A;
  the consumer's URL uses that name. A second address B is added on the
  broker's side, DNAT'ed to the broker (B is the broker's "new" address);
- ``inject()``: DNS queries to the server are DROPped (UDP and TCP 53), the
  record flips to B, and A becomes a blackhole (DROP of every flow whose
  original destination is A:5672, both directions): the open connection goes
  silent and every reconnect first waits for a lookup that never answers;
- ``heal()``: DNS answers again (with B); A stays dead, so only a client that
  resolves again gets back;
- ``close()``: everything removed, the DNS server stopped by pid.

``detail`` records the DNS packets dropped, the queries answered with B after
heal, and the packets dropped on A: proof that the fault happened and the
client did look the name up again.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from hangproof.errors import HangproofError
from hangproof.failure import FaultClass
from hangproof.lab.engine import processes
from hangproof.lab.faults import CellContext, Fault, delete_rules, insert_rules

BROKER_NAME = "broker.hangproof.test"
#: The broker's "new" address after the record flips (DNAT'ed to the broker).
NEW_ADDRESS = "198.18.201.1"
DNS_PORT = "53"
NETNS_ETC = Path("/etc/netns")
DNS_COMMENT = "hpfault-dns-stall"
OLD_COMMENT = "hpfault-dns-old-address"
NAT_COMMENT = "hpfault-dns-new-address"
#: What the fault writes in the client namespace's resolv.conf (its first line marks it ours).
RESOLV_MARK = "# hangproof lab dns-stall fault"


def _counters(netns: str, chain: str, comment: str) -> int:
    """Packets matched by our rules (with ``comment``) in ``chain`` of the filter table."""
    out = processes.run(
        ["iptables", "-w", "5", "-L", chain, "-v", "-x", "-n"], netns=netns, check=False
    ).stdout
    total = 0
    for line in out.splitlines():
        if f"/* {comment} */" in line:
            fields = line.split()
            if fields and fields[0].isdigit():
                total += int(fields[0])
    return total


class DnsStall(Fault):
    """DROP DNS, flip the broker's record, black-hole the old address."""

    name = FaultClass.DNS_STALL.value

    def __post_init__(self) -> None:
        self._detail: dict[str, Any] = {}
        self.server_pid: int | None = None
        self.records: Path | None = None
        self.server_log: Path | None = None
        self.client_netns: str | None = None
        self.healed_at: float | None = None
        self._configured = False

    @property
    def detail(self) -> dict[str, Any]:
        """What the fault did and saw; after heal, the queries answered with the new address."""
        if self.healed_at is None:
            return dict(self._detail)
        return {**self._detail, "queries_answered_new": self.queries_answered(NEW_ADDRESS)}

    # -- addresses ----------------------------------------------------------
    @property
    def old_address(self) -> str:
        return self.target.node.host

    @property
    def port(self) -> str:
        return str(self.target.node.client_port)

    def _dns_rules(self) -> list[list[str]]:
        iface = self.target.broker_iface
        mark = ["-m", "comment", "--comment", DNS_COMMENT, "-j", "DROP"]
        return [
            ["INPUT", "-i", iface, "-p", proto, "--dport", DNS_PORT, *mark]
            for proto in ("udp", "tcp")
        ]

    def _old_address_rules(self) -> list[list[str]]:
        iface = self.target.broker_iface
        match = ["-p", "tcp", "-m", "conntrack", "--ctorigdst", self.old_address]
        match += ["--ctorigdstport", self.port]
        mark = ["-m", "comment", "--comment", OLD_COMMENT, "-j", "DROP"]
        return [["INPUT", "-i", iface, *match, *mark], ["OUTPUT", "-o", iface, *match, *mark]]

    def _nat_rules(self) -> list[list[str]]:
        return [
            ["PREROUTING", "-i", self.target.broker_iface, "-d", NEW_ADDRESS,
             "-p", "tcp", "--dport", self.port, "-m", "comment", "--comment", NAT_COMMENT,
             "-j", "DNAT", "--to-destination", f"{self.old_address}:{self.port}"],
        ]  # fmt: skip

    def _write_records(self, address: str) -> None:
        assert self.records is not None
        tmp = self.records.with_suffix(".tmp")
        tmp.write_text(json.dumps({BROKER_NAME: address}))
        tmp.replace(self.records)  # the server never reads half a file

    @property
    def resolv_conf(self) -> Path | None:
        return NETNS_ETC / self.client_netns / "resolv.conf" if self.client_netns else None

    # -- fault-matrix hooks ---------------------------------------------------
    def configure(self, ctx: CellContext) -> None:
        """Start the DNS server, give the clients' namespace its resolv.conf, dial by name."""
        if self.target.node.tls:
            raise HangproofError("dns-stall runs on the plain testbed (the lab CA names the IP)")
        if self._configured and ctx.client_netns == self.client_netns:
            # Another cell of the same injection: the one DNS server, record and
            # resolv.conf serve every consumer of the clients' namespace.
            ctx.client_url = f"amqp://guest:guest@{BROKER_NAME}:{self.port}/"
            ctx.env["HANGPROOF_BROKER_URL"] = ctx.client_url
            return
        self.client_netns = ctx.client_netns
        resolv = self.resolv_conf
        assert resolv is not None
        if resolv.exists() and not resolv.read_text().startswith(RESOLV_MARK):
            raise HangproofError(f"{resolv} exists and is not the lab's; remove it first")
        self._configured = True
        try:
            self._configure(ctx)
        except BaseException:
            self.close()  # configure runs before the matrix's finally: undo here
            raise

    def _configure(self, ctx: CellContext) -> None:
        resolv = self.resolv_conf
        assert resolv is not None
        self.records = ctx.work / f"{ctx.queue}.dns-records.json"
        self.server_log = ctx.work / f"{ctx.queue}.dns.log"
        self._write_records(self.old_address)
        server = processes.spawn(
            [sys.executable, "-m", "hangproof.lab.components.dns_server", self.old_address, DNS_PORT,
             str(self.records)],
            netns=self.target.broker_netns,
            log=self.server_log,
        )  # fmt: skip
        self.server_pid = server.pid
        resolv.parent.mkdir(parents=True, exist_ok=True)
        resolv.write_text(f"{RESOLV_MARK}\nnameserver {self.old_address}\n")
        processes.run(
            ["ip", "addr", "replace", f"{NEW_ADDRESS}/32", "dev", self.target.broker_iface],
            netns=self.target.broker_netns,
        )
        netns = self.target.broker_netns
        client_iface = _client_iface(ctx.client_netns, self.old_address)
        processes.run(
            ["ip", "route", "replace", f"{NEW_ADDRESS}/32", "dev", client_iface],
            netns=ctx.client_netns,
        )
        for rule in self._nat_rules():
            processes.run(["iptables", "-w", "5", "-t", "nat", "-I", *rule], netns=netns)
        if not self._resolves(ctx.client_netns, self.old_address):
            raise HangproofError(f"the lab DNS server did not answer for {BROKER_NAME}")
        ctx.client_url = f"amqp://guest:guest@{BROKER_NAME}:{self.port}/"
        ctx.env["HANGPROOF_BROKER_URL"] = ctx.client_url

    def _resolves(self, netns: str, expected: str, bound: float = 15.0) -> bool:
        code = (
            "import socket,sys\n"
            f"a={{i[4][0] for i in socket.getaddrinfo({BROKER_NAME!r},0,socket.AF_INET)}}\n"
            f"sys.exit(0 if {expected!r} in a else 1)\n"
        )
        deadline = time.monotonic() + bound
        for _ in range(30):
            result = processes.run([sys.executable, "-c", code], netns=netns, check=False)
            if result.returncode == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return False

    def inject(self) -> None:
        """DNS silent, record -> B, A black-holed."""
        insert_rules(self.target.broker_netns, self._dns_rules())
        self._write_records(NEW_ADDRESS)
        insert_rules(self.target.broker_netns, self._old_address_rules())
        self._detail.update({"name": BROKER_NAME, "old": self.old_address, "new": NEW_ADDRESS})

    def heal(self) -> None:
        """DNS answers again (with B); A stays dead until close()."""
        with contextlib.suppress(Exception):
            if "dns_packets_dropped" not in self._detail:
                netns = self.target.broker_netns
                self._detail["dns_packets_dropped"] = _counters(netns, "INPUT", DNS_COMMENT)
                self._detail["old_address_packets_dropped"] = _counters(netns, "INPUT", OLD_COMMENT)
        delete_rules(self.target.broker_netns, self._dns_rules())
        if self.healed_at is None:
            self.healed_at = time.time()

    def close(self) -> None:
        """Heal, then remove the old-address rules, B, the route, resolv.conf and the server."""
        self.heal()
        netns = self.target.broker_netns
        delete_rules(netns, self._old_address_rules())
        for rule in self._nat_rules():
            processes.run(
                ["iptables", "-w", "5", "-t", "nat", "-D", *rule], netns=netns, check=False
            )
        if not self._configured:
            return
        processes.run(
            ["ip", "addr", "del", f"{NEW_ADDRESS}/32", "dev", self.target.broker_iface],
            netns=netns,
            check=False,
        )
        if self.client_netns:
            processes.run(
                ["ip", "route", "del", f"{NEW_ADDRESS}/32"], netns=self.client_netns, check=False
            )
        resolv = self.resolv_conf
        if resolv is not None and resolv.exists() and resolv.read_text().startswith(RESOLV_MARK):
            resolv.unlink()
            with contextlib.suppress(OSError):
                resolv.parent.rmdir()
                NETNS_ETC.rmdir()  # only when empty: /etc/netns was not there before
        if self.server_pid is not None:
            processes.stop_pid(self.server_pid, grace=1)
            self.server_pid = None
        self._configured = False

    def queries_answered(self, address: str, since: float | None = None) -> int:
        """How many queries the server answered with ``address`` (after heal, by default)."""
        since = self.healed_at if since is None else since
        if self.server_log is None or not self.server_log.exists():
            return 0
        count = 0
        for line in self.server_log.read_text(errors="replace").splitlines():
            m = re.match(r"^(\d+\.\d+) query \S+ \S+ type=1 -> (\S+)$", line)
            if m and address in m.group(2).split(",") and float(m.group(1)) >= (since or 0):
                count += 1
        return count


def _client_iface(netns: str, broker_ip: str) -> str:
    """The client namespace's interface toward ``broker_ip`` (``ip route get``)."""
    out = processes.run(["ip", "-o", "route", "get", broker_ip], netns=netns).stdout
    m = re.search(r"\bdev (\S+)", out)
    if not m:
        raise HangproofError(f"no route from {netns} to {broker_ip}")
    return m.group(1)
