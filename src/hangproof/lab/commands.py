"""``hangproof lab ...`` and ``hangproof demo``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from hangproof.errors import EXIT_FINDING, EXIT_OK, HangproofError, require_root
from hangproof.lab.clients.race_client import CLIENTS
from hangproof.lab.components.kube_proxy import MODE_DESCRIPTIONS, MODES
from hangproof.lab.engine.lab import Lab, stderr_progress
from hangproof.lab.engine.topology import Topology
from hangproof.lab.mitigations import MITIGATIONS

lab_app = typer.Typer(
    help="Build the report's system in network namespaces and break it on demand (root).",
    no_args_is_help=True,
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Topology YAML (default: the seed's 3-node system).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON on stdout; progress stays on stderr.")]
NameOpt = Annotated[str, typer.Option("--name", help="Lab name (prefix of its namespaces).")]
ReportOpt = Annotated[
    Path | None,
    typer.Option(
        "--report",
        help="Write the timeline (HTML + PNG + event log) here; default: under the lab's state "
        "directory (reports/...), or none with HANGPROOF_REPORT=0.",
    ),
]


def _report_dir(given: Path | None, lab_directory: Path, what: str) -> Path | None:
    from hangproof.lab.observe.timeline import default_report_dir, report_enabled

    if given is not None:
        return given
    return default_report_dir(lab_directory, what) if report_enabled() else None


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


ClusterOpt = Annotated[
    bool,
    typer.Option(
        "--cluster",
        help="RabbitMQ on every node's pod, joined into one cluster (~25 s on 2 cores).",
    ),
]


def _with_cluster(topo: Topology, cluster: bool) -> Topology:
    if not cluster:
        return topo
    return dataclasses.replace(topo, brokers=tuple(n.name for n in topo.nodes)).validated()


@lab_app.command("up")
def up(
    config: ConfigOpt = None,
    cluster: ClusterOpt = False,
    name: NameOpt = "hplab",
    json_out: JsonOpt = False,
    kube_proxy_mode: Annotated[
        str | None,
        typer.Option(
            "--kube-proxy-mode",
            help="Rules of which kube-proxy: "
            + "; ".join(f"{m}: {d}" for m, d in MODE_DESCRIPTIONS.items())
            + ". Default: the topology's (iptables-holder). Recorded in the lab's state.",
        ),
    ] = None,
) -> int:
    """Create namespaces, kube-proxy rules, port holders and RabbitMQ."""
    topo = Topology.load(config) if config else Topology.seed(name)
    if kube_proxy_mode is not None:
        if kube_proxy_mode not in MODE_DESCRIPTIONS:
            raise HangproofError(
                f"--kube-proxy-mode: {kube_proxy_mode!r} is not one of {', '.join(MODES)}"
            )
        topo = dataclasses.replace(topo, kube_proxy=kube_proxy_mode).validated()
    lab = Lab(_with_cluster(topo, cluster), stderr_progress())
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
    from hangproof.lab.engine.lab import teardown
    from hangproof.lab.engine.state import LabState
    from hangproof.lab.engine.topology import check_lab_name

    check_lab_name(name)  # before root: `--name cni` is refused in one line anywhere
    require_root("hangproof lab down")
    progress = stderr_progress()
    state = None if all_labs else LabState.load(name)
    if all_labs:
        removed = Lab.down_all(progress)
    elif state is not None and not state.topology:  # a fault bed's state
        removed = teardown(state, progress)
    else:
        removed = Lab(_topology_of(name), progress).down()
    if json_out:
        _emit_json({"removed_namespaces": removed})
    else:
        typer.echo(f"removed {len(removed)} namespace(s)" if removed else "nothing to remove")
    return EXIT_OK


def _topology_of(name: str) -> Topology:
    from hangproof.lab.engine.state import LabState

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
    cluster = st.get("cluster")
    if cluster:
        running = set(cluster["running"])
        typer.echo(f"  rabbitmq cluster ({len(running)}/{len(cluster['members'])} running):")
        for member in cluster["members"]:
            typer.echo(f"    {member:24} {'running' if member in running else 'STOPPED'}")
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
    report: ReportOpt = None,
    name: NameOpt = "hplab",
    json_out: JsonOpt = False,
) -> int:
    """Reproduce the seed's hang: the VIP lands on the client's node mid-SYN."""
    from hangproof.lab.observe.story import race_story, repeat_summary
    from hangproof.lab.scenarios.race import run_race

    require_root("hangproof lab race")
    if repeat < 1 or repeat > 1000:
        raise HangproofError("--repeat must be between 1 and 1000")
    if keep and repeat > 1:
        raise HangproofError(
            "--keep leaves the client wedged, so it cannot be combined with --repeat"
        )
    lab = Lab.existing(name, stderr_progress("race"))
    report_dir = _report_dir(report, lab.state.directory, "race")
    results = []
    for i in range(repeat):
        timeline = _race_timeline(client, mitigation)
        results.append(
            run_race(
                lab,
                client=client,
                mitigation=mitigation,
                window=window,
                keep=keep,
                timeline=timeline,
            )
        )
        if report_dir is not None:
            from hangproof.lab.observe.timeline import write_report

            where = report_dir if repeat == 1 else report_dir / f"race-{i + 1}"
            results[-1]["report"] = write_report(timeline, where, lab.progress)
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


def _race_timeline(client: str, mitigation: str) -> Any:
    from hangproof.report.events import EventLog

    return EventLog(
        title=f"lab race: client {client}, mitigation {mitigation}",
        scenario="race",
        t0=0.0,
        meta={"client": client, "mitigation": mitigation, "t0_label": "the VIP was placed"},
    )


@lab_app.command("run")
def run(
    scenario: Annotated[
        str, typer.Argument(help="Scenario name: seed-loop, fault-matrix or prometheus-alerts.")
    ],
    profile: Annotated[
        str,
        typer.Option(
            help="Client profile: seed, stock, gevent or harden (see celery_app.PROFILES)."
        ),
    ] = "seed",
    celery_config: Annotated[
        str | None,
        typer.Option("--celery-config", help="Your Celery settings, module:object (importable)."),
    ] = None,
    cycles: Annotated[int, typer.Option(help="Stop after N cycles.")] = 20,
    max_seconds: Annotated[
        float | None,
        typer.Option(
            help="Stop after S seconds (default 600; seed-loop 1800: the literal waiter's only bound)."
        ),
    ] = None,
    mitigation: Annotated[str, typer.Option(help=f"One of: {', '.join(MITIGATIONS)}.")] = "none",
    wait: Annotated[
        float, typer.Option(help="Seconds every worker gets to answer ping each cycle.")
    ] = 45.0,
    trigger: Annotated[
        str,
        typer.Option(
            help="seed-loop: none: the report's loop unchanged (default); reconnect: an "
            "injected trigger, not in the report: the brokers close every client connection "
            "as each node's server starts, so the workers reconnect while no node holds the VIP; "
            "node-down: the node the VIP leaves also stops answering on its NodePort for a cycle."
        ),
    ] = "none",
    rate: Annotated[float, typer.Option(help="Tasks published per second.")] = 5.0,
    supervise: Annotated[
        bool,
        typer.Option(
            "--supervise/--no-supervise",
            help="Restart workers whose process exited, as Kubernetes or systemd would "
            "(a wedged worker is alive, so it is never restarted).",
        ),
    ] = True,
    faults: Annotated[
        str | None,
        typer.Option(
            help="fault-matrix: comma-separated faults (default: all); "
            "prometheus-alerts: testbed (default) or vip-race."
        ),
    ] = None,
    profiles: Annotated[
        str | None,
        typer.Option(help="fault-matrix: comma-separated client profiles (default: all)."),
    ] = None,
    stall_timeout: Annotated[
        float | None,
        typer.Option("--stall-timeout", help="fault-matrix: the guard's stall_timeout (15)."),
    ] = None,
    hang_bound: Annotated[
        float | None,
        typer.Option("--hang-bound", help="fault-matrix: seconds after heal before HANG (300)."),
    ] = None,
    time_scale: Annotated[
        float | None,
        typer.Option(
            "--time-scale",
            help="prometheus-alerts: multiply every alert's for: and window (lab override; "
            "1 = the shipped rules).",
        ),
    ] = None,
    tls: Annotated[
        bool,
        typer.Option("--tls", help="fault-matrix: every client over TLS (amqps://, lab CA)."),
    ] = False,
    hold: Annotated[
        float | None,
        typer.Option(help="fault-matrix: seconds each held fault lasts (default: per fault)."),
    ] = None,
    serial: Annotated[
        bool,
        typer.Option(
            "--serial", help="fault-matrix: one cell at a time (no injection shared by profiles)."
        ),
    ] = False,
    subset: Annotated[
        str | None,
        typer.Option(help="fault-matrix: a documented set of cells (ci: 3 faults x 4 profiles)."),
    ] = None,
    group_size: Annotated[
        int | None,
        typer.Option("--group-size", help="fault-matrix: profiles per shared injection (all)."),
    ] = None,
    publish_docs: Annotated[
        Path | None,
        typer.Option(
            "--publish-docs",
            help="fault-matrix: also write DIR/fault-matrix-run.json (raw) and .md (from it).",
        ),
    ] = None,
    waiter: Annotated[
        str,
        typer.Option(
            help="seed-loop: literal: the report's wait_celery, a fresh `celery inspect ping` "
            "every ~4 s through VIP:NodePort with no bound (default), every client watched "
            "for the wedge; observer: a bounded ping from the broker's pod (--wait)."
        ),
    ] = "literal",
    waiter_node: Annotated[
        str | None,
        typer.Option("--waiter-node", help="seed-loop: the node the literal waiter runs on (n1)."),
    ] = None,
    urls: Annotated[
        str,
        typer.Option(
            help="seed-loop: the workers' broker URLs: vip (VIP:NodePort) or nodes (every "
            "node's address:NodePort as failover URLs, no VIP)."
        ),
    ] = "vip",
    name: NameOpt = "hplab",
    report: ReportOpt = None,
    json_out: JsonOpt = False,
) -> int:
    """Run a scenario (seed-loop brings up a clustered lab if none is up)."""
    from hangproof.lab.scenarios import RunOptions, run_scenario, scenario_module, scenario_summary

    require_root("hangproof lab run")
    module = scenario_module(scenario)  # unknown names fail before anything starts
    progress = stderr_progress(scenario)
    lab: Lab | None = None
    if getattr(module, "NEEDS_LAB", True):
        lab = _shared_lab(name, progress)
    from hangproof.lab.engine.state import state_root

    report_dir = _report_dir(report, lab.state.directory if lab else state_root(), scenario)
    options = RunOptions(
        profile=profile,
        celery_config=celery_config,
        mitigation=mitigation,
        cycles=cycles,
        max_seconds=max_seconds
        if max_seconds is not None
        else float(getattr(module, "DEFAULT_MAX_SECONDS", 600.0)),
        extra={
            "wait_seconds": wait,
            "trigger": trigger,
            "rate": rate,
            "supervise": supervise,
            "faults": faults,
            "profiles": profiles,
            "stall_timeout": stall_timeout,
            "hang_bound": hang_bound,
            "time_scale": time_scale,
            "tls": tls,
            "hold": hold,
            "serial": serial,
            "subset": subset,
            "group_size": group_size,
            "publish_docs": publish_docs,
            "urls": urls,
            "progress": lambda cell: progress(
                f"cell {cell.fault} x {cell.profile}: {cell.resume_s}"
            ),
            "report": report_dir,
            "waiter": waiter,
            "waiter_node": waiter_node,
        },
    )
    result = run_scenario(scenario, lab, options)
    if json_out:
        _emit_json(result)
    else:
        typer.echo(scenario_summary(scenario, result))
    return EXIT_FINDING if result.get("outcome") not in (None, "survived", "passed") else EXIT_OK


def _shared_lab(name: str, progress: Any) -> Lab:
    """The lab called ``name``; brought up with a RabbitMQ cluster if it is not up."""
    from hangproof.lab.engine.state import LabState

    state = LabState.load(name)
    if state is None or not state.topology:
        progress(f"lab {name} is not up: bringing it up with a RabbitMQ cluster")
        lab = Lab(_with_cluster(Topology.seed(name), True), progress)
        lab.up()
        return lab
    return Lab.existing(name, progress)


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")
    from hangproof.lab.scenarios.demo import demo

    app.command("demo")(demo)
