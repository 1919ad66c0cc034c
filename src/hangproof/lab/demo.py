"""``hangproof demo``: the seed incident reproduced, explained, and each fix proven."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from hangproof.errors import EXIT_FINDING, EXIT_OK, require_root
from hangproof.lab.lab import Lab, stderr_progress
from hangproof.lab.mitigations import MITIGATIONS
from hangproof.lab.story import race_story
from hangproof.lab.topology import Topology


def demo(
    json_out: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    keep_lab: Annotated[
        bool, typer.Option("--keep-lab", help="Leave the lab up afterwards.")
    ] = False,
) -> int:
    """Bring the lab up, reproduce the hang, explain it, prove each mitigation, clean up."""
    from hangproof.lab.race import run_race

    require_root("hangproof demo")
    progress = stderr_progress("demo")
    lab = Lab(Topology.seed(), progress)
    results = []
    try:
        lab.up()
        for mitigation in MITIGATIONS:
            progress(f"race with mitigation: {mitigation}")
            results.append(run_race(lab, client="raw", mitigation=mitigation))
    finally:
        if not keep_lab:
            lab.down()
    seed, fixes = results[0], results[1:]
    ok = seed["outcome"] == "hang" and all(r["outcome"] in ("connected", "reset") for r in fixes)
    if json_out:
        print(
            json.dumps(
                {"reproduced": seed["outcome"] == "hang", "mitigations_work": ok, "races": results},
                indent=2,
            )
        )
    else:
        typer.echo("The seed incident, reproduced in network namespaces:\n")
        typer.echo(race_story(seed, lab.topo))
        typer.echo("\nThe same race with each fix deployed:\n")
        typer.echo(f"  {'mitigation':18} {'outcome':10} {'connect s':>9}  {'dnat':5}  peer unread")
        for r in results:
            ev = r["evidence"]
            typer.echo(
                f"  {r['mitigation']:18} {r['outcome']:10} {r['connect_seconds'] if r['connect_seconds'] is not None else '-':>9}  "
                f"{(ev.get('conntrack') or {}).get('dnat', '-')!s:5}  {(ev.get('peer_socket') or {}).get('unread_bytes', '-')}"
            )
        typer.echo(
            "\n"
            + (
                "Reproduced, and every mitigation turns the hang into connected or reset."
                if ok
                else "UNEXPECTED: see the outcomes above."
            )
        )
    return EXIT_OK if ok else EXIT_FINDING
