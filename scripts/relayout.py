"""Lay the flat lab out as rooms: engine, components, beds, faults, mitigations,
scenarios, observe, clients (issue 11, part 5). An idempotent codemod.

    python scripts/relayout.py --dry-run   # print the map and what would change
    python scripts/relayout.py             # git mv + rewrite every reference

Why a script and not a hand-made commit: five other branches change the lab at
the same time. Re-running this on a newer main replays the moves exactly, and
whatever those branches added (a module this map does not name) stays where it
is and is reported, so nothing is moved by guess.

What it does, in order:

1. refuses to run on a dirty tree (``git status --porcelain`` not empty), so the
   result is one reviewable change;
2. ``git mv`` each module of :data:`MOVES` whose old file exists and whose new
   one does not (both existing is an error: someone re-created the old file);
3. creates each room's ``__init__.py`` with its docstring, if missing;
4. rewrites, in every tracked text file under :data:`REWRITE_ROOTS`, the
   dotted (``hangproof.lab.network``) and slashed (``hangproof/lab/network.py``)
   names of moved modules, ``from hangproof.lab import network, processes``
   statements (split per new room) and relative ``:mod:`.testbed``` references;
5. sorts imports and formats the touched Python files with the worktree's ruff.

Run it twice: the second run finds nothing to move and nothing to rewrite.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "src" / "hangproof" / "lab"

#: Old dotted path under hangproof.lab -> new one. The engine is the only code
#: that starts, signals or deletes anything (processes by pid, namespaces by the
#: state file); everything else asks it.
MOVES: dict[str, str] = {
    # engine: a Topology turned into namespaces, and back, by pid and state file
    "topology": "engine.topology",
    "network": "engine.network",
    "state": "engine.state",
    "processes": "engine.processes",
    "lab": "engine.lab",
    # components: the emulated or real pieces of the seed's system
    "kube_proxy": "components.kube_proxy",
    "keepalived": "components.keepalived",
    "rabbitmq": "components.rabbitmq",
    "cookie": "components.cookie",
    "tls": "components.tls",
    "hooks": "components.hooks",
    "dns_server": "components.dns_server",
    # beds: the topologies faults run on
    "faults.testbed": "beds.testbed",
    "faults.seed_bed": "beds.seed_bed",
    "faults.cluster_bed": "beds.cluster_bed",
    # mitigations: a package of its own (same dotted name)
    "mitigations": "mitigations",
    # scenarios: experiments run by `hangproof lab run/race`, `hangproof demo`
    "race": "scenarios.race",
    "demo": "scenarios.demo",
    "fault_matrix_docs": "scenarios.fault_matrix_docs",
    "kube_proxy_docs": "scenarios.kube_proxy_docs",
    "seed_loop_docs": "scenarios.seed_loop_docs",
    # observe: what the lab reads (ss, counters, conntrack) and tells
    "evidence": "observe.evidence",
    "timeline": "observe.timeline",
    "story": "observe.story",
    "literal_waiter": "observe.literal_waiter",
    # clients: the AMQP programs the lab runs inside its namespaces
    # alerts_app and matrix_celery (and hangproof.guard.sample_app) have since
    # become this one app (issue 11 item 5): a replay reports them as unknown.
    "celery_app": "clients.celery_app",
    "accounting": "clients.accounting",
    "workers": "clients.workers",
    "race_client": "clients.race_client",
    "matrix_clients": "clients.matrix_clients",
    "call_probe": "clients.call_probe",
    "delay_loop": "clients.delay_loop",
}

#: Modules that stay where they are on purpose (not reported as unknown).
STAYS = {"__init__", "commands", "faults", "scenarios"}

#: The fault and scenario modules of the main this map was made on: they stay in
#: faults/ and scenarios/. A module added there since is reported (a new bed in
#: faults/ may belong in beds/: add it to MOVES).
KNOWN_STAYING = {
    *(
        f"faults.{m}"
        for m in (
            "blackhole broker_down_at_call broker_freeze broker_kill broker_reject_at_call "
            "broker_view client_freeze cluster_partition connection_closed consumer_timeout "
            "disk_alarm dns_stall flow_state flow_state_expiry flow_state_rst "
            "heal_after_half_open heartbeat_only_handshake memory_alarm one_way_loss "
            "one_way_loss_in one_way_loss_out queue_deleted silent_flow_loss url_failover "
            "vip_failover vip_race"
        ).split()
    ),
    *(f"scenarios.{m}" for m in "fault_calls fault_matrix prometheus_alerts seed_loop".split()),
}

ROOMS: dict[str, str] = {
    "engine": (
        "The lab engine: a Topology turned into namespaces, veths and processes, and back.\n\n"
        "The only code that starts, signals or deletes anything: processes by pid\n"
        "(:mod:`.processes`), namespaces and links from the state file (:mod:`.state`,\n"
        ":mod:`.network`), a whole lab by :class:`.lab.Lab`."
    ),
    "components": (
        "The seed's pieces as the lab runs them: kube-proxy's rules and port holder,\n"
        "keepalived, RabbitMQ (cookie, TLS), the SYN hook counters, a DNS responder."
    ),
    "beds": ("The beds faults run on: the two-namespace testbed, the seed lab, the cluster."),
    "observe": (
        "What the lab reads and tells: ss evidence, connection timelines, race stories,\n"
        "the report's literal wait_celery loop and its wedge watch."
    ),
    "clients": (
        "The AMQP programs the lab runs in its namespaces: the sample Celery apps and\n"
        "their workers, the ledger, the race clients, the matrix clients, the call probe."
    ),
    "mitigations": "",
}

#: Folders and files whose text names module paths.
REWRITE_ROOTS = (
    "src",
    "tests",
    "benchmarks",
    "scripts",
    "docs",
    "README.md",
    "pyproject.toml",
    "Makefile",
)
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".sh", ".yaml", ".yml", ""}
SELF = Path(__file__).resolve()


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def old_path(dotted: str) -> Path:
    return LAB.joinpath(*dotted.split(".")).with_suffix(".py")


def new_path(dotted: str) -> Path:
    if dotted in ROOMS:  # a module that becomes its room's __init__
        return LAB / dotted / "__init__.py"
    return LAB.joinpath(*dotted.split(".")).with_suffix(".py")


def plan_moves() -> tuple[list[tuple[Path, Path]], list[str]]:
    """The git mv's still to do, and errors (both old and new exist)."""
    todo, errors = [], []
    for old, new in MOVES.items():
        src, dst = old_path(old), new_path(new)
        if src.exists() and dst.exists():
            errors.append(f"both {src.relative_to(ROOT)} and {dst.relative_to(ROOT)} exist")
        elif src.exists():
            todo.append((src, dst))
    return todo, errors


