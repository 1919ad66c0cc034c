"""Write a timeline (or the fault-matrix heatmap) as one self-contained HTML file and a PNG.

Why Vega-Lite, through Altair and ``vl-convert-python`` (checked here, offline):

- **offline, one file**: ``vl_convert.javascript_bundle()`` returns Vega,
  Vega-Lite and vega-embed as one script (~0.9 MB), inlined in the page; the page
  loads nothing (the browser test counts requests);
- **PNG with no browser**: ``vl_convert.vegalite_to_png`` renders the same spec
  in-process (Rust, deno_core + resvg), ~0.5 s, so a lab run writes its PNG
  without Chromium;
- **hover**: vega-embed's tooltip handler shows each event's raw evidence.

Plotly needs ~3.5 MB per file and kaleido + a Chrome for PNG; Bokeh needs
selenium and a browser for PNG.

    >>> from hangproof.report.events import EventLog
    >>> log = EventLog(title="t", scenario="race", t0=0.0)
    >>> write_timeline(log, Path("/tmp/hp-report"))  # doctest: +SKIP
    (PosixPath('/tmp/hp-report/timeline.html'), PosixPath('/tmp/hp-report/timeline.png'))
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hangproof.errors import HangproofError
from hangproof.report.events import EventLog
from hangproof.report.figure import heatmap_rows, heatmap_spec, timeline_spec

#: The PNG is drawn at this scale (crisp on a README).
PNG_SCALE = 2.0
INSTALL_HINT = (
    "install the report extra: pip install 'hangproof[report]' (altair, vl-convert-python)"
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
 body {{ font-family: sans-serif; margin: 1em 2em; color: #222; }}
 h1 {{ font-size: 1.3em; margin: 0 0 .2em 0; }}
 .facts {{ color: #555; margin: 0 0 1em 0; }}
 #vis {{ min-height: 200px; }}
 table {{ border-collapse: collapse; font-size: .85em; margin-top: 1em; }}
 td, th {{ border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }}
 td.ev {{ font-family: monospace; white-space: pre-wrap; max-width: 70em; }}
 #vg-tooltip-element td.value {{ font-family: monospace; white-space: pre-wrap; max-width: 60em; }}
</style>
<script>{bundle}</script>
</head>
<body>
<h1>{title}</h1>
<p class="facts">{facts}</p>
<div id="vis"></div>
<details><summary>every event, with its raw evidence</summary>
{table}
</details>
<script type="application/json" id="hangproof-data">{data}</script>
<script>
 const spec = {spec};
 vegaEmbed("#vis", spec, {{renderer: "svg", actions: false,
   tooltip: {{theme: "light", maxDepth: 2}}}})
   .then((result) => {{ window.hangproofView = result.view;
     document.body.setAttribute("data-rendered", "yes"); }})
   .catch((err) => {{ document.body.setAttribute("data-rendered", "error: " + err); }});
</script>
</body>
</html>
"""


def _vl_convert() -> Any:
    try:
        import vl_convert
    except ImportError as exc:
        raise HangproofError(f"the report needs vl-convert-python; {INSTALL_HINT}") from exc
    return vl_convert


def _page(title: str, facts: str, spec: dict[str, Any], table: str, data: Any) -> str:
    vlc = _vl_convert()

    # "</" would end the inline <script> early; JSON allows "<\/".
    def js(value: Any) -> str:
        return json.dumps(value, default=str).replace("</", "<\\/")

    return _PAGE.format(
        title=html.escape(title),
        facts=html.escape(facts),
        bundle=vlc.javascript_bundle(),
        spec=js(spec),
        table=table,
        data=js(data),
    )


def _png(spec: dict[str, Any], path: Path) -> None:
    path.write_bytes(_vl_convert().vegalite_to_png(spec, scale=PNG_SCALE))


def _event_table(log: EventLog) -> str:
    rows = ["<table><tr><th>t (s)</th><th>lane</th><th>event</th><th>evidence</th></tr>"]
    for e in sorted(log.events, key=lambda e: e.at):
        t = f"{log.relative(e.at):.3f}"
        if e.until is not None:
            t += f" – {log.relative(e.until):.3f}"
        rows.append(
            f"<tr><td>{t}</td><td>{html.escape(e.lane)}</td><td>{html.escape(e.label)}</td>"
            f'<td class="ev">{html.escape(e.evidence)}</td></tr>'
        )
    for m in log.markers:
        rows.append(
            f"<tr><td>{log.relative(m.start):.3f} – {log.relative(m.at):.3f}</td><td>measured</td>"
            f"<td>time-to-{m.kind} {m.seconds:.3f} s</td><td class='ev'>{html.escape(m.label)}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def write_timeline(log: EventLog, directory: Path, stem: str = "timeline") -> tuple[Path, Path]:
    """Write ``stem.html`` (self-contained), ``stem.png`` and ``stem.json`` (the event log)."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = timeline_spec(log)
    facts = " · ".join(
        [f"scenario {log.scenario}"]
        + ([f"outcome {log.outcome}"] if log.outcome else [])
        + [f"time-to-{m.kind} {m.seconds:.1f} s" for m in log.markers]
        + [f"{k} {v}" for k, v in log.meta.items() if isinstance(v, str | int | float)][:6]
    )
    html_path, png_path = directory / f"{stem}.html", directory / f"{stem}.png"
    log.save(directory / f"{stem}.json")
    html_path.write_text(_page(log.title, facts, spec, _event_table(log), log.to_dict()))
    _png(spec, png_path)
    return html_path, png_path


def write_heatmap(
    report: dict[str, Any],
    directory: Path,
    link: Callable[[dict[str, Any]], str | None] | None = None,
    stem: str = "fault-matrix",
) -> tuple[Path, Path]:
    """Write the fault-matrix heatmap; ``link(cell)`` gives each cell's timeline URL."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = heatmap_spec(report, link)
    rows = heatmap_rows(report, link)
    table = ["<table><tr><th>fault</th><th>profile</th><th>resume</th><th>timeline</th></tr>"]
    for r in rows:
        href = html.escape(r["href"] or "")
        table.append(
            f"<tr><td>{html.escape(r['fault'])}</td><td>{html.escape(r['profile'])}</td>"
            f"<td>{html.escape(r['text'])}</td>"
            + (f'<td><a href="{href}">timeline</a></td></tr>' if href else "<td></td></tr>")
        )
    table.append("</table>")
    facts = (
        f"{len(rows)} cell(s); stall_timeout {report.get('stall_timeout')} s; "
        f"HANG bound {report.get('hang_bound')} s"
    )
    html_path, png_path = directory / f"{stem}.html", directory / f"{stem}.png"
    html_path.write_text(_page("fault matrix", facts, spec, "\n".join(table), rows))
    _png(spec, png_path)
    return html_path, png_path
