"""Adapter: read TCP sockets (netlink inet_diag) and their owners (/proc), read-only.

A netlink socket belongs to the network namespace it was created in, so for
``--netns`` we create it in a short-lived thread that has entered the namespace
with ``setns``; ``setns(CLONE_NEWNET)`` only moves the calling thread, so the
rest of the process (and the host) is untouched.

>>> socks = read_tcp_sockets()  # doctest: +SKIP
>>> owners = map_owners({s.inode for s in socks})  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from hangproof.doctor import inet_diag
from hangproof.doctor.model import ProcessRef, TcpSocket
from hangproof.errors import HangproofError

CLONE_NEWNET = 0x40000000
#: Bounds every dump: a host with more sockets than this is cut off, not hung on.
MAX_RECVS = 200_000
RECV_BUFFER = 1 << 20
NETNS_DIR = "/run/netns"

T = TypeVar("T")


class NetlinkDumpError(HangproofError):
    """The kernel refused the inet_diag dump."""


def netns_path(name: str) -> str:
    """The bind-mount ``ip netns`` made for ``name``; raises if it does not exist.

    >>> netns_path("hpdoc-x")  # doctest: +SKIP
    '/run/netns/hpdoc-x'
    """
    if "/" in name or name in ("", ".", ".."):
        raise HangproofError(f"not a network namespace name: {name!r}")
    path = os.path.join(NETNS_DIR, name)
    if not os.path.exists(path):
        raise HangproofError(
            f"no network namespace {name!r} (no {path}); list them with `ip netns list`"
        )
    return path


def in_netns(path: str | None, make: Callable[[], T]) -> T:
    """Run ``make()`` in a thread that has joined the network namespace at ``path``.

    Objects created there (sockets) stay bound to that namespace after the
    thread ends. With ``path`` None, ``make()`` runs here.
    """
    if path is None:
        return make()
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _setns(path)
            result.append(make())
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="hangproof-netns", daemon=True)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
    if not result:
        raise HangproofError(f"entering the network namespace {path} timed out")
    return result[0]


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise HangproofError(
                f"cannot enter network namespace {path}: {os.strerror(err)} "
                "(entering a namespace needs root: run with sudo)"
            )
    finally:
        os.close(fd)


@dataclass
class TcpDump:
    """The sockets of one inet_diag dump, and whether the kernel gave all of them.

    ``complete`` is False when the dump was cut off (``MAX_RECVS`` reads without
    ``NLMSG_DONE``); ``interrupted`` when the kernel flagged ``NLM_F_DUMP_INTR``
    (its table changed during the dump, so entries may be missing or repeated).
    """

    sockets: list[TcpSocket] = field(default_factory=list)
    complete: bool = True
    interrupted: bool = False

    @property
    def partial(self) -> bool:
        return not self.complete or self.interrupted

    def add(self, other: TcpDump) -> None:
        self.sockets.extend(other.sockets)
        self.complete = self.complete and other.complete
        self.interrupted = self.interrupted or other.interrupted


def collect_dump(recv: Callable[[], bytes | memoryview], *, max_recvs: int = MAX_RECVS) -> TcpDump:
    """Read one family's dump through ``recv`` until ``NLMSG_DONE``, at most ``max_recvs`` times.

    Pure over ``recv``, so a cut-off or interrupted dump is testable on crafted bytes.

    >>> collect_dump(lambda: b"", max_recvs=2).complete
    False
    """
    dump = TcpDump(complete=False)
    for _ in range(max_recvs):
        chunk = inet_diag.decode_chunk(recv())
        dump.sockets.extend(chunk.sockets)
        dump.interrupted = dump.interrupted or chunk.interrupted
        if chunk.done:
            dump.complete = True
            break
    return dump


def read_tcp_dump(netns: str | None = None, *, record: list[bytes] | None = None) -> TcpDump:
    """All TCP sockets (IPv4 and IPv6) with tcp_info through netlink inet_diag, and
    whether the dump was whole (see :class:`TcpDump`).

    ``netns`` is a namespace path (``/run/netns/NAME`` or ``/proc/PID/ns/net``).
    ``record``, if given, receives the raw netlink replies (for test fixtures).
    """
    sock = in_netns(
        netns,
        lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, inet_diag.NETLINK_SOCK_DIAG),
    )
    out = TcpDump()
    with sock:
        sock.settimeout(10)  # the kernel answers at once; this only guards a wedged read
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        sock.bind((0, 0))
        buffer = bytearray(RECV_BUFFER)

        def recv() -> memoryview:
            n = sock.recv_into(buffer)
            chunk = memoryview(buffer)[:n]
            if record is not None:
                record.append(bytes(chunk))
            return chunk

        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            sock.send(inet_diag.build_request(family, seq=seq))
            try:
                out.add(collect_dump(recv))
            except inet_diag.NetlinkError as exc:
                if family == socket.AF_INET6:
                    break  # IPv6 disabled: not an error for us
                raise NetlinkDumpError(
                    f"netlink inet_diag refused the socket dump ({exc}); is the "
                    "inet_diag module available (`modprobe tcp_diag`)?"
                ) from exc
    return out


def read_tcp_sockets(
    netns: str | None = None, *, record: list[bytes] | None = None
) -> list[TcpSocket]:
    """The sockets of :func:`read_tcp_dump` (for callers that do not need its flags)."""
    return read_tcp_dump(netns, record=record).sockets


def read_ss_sockets(netns: str | None = None) -> list[TcpSocket]:
    """Fallback: run ``ss -tinpeHOa`` and parse its text (slower, same records)."""
    from hangproof.doctor.ss_text import parse_ss

    argv = ["ss", "-tinpeHOa"]
    result = run_tool(argv, netns=netns, timeout=30)
    return [rec.socket for rec in parse_ss(result.stdout)]


@dataclass
class OwnerScan:
    """Who holds which socket inode, and how much of /proc we could not read."""

    owners: dict[int, list[ProcessRef]] = field(default_factory=dict)
    unreadable_pids: int = 0
    scanned_pids: int = 0


def map_owners(
    inodes: Iterable[int], *, pids: Iterable[int] | None = None, proc: str = "/proc"
) -> OwnerScan:
    """Map socket inodes to the processes holding them, via ``/proc/PID/fd``.

    Processes exiting during the scan are normal and skipped. Without root,
    other users' fd tables are unreadable; they are counted, not fatal.
    """
    wanted = {i for i in inodes if i}
    scan = OwnerScan()
    if not wanted:
        return scan
    names: dict[int, str] = {}
    pid_list = list(pids) if pids is not None else [int(p) for p in os.listdir(proc) if p.isdigit()]
    for pid in pid_list:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            scan.unreadable_pids += 1
            continue
        except OSError:
            continue  # the process exited
        scan.scanned_pids += 1
        denied = False
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except PermissionError:
                # The directory was listable (DAC_READ_SEARCH) but its links pass
                # the kernel's ptrace check (CAP_SYS_PTRACE for another uid).
                denied = True
                break
            except OSError:
                continue
            if not target.startswith("socket:["):
                continue
            inode = int(target[8:-1])
            if inode not in wanted:
                continue
            if pid not in names:
                names[pid] = process_name(pid, proc=proc) or "?"
            scan.owners.setdefault(inode, []).append(ProcessRef(pid, names[pid], int(fd)))
        if denied:
            scan.unreadable_pids += 1
            scan.scanned_pids -= 1
    return scan


def process_name(pid: int, *, proc: str = "/proc") -> str | None:
    """The process's ``comm`` (what prctl PR_SET_NAME sets, what ss shows); None if gone."""
    try:
        with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def process_cmdline(pid: int, *, proc: str = "/proc") -> list[str] | None:
    """The process's argv; None if it is gone or unreadable."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def same_netns(pid: int, netns: str | None, *, proc: str = "/proc") -> bool:
    """Whether ``pid`` lives in ``netns`` (a path), or in ours when ``netns`` is None."""
    target = netns or "/proc/self/ns/net"
    try:
        return os.stat(f"{proc}/{pid}/ns/net").st_ino == os.stat(target).st_ino
    except OSError:
        return False


def run_tool(
    argv: list[str], *, netns: str | None = None, timeout: float = 15
) -> subprocess.CompletedProcess[str]:
    """Run a read-only tool, inside ``netns`` (via nsenter) if given, with a hard timeout."""
    from hangproof.errors import tool_path

    full = [tool_path(argv[0]), *argv[1:]]
    if netns is not None:
        full = [tool_path("nsenter"), f"--net={netns}", "--", *full]
    return subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