def unknown_modules() -> list[str]:
    """Lab modules this map does not know: they stay where they are, and are reported."""
    known = set(MOVES) | set(MOVES.values()) | set(ROOMS) | STAYS | KNOWN_STAYING
    unknown = []
    for path in sorted(LAB.rglob("*.py")):
        dotted = ".".join(path.relative_to(LAB).with_suffix("").parts).removesuffix(".__init__")
        if dotted not in known:
            unknown.append(dotted)
    return unknown


def dotted_patterns() -> list[tuple[re.Pattern[str], str]]:
    out = []
    # longest first, so "faults.testbed" is not read as "faults"
    for old, new in sorted(MOVES.items(), key=lambda kv: -len(kv[0])):
        if old == new:
            continue
        esc = re.escape(old)
        out.append((re.compile(rf"\bhangproof\.lab\.{esc}(?![\w])"), f"hangproof.lab.{new}"))
        slashed = re.escape(old.replace(".", "/"))
        out.append(
            (
                re.compile(rf"\bhangproof/lab/{slashed}\.py\b"),
                f"hangproof/lab/{new.replace('.', '/')}.py",
            )
        )
    return out


FROM_IMPORT = re.compile(
    r"^(?P<indent>[ \t]*)from hangproof\.lab(?P<pkg>(?:\.faults)?) import "
    r"(?P<names>\([^)]*\)|[^\n]*)$",
    re.M,
)


