"""Data -> figure: an :class:`EventLog` or a fault-matrix report -> a Vega-Lite spec.

Pure (no browser, no files): the spec is a dict, so tests check what will be
drawn, where, before any pixel exists. Altair builds it (typed, validated
against the Vega-Lite schema); :mod:`hangproof.report.render` writes it out.

The x axis is seconds since the log's ``t0`` with an explicit domain (no
"nice" rounding), so a time maps to a pixel by plain arithmetic:
``x_px = plot_left + (t - domain[0]) / (domain[1] - domain[0]) * WIDTH``.
The browser test and the PNG test rely on that.

    >>> from hangproof.report.events import EventLog
    >>> log = EventLog(title="t", scenario="race", t0=0.0)
    >>> _ = log.add(1.0, "client raw", "syn", "SYN sent")
    >>> x_domain(log)
    [0.0, 1.5]
"""

from __future__ import annotations

import math
from typing import Any

from hangproof.report.events import KINDS, EventLog

#: Plot width in px (the PNG is drawn at 2x). Wide enough for a 60 s run at 0.1 s resolution.
WIDTH = 960
LANE_HEIGHT = 34
RATE_HEIGHT = 110
#: Colours of the measured markers; distinct from every event colour so the PNG
#: test can find them by colour.
MARKER_COLOURS = {"detect": "#d62728", "resume": "#2ca02c"}
#: Names of the Vega marks (they become CSS classes in the SVG; the browser test finds them).
MARK_NAMES = ("spans", "events", "markers", "marker_labels", "rates")
#: Heatmap: outcomes that are not a time get their own mark and word.
NON_TIME = {"HANG": "#111111", "EXIT": "#7b3294", "ERROR": "#999999"}

#: One fixed colour per event kind, by family, so a kind looks the same in every timeline:
#: VIP greys/teals, fault browns, SYNs blues, handshake purples, detection orange,
#: recovery greens (never the markers' exact red and green), verdicts black.
KIND_COLOURS: dict[str, str] = {
    "vip-held": "#9ecae1", "vip-master": "#17becf", "vip-backup": "#bdbdbd",
    "inject": "#8c564b", "heal": "#c49c94", "fault-held": "#e7cb94",
    "syn": "#1f77b4", "syn-retransmit": "#aec7e8", "estab": "#393b79",
    "header-sent": "#9467bd", "start": "#c5b0d5", "tune": "#7b4173", "open-ok": "#de9ed6",
    "heartbeat": "#bcbd22", "detect": "#ff7f0e", "reconnect": "#98df8a", "ready": "#637939",
    "exit": "#e377c2", "wedged": "#000000", "nat-binding": "#e7969c", "hook": "#636363",
}  # fmt: skip


def x_domain(log: EventLog) -> list[float]:
    """[0, end + 0.5 s] in seconds since ``t0`` (starts earlier if something did)."""
    start = min([0.0] + [log.relative(e.at) for e in log.events])
    end = log.relative(log.end()) + 0.5
    return [round(start, 3), round(end, 3)]


#: Events closer than this on one lane are stacked vertically (px offsets) so none hides another.
CLOSE_PX = 10.0
_STACK = (0, -9, 9, -4, 4, -13, 13)
#: Kinds whose label is written beside the dot (the verdicts a reader looks for first).
LABELLED = frozenset({"wedged", "exit"})


def event_rows(log: EventLog) -> list[dict[str, Any]]:
    """One row per point event: lane, t (s since t0), kind, label, evidence, dy (px)."""
    lo, hi = x_domain(log)
    px = WIDTH / max(hi - lo, 1e-9)
    rows: list[dict[str, Any]] = []
    last: dict[str, tuple[float, int]] = {}
    for e in sorted(log.events, key=lambda e: e.at):
        if e.until is not None:
            continue
        t = log.relative(e.at)
        prev = last.get(e.lane)
        slot = prev[1] + 1 if prev is not None and (t - prev[0]) * px < CLOSE_PX else 0
        last[e.lane] = (t if slot == 0 else prev[0], slot) if prev is not None else (t, 0)
        rows.append(
            {
                "lane": e.lane,
                "t": t,
                "kind": e.kind,
                "what": KINDS[e.kind],
                "label": e.label,
                "text": e.label if e.kind in LABELLED else "",
                "evidence": e.evidence or "(none recorded)",
                "dy": _STACK[slot % len(_STACK)],
            }
        )
    return rows


