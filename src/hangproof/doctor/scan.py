"""Adapter: gather one :class:`HostView` from the live host, then diagnose it.

Read-only: netlink dumps, /proc, ``conntrack -L``, ``iptables-save``,
``ip -j addr``, keepalived's files and ``py-spy dump``. Every external command
has a hard timeout; anything we cannot read becomes a ``could_not_see`` line.

>>> report = run_scan(ScanRequest(netns="hpdoc-x", min_silence=1))  # doctest: +SKIP
>>> [f.kind for f in report.findings]  # doctest: +SKIP
['handshake-unanswered', 'nodeport-vip-race-hazard']
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from hangproof.credentials import mask_url
from hangproof.doctor import sockets as live
from hangproof.doctor.conntrack import parse_conntrack
from hangproof.doctor.model import Finding, FloatingAddress, HostView, ToolFailure
from hangproof.doctor.netfilter import (
    floating_from_ip_addr,
    flushes_conntrack,
    merge_gates,
    parse_iptables_save,
    parse_keepalived,
    parse_nft_ruleset,
)
from hangproof.doctor.rules import HANDSHAKE_UNANSWERED, RuleSettings, diagnose
from hangproof.errors import HangproofError, MissingToolError
from hangproof.failure import Severity

#: py-spy attaches with ptrace and walks the stack; a wedged target can make it
#: slow, never make the doctor hang.
PY_SPY_TIMEOUT = 8.0
#: All py-spy reads of one scan together: many wedged clients must not hold the
#: scan (and with it doctor's liveness) for minutes.
STACKS_BUDGET = 30.0
#: Each read-only tool (conntrack, iptables-save, ip) gets this long.
TOOL_TIMEOUT = 15.0
KEEPALIVED_DEFAULT_CONF = "/etc/keepalived/keepalived.conf"


@dataclass(frozen=True)
class ScanRequest:
    """What to scan: a named namespace, a process, or this host's namespace."""

    netns: str | None = None
    pid: int | None = None
    min_silence: float = 5.0
    heartbeat: float = 60.0
    stacks: bool = True
    use_ss: bool = False


