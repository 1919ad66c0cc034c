"""The timeline in a real browser: Debian's headless Chromium, offline, driven over DevTools.

Renders a timeline from an event log recorded by a real ``lab race --client
kombu`` (tests/data/report), opens it from file://, and checks what a reader
sees: the lanes in order, every event dot and both measured markers placed
at their times on the axis (detect before resume), the raw evidence on
hover, a screenshot, and not one network request.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest
from browser import CHROMIUM, Browser

from hangproof.report.events import EventLog
from hangproof.report.figure import event_rows
from hangproof.report.render import write_heatmap, write_timeline

DATA = Path(__file__).parent.parent / "data" / "report"


@pytest.fixture(scope="module")
def browser() -> Browser:
    if not shutil.which(CHROMIUM):
        message = "chromium is not installed (scripts/setup.sh installs Debian's chromium)"
        if os.environ.get("CI") or os.environ.get("HANGPROOF_REQUIRE_LAB"):
            pytest.fail(message)
        pytest.skip(message)
    with Browser() as b:
        yield b


# Positions of the rendered SVG items, read from the page (client px).
GEOMETRY = """
(() => {
  const box = (el) => { const r = el.getBoundingClientRect();
    return {x: r.x + r.width / 2, y: r.y + r.height / 2, w: r.width, h: r.height}; };
  const top = document.querySelector('#vis g.concat_0_group');
  const axes = Array.from(top.querySelectorAll('g.role-axis'));
  // Tick lines, not labels: the first and last label are flushed to the plot's edges.
  const labels = (axis) => {
    const ticks = Array.from(axis.querySelectorAll('g.role-axis-tick line')).map(box);
    return Array.from(axis.querySelectorAll('g.role-axis-label text'))
      .map((t, i) => ({text: t.textContent, ...box(t), tickX: ticks[i] && ticks[i].x,
                       tickY: ticks[i] && ticks[i].y}));
  };
  const all = axes.map(labels);
  const xLabels = all.find((ls) => ls.length && ls.every((l) => !isNaN(parseFloat(l.text))));
  const yLabels = all.find((ls) => ls.length && ls.some((l) => isNaN(parseFloat(l.text))));
  const items = (name) => Array.from(document.querySelectorAll(`#vis g.${name}_marks > *`)).map(box);
  return {xLabels, yLabels, events: items('events'), markers: items('markers'),
          markerLabels: Array.from(document.querySelectorAll('#vis g.marker_labels_marks text'))
              .map((t) => ({text: t.textContent, ...box(t)}))};
})()
"""


def _fit(labels: list[dict[str, float]]) -> tuple[float, float]:
    """px = a + b * seconds, least squares over the x axis's tick labels."""
    ts = [float(label["text"]) for label in labels]
    xs = [label["tickX"] for label in labels]
    n, mt, mx = len(ts), sum(ts) / len(ts), sum(xs) / len(xs)
    b = sum((t - mt) * (x - mx) for t, x in zip(ts, xs, strict=True)) / sum(
        (t - mt) ** 2 for t in ts
    )
    assert n >= 4 and b > 0
    return mx - b * mt, b