def span_rows(log: EventLog) -> list[dict[str, Any]]:
    """One row per span (VIP held, fault held): t, t_until; ``text`` only if it fits."""
    lo, hi = x_domain(log)
    rows = []
    for e in sorted(log.events, key=lambda e: e.at):
        if e.until is None:
            continue
        t, until = log.relative(e.at), log.relative(e.until)
        rows.append(
            {
                "lane": e.lane,
                "t": t,
                "t_until": until,
                "kind": e.kind,
                "label": e.label,
                # ~7 px per character at font size 10 on a WIDTH-px axis
                "text": e.label
                if (until - t) / max(hi - lo, 1e-9) * WIDTH > 7 * len(e.label)
                else "",
                "evidence": e.evidence or "(none recorded)",
            }
        )
    return rows


def marker_rows(log: EventLog) -> list[dict[str, Any]]:
    """One row per measured marker: where it starts and ends, and its label."""
    rows = []
    for i, m in enumerate(log.markers):
        rows.append(
            {
                "marker": m.kind,
                "kind": f"time-to-{m.kind}",
                "t_start": log.relative(m.start),
                "t": log.relative(m.at),
                "seconds": m.seconds,
                "label": m.label or f"time-to-{m.kind} {m.seconds:.1f} s",
                # Pixel rows above the lanes (negative y): one per marker, so labels never overlap.
                "label_y": -6 - 16 * i,
                "bar_y": -3 - 16 * i,
            }
        )
    return rows


def rate_rows(log: EventLog) -> list[dict[str, Any]]:
    """Tasks per second, long form (one row per series and second)."""
    rows = []
    for r in log.rates:
        t = log.relative(r.at)
        rows.append({"t": t, "series": "published", "tasks": r.published})
        rows.append({"t": t, "series": "executed", "tasks": r.executed})
    return rows


