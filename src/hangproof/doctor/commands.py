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
from typing import Annotated

import typer

from hangproof.errors import EXIT_FINDING, EXIT_OK, HangproofError

#: A watch interval below this would make the DaemonSet a load generator.
MIN_WATCH_SECONDS = 1.0


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
        int | None, typer.Option(help="Serve Prometheus metrics on this port (with --watch).")
    ] = None,
    stacks: Annotated[
        bool, typer.Option(help="Read wedged clients' Python stacks with py-spy.")
    ] = True,
    use_ss: Annotated[
        bool, typer.Option("--ss", help="Read sockets by parsing `ss` instead of netlink.")
    ] = False,
) -> int:
    """Find wedged AMQP connections and the NodePort/VIP race hazard on this host. Read-only."""
    from hangproof.doctor.report import render_findings, render_footer
    from hangproof.doctor.scan import ScanRequest, run_scan

    if min_silence < 0:
        raise HangproofError("--min-silence must be >= 0")
    if watch is not None and watch < MIN_WATCH_SECONDS:
        raise HangproofError(f"--watch must be at least {MIN_WATCH_SECONDS:g} s")
    if count is not None and count < 1:
        raise HangproofError("--count must be at least 1")
    if (count is not None or metrics_port is not None) and watch is None:
        raise HangproofError("--count and --metrics-port go with --watch S")
    request = ScanRequest(
        netns=netns,
        pid=pid,
        min_silence=min_silence,
        heartbeat=heartbeat,
        stacks=stacks,
        use_ss=use_ss,
    )
    metrics = None
    if metrics_port is not None:
        from hangproof.doctor.metrics import DoctorMetrics

        metrics = DoctorMetrics()
        try:
            metrics.serve(metrics_port)
        except OSError as exc:
            raise HangproofError(f"cannot serve metrics on port {metrics_port}: {exc}") from exc
        print(f"serving Prometheus metrics on :{metrics_port}/metrics", file=sys.stderr)

    scans = 1 if watch is None else count
    exit_code = EXIT_OK
    done = 0
    while scans is None or done < scans:
        started = time.monotonic()
        try:
            report = run_scan(request)
        except HangproofError:
            if metrics is None or done == 0:
                raise  # a first-scan error is a usage/environment error: exit 2
            metrics.errors.inc()
            print("hangproof doctor: scan failed; retrying", file=sys.stderr)
        else:
            if metrics is not None:
                metrics.update(
                    report.findings, scanned=len(report.view.sockets), seconds=report.seconds
                )
            if json_output:
                print(json.dumps(report.as_dict(), indent=None if watch else 2), flush=True)
            else:
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
            exit_code = EXIT_FINDING if report.has_problem else EXIT_OK
        done += 1
        if watch is not None and (scans is None or done < scans):
            time.sleep(max(0.0, watch - (time.monotonic() - started)))
    return exit_code
