"""``hangproof lab ...`` and ``hangproof demo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from hangproof.errors import EXIT_FINDING, EXIT_OK, HangproofError, require_root
from hangproof.lab.lab import Lab, stderr_progress
from hangproof.lab.mitigations import MITIGATIONS
from hangproof.lab.race_client import CLIENTS
from hangproof.lab.topology import Topology

lab_app = typer.Typer(
    help="Build the report's system in network namespaces and break it on demand (root).",
    no_args_is_help=True,
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Topology YAML (default: the seed's 3-node system).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON on stdout; progress stays on stderr.")]
NameOpt = Annotated[str, typer.Option("--name", help="Lab name (prefix of its namespaces).")]


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


@lab_app.command("up")
def up(config: ConfigOpt = None, json_out: JsonOpt = False) -> int:
    """Create namespaces, kube-proxy rules, port holders and RabbitMQ."""
    topo = Topology.load(config) if config else Topology.seed()
    lab = Lab(topo, stderr_progress())
    lab.up()
    status = lab.status()
    if json_out:
        _emit_json(status)
    return EXIT_OK


@lab_app.command("down")
def down(
    name: NameOpt = "hplab",
    all_labs: Annotated[
        bool, typer.Option("--all", help="Every lab with a state file, and leftovers.")
    ] = False,
    json_out: JsonOpt = False,
) -> int:
    """Stop what the lab started (by pid) and delete its namespaces. Idempotent."""
    require_root("hangproof lab down")
    progress = stderr_progress()
    if all_labs:
        removed = Lab.down_all(progress)
    else:
        removed = Lab(_topology_of(name), progress).down()
    if json_out:
        _emit_json({"removed_namespaces": removed})
    else:
        typer.echo(f"removed {len(removed)} namespace(s)" if removed else "nothing to remove")
    return EXIT_OK


def _topology_of(name: str) -> Topology:
    from hangproof.lab.state import LabState

    state = LabState.load(name)
    if state and state.topology:
        return Topology.from_dict(state.topology, source=f"state of lab {name}")
    return Topology.seed(name)


@lab_app.command("status")
def status(name: NameOpt = "hplab", json_out: JsonOpt = False) -> int:
    """What exists and runs; exit 1 if the lab is not (fully) up."""
    require_root("hangproof lab status")
    st = Lab(_topology_of(name)).status()
    if json_out:
        _emit_json(st)
    else:
        _print_status(st)
    return EXIT_OK if st.get("up") else EXIT_FINDING


def _print_status(st: dict[str, Any]) -> None:
    if not st.get("up") and "namespaces" not in st:
        typer.echo(
            f"lab {st['lab']} is down"
            + (f"; leftovers: {st['leftovers']}" if st.get("leftovers") else "")
        )
        return
    typer.echo(f"lab {st['lab']}: {'up' if st['up'] else 'DEGRADED'}")
    for ns, ok in st["namespaces"].items():
        typer.echo(f"  namespace {ns:14} {'ok' if ok else 'MISSING'}")
    for p in st["processes"]:
        typer.echo(
            f"  {p['role']:12} {p['node']:4} pid {p['pid']:<8} {'running' if p['alive'] else 'DEAD'}"
        )
    for b in st["brokers"]:
        typer.echo(
            f"  rabbitmq {b['node']:4} {b['address']:20} {'answers AMQP' if b['answers_amqp'] else 'NOT ANSWERING'}"
        )
    typer.echo(f"  VIP held by: {', '.join(st['vip_holders']) or 'nobody'}")


@lab_app.command("race")
def race(
    client: Annotated[str, typer.Option(help=f"One of: {', '.join(CLIENTS)}.")] = "raw",
    mitigation: Annotated[str, typer.Option(help=f"One of: {', '.join(MITIGATIONS)}.")] = "none",
    window: Annotated[
        float | None,
        typer.Option(
            help="Seconds to wait for an answer before calling it a hang (raw: 10, others: 30)."
        ),
    ] = None,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep", help="Leave the wedged client running (for doctor); `lab down` stops it."
        ),
    ] = False,
    repeat: Annotated[int, typer.Option(help="Run the race N times in a row and summarise.")] = 1,
    name: NameOpt = "hplab",
    json_out: JsonOpt = False,
) -> int:
    """Reproduce the seed's hang: the VIP lands on the client's node mid-SYN."""
    from hangproof.lab.race import run_race
    from hangproof.lab.story import race_story, repeat_summary

    require_root("hangproof lab race")
    if repeat < 1 or repeat > 1000:
        raise HangproofError("--repeat must be between 1 and 1000")
    if keep and repeat > 1:
        raise HangproofError(
            "--keep leaves the client wedged, so it cannot be combined with --repeat"
        )
    lab = Lab.existing(name, stderr_progress("race"))
    results = [
        run_race(lab, client=client, mitigation=mitigation, window=window, keep=keep)
        for _ in range(repeat)
    ]
    if repeat == 1:
        if json_out:
            _emit_json(results[0])
        else:
            typer.echo(race_story(results[0], lab.topo))
        return EXIT_FINDING if results[0]["outcome"] == "hang" else EXIT_OK
    summary = repeat_summary(results)
    if json_out:
        _emit_json({"summary": summary, "races": results})
    else:
        typer.echo(json.dumps(summary, indent=2))
    return EXIT_FINDING if summary["outcomes"].get("hang") else EXIT_OK


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")
    from hangproof.lab.demo import demo

    app.command("demo")(demo)
