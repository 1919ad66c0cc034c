"""``hangproof doctor``: is something on this host wedged right now, and why?

    $ sudo hangproof doctor --netns hplab-n1 --min-silence 1
    CRITICAL handshake-unanswered: pid 812 (python) 198.18.0.1:40312 -> 198.18.0.100:32672, ...

Exit 0 when healthy, 1 when a finding of severity warning or worse exists, 2 on
usage or environment errors (ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from hangproof.errors import EXIT_FINDING, EXIT_OK, HangproofError

#: A watch interval below this would make the DaemonSet a load generator.
MIN_WATCH_SECONDS = 1.0
#: --metrics-host when not given: every interface, as before the option existed.
#: The endpoints expose only counts by finding kind and scan ages (no addresses,
#: pids or credentials); the DaemonSet still binds the node's own IP.
DEFAULT_METRICS_HOST = "0.0.0.0"


def register(app: typer.Typer) -> None:
    """Add ``doctor`` to the ``hangproof`` app."""
    app.command("doctor")(doctor)


def doctor(
    netns: Annotated[
        str | None, typer.Option(help="Inspect this network namespace (as in `ip netns list`).")
    ] = None,
    pid: Annotated[
        int | None,
        typer.Option(help="Only this process's connections (its namespace is entered if needed)."),
    ] = None,
    min_silence: Annotated[
        float, typer.Option(help="Seconds without an answer before a handshake counts as wedged.")
    ] = 5.0,
    heartbeat: Annotated[
        float, typer.Option(help="Heartbeat assumed for broker connections (RabbitMQ: 60 s).")
    ] = 60.0,
    json_output: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    watch: Annotated[
        float | None, typer.Option(help="Re-scan every S seconds (for a DaemonSet).")
    ] = None,
    count: Annotated[
        int | None, typer.Option(help="With --watch: stop after N scans (default: until stopped).")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve /metrics and /healthz (liveness) on this port (with --watch)."),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            help=(
                "Address for --metrics-port (default 0.0.0.0, every interface). In a "
                "hostNetwork pod pass the node's IP (status.hostIP) so only it is exposed."
            )
        ),
    ] = None,
    stacks: Annotated[
        bool, typer.Option(help="Read wedged clients' Python stacks with py-spy.")
    ] = True,
    use_ss: Annotated[
        bool, typer.Option("--ss", help="Read sockets by parsing `ss` instead of netlink.")
    ] = False,
) -> int:
    """Find wedged AMQP connections and the NodePort/VIP race hazard on this host. Read-only."""
    from hangproof.doctor import scan as doctor_scan
    from hangproof.doctor.scan import ScanRequest

    run_scan = doctor_scan.run_scan  # looked up per call, so tests can fake a failing scan

    if min_silence < 0:
        raise HangproofError("--min-silence must be >= 0")
    if watch is not None and watch < MIN_WATCH_SECONDS:
        raise HangproofError(f"--watch must be at least {MIN_WATCH_SECONDS:g} s")
    if count is not None and count < 1:
        raise HangproofError("--count must be at least 1")
    if (count is not None or metrics_port is not None) and watch is None:
        raise HangproofError("--count and --metrics-port go with --watch S")
    if metrics_host is not None and metrics_port is None:
        raise HangproofError("--metrics-host goes with --metrics-port PORT (and --watch S)")
    request = ScanRequest(
        netns=netns,
        pid=pid,
        min_silence=min_silence,
        heartbeat=heartbeat,
        stacks=stacks,
        use_ss=use_ss,
    )
    metrics = None
    server = None
    if metrics_port is not None:
        from hangproof.doctor.metrics import DoctorMetrics

        assert watch is not None
        host = metrics_host or DEFAULT_METRICS_HOST
        metrics = DoctorMetrics()
        try:
            server = metrics.serve(metrics_port, host, watch=watch)
        except OSError as exc:
            raise HangproofError(
                f"cannot serve metrics on {host}:{metrics_port}: {exc.strerror or exc}"
            ) from exc
        print(
            f"serving Prometheus metrics on {host}:{metrics_port}/metrics, liveness on /healthz",
            file=sys.stderr,
        )

    scans = 1 if watch is None else count
    exit_code = EXIT_OK
    done = 0
    try:
        while scans is None or done < scans:
            started = time.monotonic()
            try:
                report = run_scan(request)
            except HangproofError:
                if done == 0:
                    raise  # a first-scan error is a usage/environment error: exit 2
                report = degraded_report(request, "scan", sys.exc_info()[1])
            except Exception as exc:
                # Whatever a tool or the kernel did, the watch loop goes on and
                # says so: a finding about doctor itself, never a dead DaemonSet.
                report = degraded_report(request, "scan", exc)
            if metrics is not None:
                if any(f.evidence.get("tool") == "scan" for f in report.findings):
                    metrics.errors.inc()
                metrics.update(
                    report.findings, scanned=len(report.view.sockets), seconds=report.seconds
                )
            _print_report(report, json_output=json_output, watch=watch)
            exit_code = EXIT_FINDING if report.has_problem else EXIT_OK
            done += 1
            if watch is not None and (scans is None or done < scans):
                time.sleep(max(0.0, watch - (time.monotonic() - started)))
    finally:
        if server is not None:
            server.close()
    return exit_code


def degraded_report(request: Any, tool: str, exc: BaseException | None) -> Any:
    """A report for a scan that raised: only the ``doctor-degraded`` finding about it."""
    from hangproof.credentials import mask_url
    from hangproof.doctor.model import HostView, ToolFailure
    from hangproof.doctor.rules import diagnose
    from hangproof.doctor.scan import ScanReport

    error = mask_url(f"{type(exc).__name__}: {exc}")
    view = HostView([], netns=request.netns, tool_failures=[ToolFailure(tool, error)])
    view.could_not_see.append(f"the whole scan failed: {error}")
    return ScanReport(diagnose(view), view, 0.0)


def _print_report(report: Any, *, json_output: bool, watch: float | None) -> None:
    from hangproof.doctor.report import render_findings, render_footer

    if report.view.partial_dump:
        # One line, whatever the output format: the findings may be incomplete.
        print(
            "hangproof doctor: warning: partial socket dump from the kernel; "
            "findings may be incomplete (see doctor-degraded)",
            file=sys.stderr,
            flush=True,
        )
    if json_output:
        print(json.dumps(report.as_dict(), indent=None if watch else 2), flush=True)
        return
    if watch is not None:
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    print(render_findings(report.findings), end="", flush=True)
    print(
        render_footer(
            len(report.view.sockets),
            report.seconds,
            report.view.netns,
            report.view.could_not_see,
        ),
        end="",
        file=sys.stderr,
        flush=True,
    )