def rewrite_from_imports(text: str) -> str:
    """``from hangproof.lab import network, processes`` -> one line per new room."""

    def repl(m: re.Match[str]) -> str:
        pkg = m["pkg"].lstrip(".")
        names_src = m["names"]
        if "#" in names_src:
            return m[0]  # a commented import list: leave it for a human
        names = [n.strip() for n in names_src.strip("()").replace("\n", " ").split(",")]
        names = [n for n in names if n]
        groups: dict[str, list[str]] = {}
        for entry in names:
            name = entry.split(" as ")[0].strip()
            old = f"{pkg}.{name}" if pkg else name
            new = MOVES.get(old)
            if new is None or new == old:
                groups.setdefault(pkg, []).append(entry)
            else:
                parent, _, leaf = new.rpartition(".")
                alias = entry.split(" as ")[1].strip() if " as " in entry else None
                if leaf != name:
                    alias = alias or name
                groups.setdefault(parent, []).append(f"{leaf} as {alias}" if alias else leaf)
        if list(groups) == [pkg]:
            return m[0]
        lines = []
        for parent, entries in groups.items():
            mod = "hangproof.lab" + (f".{parent}" if parent else "")
            lines.append(f"{m['indent']}from {mod} import {', '.join(entries)}")
        return "\n".join(lines)

    return FROM_IMPORT.sub(repl, text)


def rewrite_relative_mods(text: str, path: Path) -> str:
    """``:mod:`.testbed``` in the faults package names a bed that moved out."""
    try:
        pkg_parts = path.relative_to(LAB).parent.parts
    except ValueError:
        return text
    pkg = ".".join(pkg_parts)
    for old, new in MOVES.items():
        parent, _, leaf = old.rpartition(".")
        if parent == pkg and parent and old != new:
            text = re.sub(rf"`\.{re.escape(leaf)}(?![\w])", f"`hangproof.lab.{new}", text)
    return text


def rewrite(text: str, path: Path) -> str:
    text = rewrite_from_imports(text)
    for pattern, new in dotted_patterns():
        text = pattern.sub(new, text)
    return rewrite_relative_mods(text, path)


def candidate_files() -> list[Path]:
    files = git("ls-files", "--", *REWRITE_ROOTS).splitlines()
    out = []
    for name in files:
        path = ROOT / name
        if path.resolve() == SELF or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or path.name == "Makefile":
            out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the map and the changes only")
    args = ap.parse_args(argv)

    print("map (hangproof.lab.OLD -> hangproof.lab.NEW):")
    for old, new in MOVES.items():
        state = (
            "moved"
            if not old_path(old).exists() and new_path(new).exists()
            else ("to move" if old_path(old).exists() else "absent")
        )
        print(f"  {old:20} -> {new:32} [{state}]")
    todo, errors = plan_moves()
    if errors:
        for e in errors:
            print(f"relayout: {e}", file=sys.stderr)
        return 2
    for name in unknown_modules():
        print(f"  unknown module, left where it is: hangproof.lab.{name}")

    if not args.dry_run and git("status", "--porcelain", "--untracked-files=no").strip():
        print(
            "relayout: the tree has uncommitted changes; commit or stash them first",
            file=sys.stderr,
        )
        return 2

    for src, dst in todo:
        print(f"git mv {src.relative_to(ROOT)} {dst.relative_to(ROOT)}")
        if not args.dry_run:
            dst.parent.mkdir(parents=True, exist_ok=True)
            git("mv", str(src), str(dst))
    for room, doc in ROOMS.items():
        init = LAB / room / "__init__.py"
        if doc and not init.exists() and (args.dry_run is False):
            init.parent.mkdir(parents=True, exist_ok=True)
            init.write_text(f'"""{doc}"""\n')
            git("add", str(init))
            print(f"created {init.relative_to(ROOT)}")

    changed: list[Path] = []
    for path in candidate_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        new = rewrite(text, path)
        if new != text:
            changed.append(path)
            print(f"rewrite {path.relative_to(ROOT)}")
            if not args.dry_run:
                path.write_text(new)
    ruff = ROOT / ".venv" / "bin" / "ruff"
    py = [str(p) for p in changed if p.suffix == ".py"]
    if py and not args.dry_run and ruff.exists():
        subprocess.run(
            [str(ruff), "check", "-q", "--select", "I", "--fix", *py], cwd=ROOT, check=False
        )
        subprocess.run([str(ruff), "format", "-q", *py], cwd=ROOT, check=False)
    print(
        f"{len(todo)} moves, {len(changed)} files rewritten"
        + (" (dry run: nothing written)" if args.dry_run else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
