"""``hangproof probe URL``: the front end of :mod:`hangproof.probe`.

    $ hangproof probe amqp://guest:guest@127.0.0.1:1/
    $ hangproof probe amqp://guest:guest@vip:32672/ --json --repeat 20 --interval 2
    $ hangproof probe --url-file /etc/hangproof/broker-url     # or: ... | hangproof probe --url-file -
    $ HANGPROOF_URL=amqp://... hangproof probe --json

JSON goes to stdout, progress to stderr (ARCHITECTURE.md). Exit 0 when every
run is ``ok``, 1 when any run found a fault, 2 for usage errors (raised as
:class:`~hangproof.errors.HangproofError`, printed as one line by ``cli.main``).
Passwords are masked wherever a URL is echoed (:mod:`hangproof.credentials`).
The URL can stay off argv, which every local user can read in /proc:
``--url-file PATH`` (``-`` for stdin) or ``$HANGPROOF_URL``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from hangproof.errors import EXIT_FINDING, EXIT_OK, HangproofError
from hangproof.failure import VERDICT_HINTS, Verdict
from hangproof.probe import (
    DEFAULT_TIMEOUT,
    ProbeResult,
    mask_url,
    parse_amqp_url,
    probe,
    summarize,
)

#: --repeat is for catching intermittent faults by hand, not for load: cap it.
MAX_REPEAT = 100_000
#: The longest --interval we accept (one hour); a longer one is surely a typo.
MAX_INTERVAL = 3600.0
#: Where the URL comes from when neither the argument nor --url-file gives it.
URL_ENV = "HANGPROOF_URL"
#: A URL file holds one URL; anything this big is the wrong file.
MAX_URL_FILE_BYTES = 64 * 1024


def register(app: typer.Typer) -> None:
    """Add ``hangproof probe`` to the app."""

    @app.command("probe")
    def probe_command(
        url: str | None = typer.Argument(
            None,
            help=(
                "Broker URL, e.g. amqp://user:pass@host:5672/vhost (amqps:// for TLS). "
                f"Any local user can read argv; prefer --url-file or ${URL_ENV}."
            ),
            show_default=False,
        ),
        url_file: str | None = typer.Option(
            None,
            "--url-file",
            help="Read the URL from this file (first line that is not # or blank); - for stdin.",
        ),
        timeout: float = typer.Option(
            DEFAULT_TIMEOUT, "--timeout", "-t", help="Total deadline for one probe, seconds."
        ),
        json_output: bool = typer.Option(False, "--json", help="JSON on stdout."),
        repeat: int = typer.Option(
            1, "--repeat", "-n", help="Probe N times (intermittent faults)."
        ),
        interval: float = typer.Option(1.0, "--interval", help="Seconds between repeated probes."),
        insecure: bool = typer.Option(
            False, "--insecure", help="amqps: do not verify the server certificate."
        ),
    ) -> None:
        """Does this broker address really speak AMQP, and where does it stall?

        A staged AMQP 0-9-1 handshake (DNS, TCP, TLS, header, Start .. Open-Ok,
        Close) under one total deadline. Exit 0 ok, 1 fault, 2 usage. The
        URL comes from the argument, else --url-file, else $HANGPROOF_URL.
        """
        url = resolve_url(url, url_file)
        parse_amqp_url(url)  # a bad URL is a usage error before anything runs
        if not 0 < timeout <= MAX_INTERVAL:
            raise HangproofError(f"--timeout must be in (0, {MAX_INTERVAL:.0f}] s, got {timeout}")
        if not 1 <= repeat <= MAX_REPEAT:
            raise HangproofError(f"--repeat must be in [1, {MAX_REPEAT}], got {repeat}")
        if not 0 <= interval <= MAX_INTERVAL:
            raise HangproofError(f"--interval must be in [0, {MAX_INTERVAL:.0f}] s, got {interval}")
        err = Console(stderr=True, highlight=False)
        if repeat == 1:
            if not json_output:
                err.print(f"probing {mask_url(url)} (deadline {timeout:g} s) ...", style="dim")
            result = probe(url, timeout, tls_verify=not insecure)
            if json_output:
                _print_json(result.to_dict())
            else:
                _print_human(Console(highlight=False), result)
            raise typer.Exit(EXIT_OK if result.ok else EXIT_FINDING)
        results = _repeat(url, timeout, repeat, interval, not insecure, err)
        if json_output:
            _print_json(repeat_document(results))
        else:
            _print_summary(Console(highlight=False), results)
        raise typer.Exit(EXIT_OK if all(r.ok for r in results) else EXIT_FINDING)


def resolve_url(
    url: str | None, url_file: str | None, environ: Mapping[str, str] | None = None
) -> str:
    """The broker URL from argv, else ``--url-file`` (``-`` is stdin), else ``$HANGPROOF_URL``.

    argv is world-readable in ``/proc/PID/cmdline``, so SRE tooling passes
    secrets through a file or the environment (``/proc/PID/environ`` is
    private to the user). Given both on the command line is a usage error.

    >>> resolve_url(None, None, {"HANGPROOF_URL": " amqp://h/ "})
    'amqp://h/'
    """
    environ = os.environ if environ is None else environ
    if url is not None and url_file is not None:
        raise HangproofError(
            "give the broker URL once: as the argument or with --url-file, not both"
        )
    if url is not None:
        return url
    if url_file is not None:
        return _read_url_file(url_file)
    from_env = environ.get(URL_ENV, "").strip()
    if from_env:
        return from_env
    raise HangproofError(
        f"no broker URL: give it with --url-file PATH (- for stdin), in ${URL_ENV}, "
        "or as the argument (which every local user can read in /proc)"
    )


def _read_url_file(path: str) -> str:
    where = "stdin" if path == "-" else path
    try:
        if path == "-":
            text = sys.stdin.read(MAX_URL_FILE_BYTES + 1)
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_URL_FILE_BYTES + 1)
    except OSError as exc:
        raise HangproofError(f"cannot read --url-file {where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise HangproofError(f"--url-file {where} is not UTF-8 text") from None
    if len(text) > MAX_URL_FILE_BYTES:
        raise HangproofError(
            f"--url-file {where} is larger than {MAX_URL_FILE_BYTES} bytes; put only the URL in it"
        )
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise HangproofError(f"--url-file {where} holds no URL (only blank or # lines)")


def repeat_document(results: list[ProbeResult]) -> dict[str, Any]:
    """The ``--repeat --json`` document.

    ``verdict``, ``hint`` and ``stages`` (the contract keys) describe the most
    frequent fault, or ``ok`` when every run was ok; ``runs`` has every result
    and ``summary`` the verdict counts.
    """
    summary = summarize(results)
    faults = [r for r in results if not r.ok]
    if faults:
        worst = max(summary.items(), key=lambda kv: (kv[0] != Verdict.OK, kv[1]))[0]
        example = next(r for r in faults if r.verdict == worst)
    else:
        example = results[-1]
    return {
        "url": results[-1].url,
        "verdict": str(example.verdict),
        "hint": VERDICT_HINTS[example.verdict],
        "stages": [s.to_dict() for s in example.stages],
        "count": len(results),
        "summary": summary,
        "runs": [r.to_dict() for r in results],
    }


def _repeat(
    url: str, timeout: float, repeat: int, interval: float, verify: bool, err: Console
) -> list[ProbeResult]:
    results: list[ProbeResult] = []
    for n in range(1, repeat + 1):
        result = probe(url, timeout, tls_verify=verify)
        results.append(result)
        err.print(
            f"run {n}/{repeat}: {result.verdict} in {result.seconds:.3f} s"
            + (f" ({result.detail})" if not result.ok and result.detail else "")
        )
        if n < repeat:
            time.sleep(interval)
    return results


def _print_json(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def _print_human(out: Console, result: ProbeResult) -> None:
    out.print(f"probe {result.url}", markup=False)
    table = Table(show_edge=False)
    table.add_column("stage")
    table.add_column("ms", justify="right")
    table.add_column("", justify="left")
    for stage in result.stages:
        table.add_row(
            stage.stage,
            f"{stage.seconds * 1000:.1f}",
            "[green]ok[/]" if stage.ok else "[red]failed[/]",
        )
    out.print(table)
    color = "green" if result.ok else "red"
    out.print(f"verdict: [bold {color}]{result.verdict}[/] after {result.seconds:.3f} s")
    out.print(f"hint:    {result.hint}")
    if result.detail:
        out.print(f"detail:  {result.detail}", markup=False)
    extras = []
    if result.address:
        extras.append(f"address {result.address}")
    if result.tune:
        extras.append(f"server heartbeat {result.tune['heartbeat']} s")
    if result.heartbeats_received:
        extras.append(f"{result.heartbeats_received} heartbeat(s) received")
    if extras:
        out.print("         " + ", ".join(extras), markup=False)


def _print_summary(out: Console, results: list[ProbeResult]) -> None:
    out.print(f"probe {results[-1].url}: {len(results)} runs", markup=False)
    table = Table(show_edge=False)
    table.add_column("verdict")
    table.add_column("runs", justify="right")
    table.add_column("max s", justify="right")
    table.add_column("hint")
    for verdict, count in summarize(results).items():
        times = [r.seconds for r in results if r.verdict == verdict]
        table.add_row(verdict, str(count), f"{max(times):.3f}", VERDICT_HINTS[Verdict(verdict)])
    out.print(table)
