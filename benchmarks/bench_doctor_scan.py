"""How long does doctor take on a host with ~10,000 TCP sockets? (root)

Builds a throwaway network namespace ``hpbench-*`` (loopback only), starts one
process in it holding N/2 connected loopback pairs, then times, in the same run:

- the netlink inet_diag dump and decode (doctor's socket reader);
- the /proc walk mapping socket inodes to processes;
- the rules pass over all sockets;
- the whole ``doctor`` scan (sockets, owners, conntrack, iptables-save, ip addr, rules);
- ``ss -tinp`` on the same namespace, for a ratio;
- pyroute2's ``DiagSocket`` on the same namespace, for reference.

The process is stopped by its pid and the namespace deleted in ``finally``,
even on failure. Figures only, never a timed assertion.

    $ sudo .venv/bin/python benchmarks/bench_doctor_scan.py --sockets 10000
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from hangproof.doctor import sockets as live
from hangproof.doctor.rules import RuleSettings, diagnose
from hangproof.doctor.scan import ScanRequest, collect, run_scan

#: The socket holder exits by itself after this long even if we die first.
HOLDER_LIFETIME = 300

HOLDER = """
import resource, socket, sys, time
pairs = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
need = 2 * pairs + 64
if hard != resource.RLIM_INFINITY and hard < need:
    sys.exit(f"RLIMIT_NOFILE hard limit {hard} < {need}: ask for fewer sockets")
resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
port = listener.getsockname()[1]
held = []
for i in range(pairs):
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    server, _ = listener.accept()
    if i % 3 == 0:  # a completed exchange, so tcp_info counters are not all zero
        client.sendall(b"AMQP\\x00\\x00\\x09\\x01")
        server.recv(8)
        server.sendall(b"\\x01" * 64)
        client.recv(64)
    elif i % 100 == 1:  # a few wedged handshakes, so the rules produce findings
        client.sendall(b"AMQP\\x00\\x00\\x09\\x01")
    held += [client, server]
print("ready", flush=True)
sys.stdin.read()  # parent closes stdin (or dies): we exit
"""


def _timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    times = []
    result: object = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), result


def _pyroute2_dump(netns: str) -> int:
    from socket import AF_INET, AF_INET6

    from pyroute2 import DiagSocket

    def dump() -> int:
        # pyroute2 opens its socket lazily, so the whole dump runs in the netns thread.
        with DiagSocket() as ds:
            ds.bind()
            return sum(
                len(ds.get_sock_stats(family=family, extensions=1 << 1))
                for family in (AF_INET, AF_INET6)
            )

    return live.in_netns(netns, dump)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=10_000, help="TCP sockets to create")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-pyroute2", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_doctor_scan needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    pairs = max(1, args.sockets // 2)
    name = f"hpbench-{secrets.token_hex(3)}"
    path = f"/run/netns/{name}"
    holder: subprocess.Popen[str] | None = None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the child inherits the hard cap
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(HOLDER)
        start = time.perf_counter()
        holder = subprocess.Popen(
            [
                "nsenter",
                f"--net={path}",
                "--",
                "timeout",
                str(HOLDER_LIFETIME),
                sys.executable,
                f.name,
                str(pairs),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        line = holder.stdout.readline()
        os.unlink(f.name)
        if line.strip() != "ready":
            print(f"socket holder failed to start: {line!r}", file=sys.stderr)
            return 1
        print(
            f"namespace {name}: {2 * pairs} connected sockets + 1 listener "
            f"created in {time.perf_counter() - start:.2f} s"
        )

        best, median, socks = _timed(lambda: live.read_tcp_sockets(path), args.repeat)
        n = len(socks)  # type: ignore[arg-type]
        print(
            f"netlink inet_diag dump+decode: {n} sockets, best {best * 1000:.1f} ms, "
            f"median {median * 1000:.1f} ms"
        )
        netlink_best = best

        inodes = [s.inode for s in socks]  # type: ignore[attr-defined]
        best, median, scan = _timed(lambda: live.map_owners(inodes), args.repeat)
        print(
            f"/proc owner mapping: {len(scan.owners)} inodes owned, best "  # type: ignore[attr-defined]
            f"{best * 1000:.1f} ms, median {median * 1000:.1f} ms"
        )

        request = ScanRequest(netns=name, min_silence=1, stacks=False)
        view = collect(request)
        best, median, findings = _timed(
            lambda: diagnose(view, RuleSettings(min_silence=1)), args.repeat
        )
        print(
            f"rules pass over {len(view.sockets)} sockets: {len(findings)} findings, "  # type: ignore[arg-type]
            f"best {best * 1000:.1f} ms, median {median * 1000:.1f} ms"
        )

        best, median, report = _timed(lambda: run_scan(request), args.repeat)
        timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in report.timings.items())  # type: ignore[attr-defined]
        print(
            f"whole doctor scan: best {best * 1000:.1f} ms, median {median * 1000:.1f} ms "
            f"({timings})"
        )

        def ss() -> int:
            out = subprocess.run(
                ["nsenter", f"--net={path}", "--", "ss", "-tinpH"],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
            return sum(1 for line in out.splitlines() if line[:5] in ("ESTAB", "LISTE"))

        best, median, lines = _timed(ss, max(1, min(args.repeat, 3)))
        print(
            f"ss -tinp (-HO, one line each): {lines} sockets, best {best * 1000:.1f} ms, median {median * 1000:.1f} ms"
        )
        print(f"ratio ss -tinp / doctor netlink dump: {best / netlink_best:.1f}x")

        if not args.skip_pyroute2:
            best, median, count = _timed(lambda: _pyroute2_dump(path), 1)
            print(f"pyroute2 DiagSocket dump (reference): {count} sockets, {best * 1000:.1f} ms")
        return 0
    finally:
        if holder is not None and holder.poll() is None:
            if holder.stdin:
                holder.stdin.close()
            try:
                holder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # By the pid we started: `timeout` relays SIGTERM to the holder.
                os.kill(holder.pid, signal.SIGTERM)
                holder.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":
    sys.exit(main())