def test_timeline_renders_offline_with_lanes_and_markers_in_time_order(
    browser: Browser, tmp_path: Path
) -> None:
    log = EventLog.load(DATA / "race-kombu.json")
    html, _ = write_timeline(log, tmp_path)
    page = browser.open(html)
    assert page.wait_for("document.body.getAttribute('data-rendered')") == "yes"
    g = page.evaluate(GEOMETRY)

    # Lanes: the y axis lists them top to bottom in the log's order.
    lanes = [label["text"] for label in sorted(g["yLabels"], key=lambda label: label["y"])]
    assert lanes == log.lanes()
    lane_y = {label["text"]: label["tickY"] for label in g["yLabels"]}

    # Every event dot sits at its time (through the axis) and on its lane.
    a, b = _fit(g["xLabels"])
    rows = event_rows(log)
    assert len(g["events"]) == len(rows)
    dots = sorted(g["events"], key=lambda d: d["x"])
    for row, dot in zip(sorted(rows, key=lambda r: r["t"]), dots, strict=True):
        assert abs(dot["x"] - (a + b * row["t"])) < 2.0, (row, dot)
    for row in rows:
        assert any(
            abs(d["x"] - (a + b * row["t"])) < 2.0
            and abs(d["y"] - lane_y[row["lane"]] - row["dy"]) < 3
            for d in g["events"]
        ), row

    # The detect and resume markers: present, at their measured times, detect first.
    assert len(g["markers"]) == len(log.markers) == 2
    for marker, rule in zip(log.markers, sorted(g["markers"], key=lambda m: m["x"]), strict=True):
        assert abs(rule["x"] - (a + b * log.relative(marker.at))) < 2.0
    detect, resume = sorted(g["markers"], key=lambda m: m["x"])
    texts = [t["text"] for t in sorted(g["markerLabels"], key=lambda t: t["x"])]
    assert texts[0].startswith("time-to-detect") and texts[1].startswith("time-to-resume")
    assert detect["x"] < resume["x"]
    # The fault (VIP landing mid-SYN) comes before both.
    vip_master = next(r for r in rows if r["kind"] == "vip-master")
    assert a + b * vip_master["t"] < detect["x"]

    # Hovering an event shows its raw evidence (the conntrack entry of the racing connection).
    nat = next(r for r in rows if r["kind"] == "nat-binding")
    dot = min(
        g["events"],
        key=lambda d: (
            abs(d["x"] - (a + b * nat["t"])) + abs(d["y"] - lane_y[nat["lane"]] - nat["dy"])
        ),
    )
    page.hover(dot["x"], dot["y"])
    tooltip = page.wait_for(
        "(() => { const t = document.getElementById('vg-tooltip-element');"
        " return t && t.classList.contains('visible') ? t.textContent : ''; })()"
    )
    assert "SYN_SENT src=198.18.0.1 dst=198.18.0.100" in tooltip

    shot = page.screenshot(tmp_path / "screenshot.png")
    assert shot.stat().st_size > 20_000
    requests = page.requests()
    assert requests == [html.resolve().as_uri()], f"the page made requests: {requests}"


def test_the_request_check_catches_a_page_that_fetches(browser: Browser, tmp_path: Path) -> None:
    """The 'no network request' assertion can fail: a page that fetches is caught."""
    page_file = tmp_path / "fetching.html"
    page_file.write_text(
        "<html><body><script>fetch('http://127.0.0.1:9/hp-probe').catch(() => {});"
        "document.body.setAttribute('data-rendered', 'yes');</script></body></html>"
    )
    page = browser.open(page_file)
    page.wait_for("document.body.getAttribute('data-rendered')")
    assert any(u.startswith("http://127.0.0.1:9/") for u in page.requests())


def test_heatmap_in_the_browser_links_every_cell_to_its_timeline(
    browser: Browser, tmp_path: Path
) -> None:
    cell_log = EventLog.load(DATA / "cell-broker-kill.json")
    write_timeline(cell_log, tmp_path / "cells" / "broker-kill--celery-prefork+harden")
    report = {
        "stall_timeout": 15.0,
        "hang_bound": 300.0,
        "cells": [
            {"fault": "broker-kill", "profile": "celery-prefork+harden", "resume_s": 2.0},
            {"fault": "broker-kill", "profile": "celery-prefork", "resume_s": "HANG"},
            {"fault": "vip-race", "profile": "celery-prefork", "resume_s": "EXIT"},
        ],
    }
    html, _ = write_heatmap(
        report, tmp_path, link=lambda c: f"cells/{c['fault']}--{c['profile']}/timeline.html"
    )
    page = browser.open(html)
    assert page.wait_for("document.body.getAttribute('data-rendered')") == "yes"
    words = page.evaluate(
        "Array.from(document.querySelectorAll('#vis g.cell_text_marks text')).map(t => t.textContent)"
    )
    assert sorted(words) == ["2.0 s", "EXIT", "HANG"]
    # HANG and EXIT are their own mark (not a shade of the resume scale).
    stuck = page.evaluate("document.querySelectorAll('#vis g.stuck_marks path').length")
    resumed = page.evaluate("document.querySelectorAll('#vis g.resumed_marks path').length")
    assert (stuck, resumed) == (2, 1)
    assert page.requests() == [html.resolve().as_uri()]
    # Clicking the measured cell opens its timeline.
    cell = page.evaluate(
        "(() => { const r = document.querySelector('#vis g.resumed_marks path')"
        ".getBoundingClientRect(); return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()"
    )
    target = tmp_path / "cells/broker-kill--celery-prefork+harden/timeline.html"
    assert target.exists()
    browser.call("Target.setDiscoverTargets", {"discover": True})
    page.click(cell["x"], cell["y"] + 12)  # below the text, on the rect
    opened = browser.wait_for_target(lambda url: "/cells/broker-kill--" in url)
    assert unquote(opened) == unquote(target.resolve().as_uri())
