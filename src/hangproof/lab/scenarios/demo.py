"""``hangproof demo``: the seed incident reproduced, diagnosed by doctor, each fix proven."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from hangproof.errors import EXIT_FINDING, EXIT_OK, require_root
from hangproof.lab.engine import processes
from hangproof.lab.engine.lab import Lab, stderr_progress
from hangproof.lab.engine.topology import Topology
from hangproof.lab.mitigations import MITIGATIONS
from hangproof.lab.observe.story import race_story

#: doctor's silence threshold in the demo: the wedge is seconds old when we look.
DEMO_MIN_SILENCE = 2.0


def demo(
    json_out: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    keep_lab: Annotated[
        bool, typer.Option("--keep-lab", help="Leave the lab up afterwards.")
    ] = False,
) -> int:
    """Bring the lab up, reproduce the hang, diagnose it, prove each mitigation, clean up."""
    from hangproof.lab.scenarios.race import run_race

    require_root("hangproof demo")
    progress = stderr_progress("demo")
    lab = Lab(Topology.seed(), progress)
    results = []
    diagnosis: dict[str, Any] | None = None
    try:
        lab.up()
        progress("race with no mitigation; the wedged client is kept for doctor")
        seed = run_race(lab, client="raw", mitigation="none", keep=True)
        try:
            diagnosis = _diagnose(lab, seed["client_node"], progress)
        finally:
            _release(lab, seed)
        results.append(seed)
        for mitigation in MITIGATIONS[1:]:
            progress(f"race with mitigation: {mitigation}")
            results.append(run_race(lab, client="raw", mitigation=mitigation))
    finally:
        if not keep_lab:
            lab.down()
    seed, fixes = results[0], results[1:]
    found = {f["kind"] for f in (diagnosis or {}).get("findings", [])}
    ok = (
        seed["outcome"] == "hang"
        and "handshake-unanswered" in found
        and all(r["outcome"] in ("connected", "reset") for r in fixes)
    )
    if json_out:
        print(
            json.dumps(
                {
                    "reproduced": seed["outcome"] == "hang",
                    "diagnosed": sorted(found),
                    "mitigations_work": ok,
                    "races": results,
                    "doctor": diagnosis,
                },
                indent=2,
            )
        )
        return EXIT_OK if ok else EXIT_FINDING
    typer.echo("The seed incident, reproduced in network namespaces:\n")
    typer.echo(race_story(seed, lab.topo))
    if diagnosis is not None:
        typer.echo(
            f"\n`hangproof doctor --netns {lab.topo.ns(seed['client_node'])}` "
            "while the client was wedged:\n"
        )
        typer.echo(diagnosis["text"].rstrip())
    typer.echo("\nThe same race with each fix deployed:\n")
    typer.echo(f"  {'mitigation':18} {'outcome':10} {'connect s':>9}  {'dnat':5}  peer unread")
    for r in results:
        ev = r["evidence"]
        connect = r["connect_seconds"] if r["connect_seconds"] is not None else "-"
        dnat = (ev.get("conntrack") or {}).get("dnat", "-")
        unread = (ev.get("peer_socket") or {}).get("unread_bytes", "-")
        typer.echo(f"  {r['mitigation']:18} {r['outcome']:10} {connect!s:>9}  {dnat!s:5}  {unread}")
    typer.echo(
        "\n"
        + (
            "Reproduced, diagnosed, and every mitigation turns the hang into connected or reset."
            if ok
            else "UNEXPECTED: see the outcomes above."
        )
    )
    return EXIT_OK if ok else EXIT_FINDING


def _diagnose(lab: Lab, node: str, progress: Any) -> dict[str, Any]:
    """Run doctor on the client's node namespace, read-only, while the wedge is live."""
    from hangproof.doctor.report import render_findings
    from hangproof.doctor.scan import ScanRequest, run_scan

    progress(f"doctor --netns {lab.topo.ns(node)}")
    report = run_scan(ScanRequest(netns=lab.topo.ns(node), min_silence=DEMO_MIN_SILENCE))
    return {**report.as_dict(), "text": render_findings(report.findings)}


def _release(lab: Lab, race: dict[str, Any]) -> None:
    """Stop the kept client by its pid and put the lab back as the race found it."""
    from hangproof.lab.scenarios.race import reset_after_race

    pid = race.get("client_pid")
    if pid:
        processes.stop_pid(pid, grace=2.0)
        lab.state.untrack(pid)
    reset_after_race(lab, race["client_node"])