def timeline_spec(log: EventLog) -> dict[str, Any]:
    """The whole timeline as a Vega-Lite spec (lanes on top, tasks per second below).

    One colour scale for everything on the lanes (events, spans and the two
    measured markers), so the legend is one list and the marker colours are
    fixed (:data:`MARKER_COLOURS`).
    """
    import altair as alt

    lanes = log.lanes()
    domain = x_domain(log)
    x_scale = alt.Scale(domain=domain, nice=False, zero=False)
    x_title = "seconds since " + str(log.meta.get("t0_label", "the start of the run"))
    x = alt.X("t:Q", scale=x_scale, title=x_title)
    y = alt.Y("lane:N", sort=lanes, title=None, scale=alt.Scale(domain=lanes))
    points, spans, markers = event_rows(log), span_rows(log), marker_rows(log)
    kinds = sorted({r["kind"] for r in points} | {r["kind"] for r in spans})
    marker_kinds = [f"time-to-{m}" for m in MARKER_COLOURS]
    colour = alt.Color(
        "kind:N",
        title="event",
        scale=alt.Scale(
            domain=kinds + marker_kinds,
            range=[KIND_COLOURS[k] for k in kinds] + list(MARKER_COLOURS.values()),
        ),
        legend=alt.Legend(columns=2, symbolLimit=0, symbolOpacity=1),
    )
    height = max(1, len(lanes)) * LANE_HEIGHT
    base = alt.Chart().properties(width=WIDTH, height=height)
    layers: list[Any] = []
    if spans:
        layers.append(
            base.mark_bar(height=LANE_HEIGHT * 0.55, opacity=0.35)
            .encode(
                x=x,
                x2="t_until:Q",
                y=y,
                color=colour,
                tooltip=[
                    alt.Tooltip("label:N", title="what"),
                    alt.Tooltip("t:Q", title="from (s)", format=".3f"),
                    alt.Tooltip("t_until:Q", title="until (s)", format=".3f"),
                    alt.Tooltip("evidence:N", title="evidence"),
                ],
            )
            .properties(name="spans", data=alt.Data(values=spans))
        )
        layers.append(
            base.mark_text(align="left", dx=3, fontSize=10, color="#333")
            .encode(x=x, y=y, text="text:N")
            .properties(name="span_labels", data=alt.Data(values=spans))
        )
    layers.append(
        base.mark_circle(
            size=120, opacity=0.9, stroke="white", strokeWidth=1, yOffset=alt.expr("datum.dy")
        )
        .encode(
            x=x,
            y=y,
            color=colour,
            tooltip=[
                alt.Tooltip("label:N", title="what"),
                alt.Tooltip("what:N", title="kind"),
                alt.Tooltip("t:Q", title="t (s)", format=".3f"),
                alt.Tooltip("evidence:N", title="evidence"),
            ],
        )
        .properties(name="events", data=alt.Data(values=points or [{"t": None}]))
    )
    if any(r["text"] for r in points):
        layers.append(
            base.mark_text(align="right", dx=-9, fontSize=11, fontWeight="bold", color="#333")
            .encode(x=x, y=y, text="text:N")
            .properties(name="event_labels", data=alt.Data(values=[r for r in points if r["text"]]))
        )
    if markers:
        mdata = alt.Data(values=markers)
        mtooltip = [
            alt.Tooltip("label:N", title="measured"),
            alt.Tooltip("t_start:Q", title="from (s)", format=".3f"),
            alt.Tooltip("t:Q", title="to (s)", format=".3f"),
        ]
        layers.append(
            alt.Chart(mdata)
            .mark_rule(strokeWidth=2)
            .encode(x=x, color=colour, tooltip=mtooltip)
            .properties(name="markers")
        )
        # The measured interval itself: a bar from its start to the marker, above the lanes.
        layers.append(
            alt.Chart(mdata)
            .mark_rule(strokeWidth=3, strokeDash=[4, 2])
            .encode(
                x=alt.X("t_start:Q", scale=x_scale, title=x_title),
                x2="t:Q",
                y=alt.Y("bar_y:Q", scale=None),
                color=colour,
                tooltip=mtooltip,
            )
            .properties(name="marker_spans")
        )
        layers.append(
            alt.Chart(mdata)
            .mark_text(align="left", dx=4, baseline="bottom", fontWeight="bold")
            .encode(x=x, y=alt.Y("label_y:Q", scale=None), text="label:N", color=colour)
            .properties(name="marker_labels")
        )
    top = alt.layer(*layers)
    charts: list[Any] = [top]
    rates = rate_rows(log)
    if rates:
        rate_chart = (
            alt.Chart(alt.Data(values=rates))
            .mark_line(point=True, interpolate="step-after")
            .encode(
                x=x,
                y=alt.Y("tasks:Q", title="tasks / s"),
                color=alt.Color(
                    "series:N",
                    title="tasks",
                    scale=alt.Scale(domain=["published", "executed"], range=["#6baed6", "#08519c"]),
                ),
                tooltip=["series:N", alt.Tooltip("t:Q", format=".0f"), "tasks:Q"],
            )
            .properties(name="rates", width=WIDTH, height=RATE_HEIGHT)
        )
        charts.append(rate_chart)
    chart = alt.vconcat(*charts, title=alt.Title(log.title, subtitle=_subtitle(log)))
    chart = chart.resolve_scale(x="shared", color="independent").configure_view(stroke="#ddd")
    spec: dict[str, Any] = chart.to_dict()
    return spec


