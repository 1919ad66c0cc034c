"""kube-proxy modes x mitigations, measured in the lab; and the docs table from the raw JSON.

    sudo scripts/labrun .venv/bin/python scripts/kube_proxy_modes.py measure --races 10 \\
        --out docs/data/kube-proxy-modes.json          # root, in a lab slot
    .venv/bin/python scripts/kube_proxy_modes.py docs docs/data/kube-proxy-modes.json \\
        > docs/kube-proxy-modes.md

``measure`` brings a lab up once per mode (``lab up --kube-proxy-mode``), runs
``lab race --repeat N --json`` per mitigation, reads the node's rules
(``iptables-save``, ``nft -j list ruleset``) and runs ``doctor`` on the client
node; then, per mode with no mitigation, a bounded ``lab run seed-loop`` on a
clustered lab. The JSON is rewritten after every step, so a run cut short by
``--until`` still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODES = ("iptables-holder", "iptables", "nftables-all", "nftables-primary")
MITIGATIONS = ("none", "reject-undnat", "conntrack-flush")
HP = [sys.executable, "-m", "hangproof.cli"]
LAB = "hpkpm"


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "HANGPROOF_REPORT": "0"},  # no timelines: JSON only
        )
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(argv, 124, exc.stdout or "", "timeout")


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"error": f"exit {done.returncode}", "stderr": done.stderr[-1500:]}


def _until(stamp: str | None) -> float | None:
    if not stamp:
        return None
    now = datetime.now(UTC)
    hh, mm = (int(x) for x in stamp.split(":"))
    end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    return time.time() + max(0.0, (end - now).total_seconds())


def measure(args: argparse.Namespace) -> int:
    from hangproof.lab.scenarios.fault_matrix import version_set

    out = Path(args.out)
    report: dict[str, Any] = (
        json.loads(out.read_text()) if args.resume and out.exists() else {"races": {}}
    )
    report.setdefault("races", {})
    report.setdefault("seed_loop", {})
    report.setdefault("rules", {})
    report.setdefault("doctor", {})
    report["versions"] = version_set()
    # The netfilter side of the version set (not in version_set: the fault matrix has no nft).
    report["versions"]["kernel"] = os.uname().release
    for tool in ("iptables", "nft"):
        words = _run([tool, "--version"], 10).stdout.split()
        report["versions"][tool] = words[1] if len(words) > 1 else "?"
    report["started"] = report.get("started") or datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    report["command"] = " ".join(["scripts/kube_proxy_modes.py", *sys.argv[1:]])
    report["races_per_cell"] = args.races
    deadline = _until(args.until)
    modes = args.modes.split(",") if args.modes else list(MODES)

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, default=str) + "\n")

    def late() -> bool:
        return deadline is not None and time.time() > deadline

    def say(msg: str) -> None:
        print(f"[kube-proxy-modes {datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)

    if not args.skip_races:
        for mode in modes:
            if late():
                break
            _run([*HP, "lab", "down", "--name", LAB], 300)
            up = _run([*HP, "lab", "up", "--name", LAB, "--kube-proxy-mode", mode], 600)
            if up.returncode != 0:
                report["races"][mode] = {"error": up.stderr[-1500:]}
                save()
                continue
            ns = f"{LAB}-n1"
            report["rules"][mode] = {
                "iptables_save": _run(["ip", "netns", "exec", ns, "iptables-save"], 30).stdout,
                "nft_json": _run(
                    ["ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset"], 30
                ).stdout.strip(),
            }
            report["races"].setdefault(mode, {})
            for mitigation in MITIGATIONS:
                if late():
                    break
                key = mitigation
                if key in report["races"][mode] and args.resume:
                    continue
                say(f"{mode} x {mitigation}: {args.races} races")
                t = time.monotonic()
                done = _run(
                    [
                        *HP,
                        "lab",
                        "race",
                        "--name",
                        LAB,
                        "--mitigation",
                        mitigation,
                        "--repeat",
                        str(args.races),
                        "--window",
                        str(args.window),
                        "--json",
                    ],
                    args.races * (args.window + 40),
                )
                data = _json(done)
                data["seconds"] = round(time.monotonic() - t, 1)
                report["races"][mode][key] = data
                say(f"  -> {data.get('summary', {}).get('outcomes', data.get('error'))}")
                save()
            # doctor on the client node, with the VIP held there (as after a failover)
            _run(
                ["ip", "netns", "exec", ns, "ip", "addr", "add", "198.18.0.100/32", "dev", "eth0"],
                30,
            )
            doc = _run([*HP, "doctor", "--netns", ns, "--json", "--min-silence", "1"], 120)
            report["doctor"][mode] = {"exit": doc.returncode, **_json(doc)}
            _run(
                ["ip", "netns", "exec", ns, "ip", "addr", "del", "198.18.0.100/32", "dev", "eth0"],
                30,
            )
            save()
        _run([*HP, "lab", "down", "--name", LAB], 300)

    mitigated = report.setdefault("seed_loop_mitigated", {})
    cells = [
        (mode, mitigation)
        for mode in (modes if args.seed_loop_cycles > 0 else [])
        for mitigation in args.seed_loop_mitigations.split(",")
    ]
    for mode, mitigation in cells:
        if late():
            break
        # "none": the mode's own row (seed_loop); otherwise seed_loop_mitigated[mode][m].
        into = report["seed_loop"] if mitigation == "none" else mitigated.setdefault(mode, {})
        key = mode if mitigation == "none" else mitigation
        if key in into and args.resume:
            continue
        _run([*HP, "lab", "down", "--name", LAB], 300)
        say(f"{mode} x {mitigation}: seed-loop (cluster), {args.seed_loop_cycles} cycles")
        t = time.monotonic()
        up = _run([*HP, "lab", "up", "--name", LAB, "--cluster", "--kube-proxy-mode", mode], 900)
        if up.returncode != 0:
            into[key] = {"error": up.stderr[-1500:], "mitigation": mitigation}
            save()
            continue
        done = _run(
            [
                *HP,
                "lab",
                "run",
                "seed-loop",
                "--name",
                LAB,
                "--trigger",
                args.trigger,
                "--cycles",
                str(args.seed_loop_cycles),
                "--max-seconds",
                str(args.seed_loop_seconds),
                "--mitigation",
                mitigation,
                "--json",
            ],
            args.seed_loop_seconds + 600,
        )
        data = _json(done)
        data["kube_proxy_mode"] = mode
        data["trigger"] = args.trigger
        data["mitigation"] = mitigation
        data["seconds"] = round(time.monotonic() - t, 1)
        into[key] = data
        say(f"  -> {data.get('outcome', data.get('error'))} after {data.get('cycles')} cycles")
        save()
        _run([*HP, "lab", "down", "--name", LAB], 300)
    report["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    save()
    return 0


def merge(path: Path, other: Path) -> int:
    """Add ``other``'s seed-loop runs to ``path``'s (each mode's runs become a list).

    Mitigated runs (``seed_loop_mitigated``) are taken as they are, per mode
    and mitigation (the newer run of a cell replaces the older).
    """
    report = json.loads(path.read_text())
    extra = json.loads(other.read_text())
    for mode, by_mitigation in (extra.get("seed_loop_mitigated") or {}).items():
        into = report.setdefault("seed_loop_mitigated", {}).setdefault(mode, {})
        for mitigation, run in by_mitigation.items():
            into[mitigation] = {**run, "from": other.name, "versions": extra.get("versions")}
    seeds = report.setdefault("seed_loop", {})
    for mode, run in (extra.get("seed_loop") or {}).items():
        have = seeds.get(mode)
        runs = have if isinstance(have, list) else ([have] if have else [])
        runs.append({**run, "from": other.name, "versions": extra.get("versions")})
        seeds[mode] = runs
    report.setdefault("merged", []).append(extra.get("command"))
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="run the lab measurements (root, under labrun)")
    m.add_argument("--out", default="docs/data/kube-proxy-modes.json")
    m.add_argument("--races", type=int, default=10)
    m.add_argument("--window", type=float, default=6.0)
    m.add_argument("--modes", default=None)
    m.add_argument("--until", default=None, help="HH:MM UTC: start nothing new after it")
    m.add_argument("--seed-loop-cycles", type=int, default=6)
    m.add_argument("--seed-loop-seconds", type=float, default=180.0)
    m.add_argument("--trigger", default="reconnect")
    m.add_argument(
        "--seed-loop-mitigations",
        default="none",
        help="comma-separated, each a seed-loop per mode: none, reject-undnat, conntrack-flush",
    )
    m.add_argument("--skip-races", action="store_true")
    m.add_argument("--resume", action="store_true", help="keep cells already in --out")
    d = sub.add_parser("docs", help="print docs/kube-proxy-modes.md from the raw JSON")
    d.add_argument("json")
    g = sub.add_parser("merge", help="append another measure run's seed-loop runs to a JSON")
    g.add_argument("json")
    g.add_argument("other")
    args = parser.parse_args(argv)
    if args.cmd == "measure":
        return measure(args)
    if args.cmd == "merge":
        return merge(Path(args.json), Path(args.other))
    from hangproof.lab.scenarios.kube_proxy_docs import render_markdown

    print(render_markdown(json.loads(Path(args.json).read_text())), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