@dataclass
class ScanReport:
    """Findings plus what the scan covered, for ``--json`` and the human text."""

    findings: list[Finding]
    view: HostView
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document (ARCHITECTURE.md: ``findings`` is a list)."""
        return {
            "findings": [f.as_dict() for f in self.findings],
            "netns": self.view.netns,
            "scanned_sockets": len(self.view.sockets),
            "seconds": round(self.seconds, 4),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "could_not_see": list(self.view.could_not_see),
            "partial_dump": self.view.partial_dump,
        }

    @property
    def has_problem(self) -> bool:
        """A warning or worse was found: exit 1."""
        return any(f.is_problem for f in self.findings)


def _netns_for(request: ScanRequest) -> str | None:
    if request.netns:
        return live.netns_path(request.netns)
    if request.pid is not None:
        path = f"/proc/{request.pid}/ns/net"
        if not os.path.isdir(f"/proc/{request.pid}"):
            raise HangproofError(f"no process {request.pid}")
        try:
            os.stat(path)
        except OSError as exc:
            raise HangproofError(
                f"cannot read the network namespace of process {request.pid} ({exc.strerror}): "
                "run as root, or pass --netns"
            ) from exc
        # Only switch when the process lives elsewhere; same namespace needs no setns.
        return None if live.same_netns(request.pid, None) else path
    return None


def collect(request: ScanRequest, timings: dict[str, float] | None = None) -> HostView:
    """Read sockets, owners, conntrack, iptables and floating addresses."""
    timings = timings if timings is not None else {}
    netns = _netns_for(request)
    if netns is not None and os.geteuid() != 0:
        raise HangproofError(
            "entering another network namespace needs root: run `sudo hangproof doctor ...`"
        )
    view = HostView(sockets=[], netns=request.netns or netns)
    t = time.perf_counter()
    if request.use_ss:
        view.sockets = _ss_sockets(netns, view)
    else:
        try:
            dump = live.read_tcp_dump(netns)
        except (OSError, live.NetlinkDumpError) as exc:
            # Some sandboxes forbid NETLINK_SOCK_DIAG; ss may still work there.
            view.could_not_see.append(f"netlink inet_diag ({exc}); fell back to `ss`")
            view.sockets = _ss_sockets(netns, view)
        else:
            view.sockets = dump.sockets
            if dump.partial:
                _partial_dump(view, dump)
    timings["sockets"] = time.perf_counter() - t

    t = time.perf_counter()
    owner_scan = live.map_owners(s.inode for s in view.sockets if s.inode)
    view.owners = owner_scan.owners
    timings["owners"] = time.perf_counter() - t
    if owner_scan.unreadable_pids:
        view.could_not_see.append(
            f"socket owners of {owner_scan.unreadable_pids} processes of other users "
            "(/proc/PID/fd is private): run as root to name them (in a container: "
            "CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE)"
        )
    t = time.perf_counter()
    view.conntrack = _read_conntrack(netns, view)
    view.node_port_gate = merge_gates(_read_iptables(netns, view), _read_nft(netns, view))
    view.floating = _read_floating(netns, view, request.netns is not None)
    timings["netfilter"] = time.perf_counter() - t
    return view


def _partial_dump(view: HostView, dump: live.TcpDump) -> None:
    view.partial_dump = True
    if not dump.complete:
        why = f"cut off after {live.MAX_RECVS} reads without NLMSG_DONE"
    else:
        why = "interrupted (NLM_F_DUMP_INTR): the socket table changed during the dump"
    error = f"partial socket dump, {why}; {len(dump.sockets)} sockets read, some may be missing"
    view.tool_failures.append(ToolFailure("netlink inet_diag", error))
    view.could_not_see.append(f"netlink inet_diag: {error}")


def _ss_sockets(netns: str | None, view: HostView) -> list:
    """``ss`` as the socket source; a hung or missing ss is a tool failure, not a crash."""
    try:
        return live.read_ss_sockets(netns)
    except MissingToolError as exc:
        _tool_failed(view, "ss", "TCP sockets", str(exc), Severity.INFO)
    except subprocess.TimeoutExpired as exc:
        _tool_failed(view, "ss", "TCP sockets", f"timed out after {exc.timeout:g} s")
    except (OSError, ValueError) as exc:
        _tool_failed(view, "ss", "TCP sockets", f"{type(exc).__name__}: {exc}")
    return []


def _tool_failed(
    view: HostView, tool: str, what: str, error: str, severity: Severity = Severity.WARNING
) -> None:
    error = mask_url(error)
    view.tool_failures.append(ToolFailure(tool, error, severity))
    view.could_not_see.append(f"{what}: `{tool}` {error}")


def _tool_output(argv: list[str], netns: str | None, view: HostView, what: str) -> str | None:
    tool = argv[0]
    try:
        result = live.run_tool(argv, netns=netns, timeout=TOOL_TIMEOUT)
    except MissingToolError as exc:
        _tool_failed(view, tool, what, str(exc), Severity.INFO)
        return None
    except subprocess.TimeoutExpired:
        _tool_failed(view, tool, what, f"timed out after {TOOL_TIMEOUT:g} s (did not answer)")
        return None
    except OSError as exc:  # exists but cannot run (permissions, a broken image)
        _tool_failed(view, tool, what, f"{type(exc).__name__}: {exc}")
        return None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["failed"])[-1]
        hint = " (needs root / CAP_NET_ADMIN)" if os.geteuid() != 0 else ""
        _tool_failed(view, tool, what, f"exit {result.returncode}: {reason}{hint}", Severity.INFO)
        return None
    return result.stdout


def _read_conntrack(netns: str | None, view: HostView) -> list | None:
    text = _tool_output(
        ["conntrack", "-L", "-p", "tcp", "-o", "extended"], netns, view, "conntrack entries (dnat)"
    )
    return None if text is None else parse_conntrack(text)


def _read_iptables(netns: str | None, view: HostView):  # -> NodePortGate | None
    text = _tool_output(["iptables-save"], netns, view, "iptables rules (kube-proxy NodePorts)")
    return None if text is None else parse_iptables_save(text)


def _read_nft(netns: str | None, view: HostView):  # -> NodePortGate | None
    """kube-proxy's nftables-mode rules (``nft -j list ruleset``); absent nft is no failure.

    Hosts without the nft tool have no nftables-mode kube-proxy to read (it
    needs the kernel's nf_tables, not the tool), so that is a could-not-see
    line, not a degraded scan.
    """
    from hangproof.errors import _which

    if _which("nft") is None:
        view.could_not_see.append(
            "nftables rules: `nft` is not installed, so kube-proxy's nftables mode was not read"
        )
        return None
    text = _tool_output(
        ["nft", "-j", "list", "ruleset"], netns, view, "nftables rules (kube-proxy nftables mode)"
    )
    if not text:
        return None
    try:
        return parse_nft_ruleset(text)
    except ValueError:
        view.could_not_see.append("nftables rules: `nft -j list ruleset` printed no JSON")
        return None


def _read_floating(netns: str | None, view: HostView, named_netns: bool) -> list[FloatingAddress]:
    out: list[FloatingAddress] = []
    text = _tool_output(["ip", "-j", "addr", "show"], netns, view, "interface addresses")
    held: set[str] = set()
    if text:
        try:
            out = floating_from_ip_addr(text)
        except ValueError:
            view.could_not_see.append("interface addresses: `ip -j addr` printed no JSON")
        held = {f.address for f in out}
    for path, conf_text, root in _keepalived_configs(netns, named_netns):
        conf = parse_keepalived(conf_text)
        flush = any(flushes_conntrack(notify_command_text(cmd, root)) for cmd in conf.notify_master)
        for vip in conf.vips:
            existing = next((f for f in out if f.address == vip), None)
            if existing is not None:
                out[out.index(existing)] = FloatingAddress(
                    vip, f"{existing.source}; keepalived {path}", True, flush
                )
            else:
                out.append(FloatingAddress(vip, f"keepalived {path}", vip in held, flush))
    return out


def _keepalived_configs(netns: str | None, named_netns: bool) -> list[tuple[str, str, str]]:
    """keepalived configs in force here, as (path, text, root): running keepalived's
    ``-f`` files read through ``/proc/PID/root``, and the default in our own root ("")."""
    paths: dict[str, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if live.process_name(pid) != "keepalived" or not live.same_netns(pid, netns):
            continue
        argv = live.process_cmdline(pid) or []
        conf = KEEPALIVED_DEFAULT_CONF
        for i, arg in enumerate(argv):
            if arg in ("-f", "--use-file") and i + 1 < len(argv):
                conf = argv[i + 1]
            elif arg.startswith("--use-file="):
                conf = arg.split("=", 1)[1]
        # Read through keepalived's own root and cwd: in a DaemonSet (hostPID) the
        # host's files are not in our mount namespace, but /proc/PID/root reaches them.
        root = f"/proc/{pid}/root"
        path = f"{root}{conf}" if conf.startswith("/") else f"/proc/{pid}/cwd/{conf}"
        paths.setdefault(path, root)
    if not named_netns:
        paths.setdefault(KEEPALIVED_DEFAULT_CONF, "")
    out = []
    for path, root in paths.items():
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                out.append((path, f.read(1 << 20), root))
        except OSError:
            continue
    return out


def notify_command_text(command: str, root: str) -> str:
    """A notify_master command plus the script it runs, read under ``root``.

    Mitigation 1 (``conntrack -D -d VIP``) usually lives inside the script, and
    the script lives in keepalived's mount namespace: ``root`` is keepalived's
    ``/proc/PID/root`` ("" for doctor's own). An absolute symlink inside that
    tree resolves against doctor's root, so such a script is missed, not misread.

    >>> notify_command_text("/nonexistent/notify.sh MASTER", "")
    '/nonexistent/notify.sh MASTER'
    """
    script = command.split()[0] if command.split() else ""
    path = f"{root}{script}"
    if script.startswith("/") and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return command + "\n" + f.read(1 << 16)
        except OSError:
            pass
    return command


def python_stack(pid: int) -> str | None:
    """The thread stacks of a Python process via ``py-spy dump`` (native frames if possible).

    Returns None when py-spy is missing, the process is not Python, or ptrace
    is not allowed. The header line with the command line is dropped: argv can
    carry broker credentials.
    """
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if py_spy is None:
        return None
    for extra in (["--native"], []):
        try:
            result = subprocess.run(
                [py_spy, "dump", "--pid", str(pid), *extra],
                capture_output=True,
                text=True,
                timeout=PY_SPY_TIMEOUT,
                check=False,
            )
        except (subprocess.TimeoutExpired, OSError):
            continue
        if result.returncode == 0:
            cleaned = clean_py_spy_dump(result.stdout)
            if cleaned is not None:
                return cleaned
    return None


def clean_py_spy_dump(text: str) -> str | None:
    r"""The thread stacks of a ``py-spy dump``, or None if it holds none.

    The header (``Process PID: argv``) is dropped, and URL passwords anywhere
    are masked: argv, thread names and frames can carry broker credentials.

    >>> clean_py_spy_dump("Process 1: celery -b amqp://u:pw@h//\nThread 1 (idle)\n  f (a.py:1)")
    'Thread 1 (idle)\n  f (a.py:1)'
    """
    if "Thread" not in text:
        return None
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Thread")), 0)
    return mask_url("\n".join(lines[start:]).strip())


def run_scan(request: ScanRequest) -> ScanReport:
    """Collect, diagnose, and add Python stacks to wedged clients."""
    start = time.perf_counter()
    timings: dict[str, float] = {}
    view = collect(request, timings)
    t = time.perf_counter()
    settings = RuleSettings(
        min_silence=request.min_silence, pid=request.pid, heartbeat=request.heartbeat
    )
    findings = diagnose(view, settings)
    timings["rules"] = time.perf_counter() - t
    if request.stacks:
        t = time.perf_counter()
        stacks: dict[int, str | None] = {}
        budget_left = True
        for finding in findings:
            if finding.kind == HANDSHAKE_UNANSWERED and finding.pid is not None:
                if finding.pid not in stacks:
                    if time.perf_counter() - t > STACKS_BUDGET:
                        budget_left = False
                        continue
                    stacks[finding.pid] = python_stack(finding.pid)
                finding.evidence["python_stack"] = stacks[finding.pid]
        if not budget_left:
            view.could_not_see.append(
                f"Python stacks of some clients: py-spy's budget of {STACKS_BUDGET:g} s "
                "per scan ran out"
            )
        if stacks and not any(stacks.values()):
            view.could_not_see.append(
                "Python stacks: py-spy could not read the client (not Python, py-spy "
                "missing, or ptrace not allowed: needs root or CAP_SYS_PTRACE)"
            )
        timings["stacks"] = time.perf_counter() - t
    return ScanReport(findings, view, time.perf_counter() - start, timings)