def _subtitle(log: EventLog) -> list[str]:
    parts = []
    if log.outcome:
        parts.append(f"outcome: {log.outcome}")
    for m in log.markers:
        parts.append(f"time-to-{m.kind}: {m.seconds:.1f} s")
    return [" · ".join(parts)] if parts else []


def heatmap_rows(report: dict[str, Any], link: Any = None) -> list[dict[str, Any]]:
    """One row per fault-matrix cell: numeric resume (or None), the word for HANG/EXIT, a link.

    ``link(cell) -> str | None`` gives each cell's timeline (relative URL).

    >>> rows = heatmap_rows({"cells": [{"fault": "f", "profile": "p", "resume_s": "HANG"}]})
    >>> rows[0]["resume"], rows[0]["outcome"], rows[0]["text"]
    (None, 'HANG', 'HANG')
    """
    rows = []
    for c in report.get("cells", []):
        resume = c.get("resume_s")
        numeric = isinstance(resume, int | float) and not isinstance(resume, bool)
        outcome = "resumed" if numeric else str(resume)
        rows.append(
            {
                "fault": c["fault"],
                "profile": c["profile"],
                "resume": float(resume) if numeric else None,
                "outcome": outcome,
                "text": f"{resume:.1f} s" if numeric else outcome,
                "detect": c.get("detect_s"),
                "lost": c.get("lost"),
                "href": link(c) if link else None,
            }
        )
    return rows


def heatmap_spec(report: dict[str, Any], link: Any = None) -> dict[str, Any]:
    """Fault x profile; colour = resume seconds; HANG / EXIT / ERROR as their own marks and words."""
    import altair as alt

    rows = heatmap_rows(report, link)
    faults = sorted({r["fault"] for r in rows})
    profiles = list(dict.fromkeys(r["profile"] for r in rows))
    cell = 56
    base = alt.Chart(alt.Data(values=rows)).properties(
        width=max(1, len(profiles)) * cell * 2, height=max(1, len(faults)) * cell
    )
    x = alt.X("profile:N", sort=profiles, title="client profile", axis=alt.Axis(labelAngle=-30))
    y = alt.Y("fault:N", sort=faults, title="fault")
    tooltip = [
        "fault:N",
        "profile:N",
        alt.Tooltip("text:N", title="resume"),
        alt.Tooltip("detect:Q", title="detect (s)"),
        alt.Tooltip("lost:Q", title="lost"),
        alt.Tooltip("href:N", title="timeline"),
    ]
    top = max([r["resume"] for r in rows if r["resume"] is not None] + [1.0])
    timed = (
        base.mark_rect(stroke="white")
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "resume:Q",
                title="resume (s)",
                scale=alt.Scale(scheme="yelloworangered", domain=[0, math.ceil(top)]),
            ),
            href="href:N",
            tooltip=tooltip,
        )
        .transform_filter("datum.resume != null")
        .properties(name="resumed")
    )
    stuck = (
        base.mark_rect(stroke="white", strokeWidth=2)
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "outcome:N",
                title="no resume",
                scale=alt.Scale(domain=list(NON_TIME), range=list(NON_TIME.values())),
            ),
            href="href:N",
            tooltip=tooltip,
        )
        .transform_filter("datum.resume == null")
        .properties(name="stuck")
    )
    words = (
        base.mark_text(fontWeight="bold")
        .encode(
            x=x,
            y=y,
            text="text:N",
            href="href:N",
            color=alt.condition("datum.resume == null", alt.value("white"), alt.value("black")),
        )
        .properties(name="cell_text")
    )
    chart = alt.layer(timed, stuck, words).resolve_scale(color="independent")
    title = alt.Title(
        "fault matrix: resume time after heal",
        subtitle=[
            f"stall_timeout {report.get('stall_timeout')} s; HANG = not resumed within "
            f"{report.get('hang_bound')} s; EXIT = the worker process died; click a cell for its timeline"
        ],
    )
    spec: dict[str, Any] = chart.properties(title=title).to_dict()
    return spec
