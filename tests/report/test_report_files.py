"""The written files: the HTML loads nothing from outside; the PNG draws the markers at their times."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import pytest

from hangproof.report.events import EventLog
from hangproof.report.figure import MARKER_COLOURS, WIDTH, timeline_spec, x_domain
from hangproof.report.render import PNG_SCALE, write_heatmap, write_timeline

DATA = Path(__file__).parent.parent / "data" / "report"


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGBA bytes) of an 8-bit RGB/RGBA non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour)
            channels = 4 if colour == 6 else 3
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line) if channels == 4 else _rgba(line))
        prev = line
    return width, height, rows


def _rgba(rgb: bytearray) -> bytes:
    out = bytearray()
    for i in range(0, len(rgb), 3):
        out += rgb[i : i + 3] + b"\xff"
    return bytes(out)


def _hex(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _columns_of(row: bytes, colour: tuple[int, int, int], tolerance: int = 40) -> list[int]:
    hits = []
    for x in range(len(row) // 4):
        r, g, b = row[4 * x : 4 * x + 3]
        if abs(r - colour[0]) + abs(g - colour[1]) + abs(b - colour[2]) <= tolerance:
            hits.append(x)
    return hits


@pytest.fixture(scope="module")
def kombu_race(tmp_path_factory: pytest.TempPathFactory) -> tuple[EventLog, Path, Path]:
    log = EventLog.load(DATA / "race-kombu.json")
    html, png = write_timeline(log, tmp_path_factory.mktemp("report"))
    return log, html, png


def test_html_is_one_self_contained_file(kombu_race: tuple[EventLog, Path, Path]) -> None:
    _, html, _ = kombu_race
    text = html.read_text()
    assert "vegaEmbed" in text and len(text) < 3_000_000
    # The markup fetches nothing: no script/link/img with a src or href, no CSS import.
    # (Inside the inlined scripts, strings like '<img src=' are templates; the browser
    # test proves that running them requests nothing.)
    markup = re.sub(r"<script[^>]*>.*?</script>", "<script></script>", text, flags=re.S)
    assert "<script></script>" in markup
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", markup)
    assert "@import" not in markup
    assert (html.parent / "timeline.json").exists()


def test_png_draws_each_marker_where_its_time_falls_on_the_axis(
    kombu_race: tuple[EventLog, Path, Path],
) -> None:
    """Marker columns in the PNG = origin + (t - t_min) / (t_max - t_min) * WIDTH, at 2x scale."""
    import vl_convert

    log, _, png = kombu_race
    width, height, rows = decode_png(png.read_bytes())
    sg = vl_convert.vegalite_to_scenegraph(timeline_spec(log))
    origin_x, origin_y = sg["origin"]
    lo, hi = x_domain(log)
    # A row through the middle of the lanes (the marker rules span the whole plot height).
    lanes_px = len(log.lanes()) * 34
    y = int((origin_y + lanes_px / 2 + 3) * PNG_SCALE)
    found = {}
    for m in log.markers:
        t = log.relative(m.at)
        expected = (origin_x + (t - lo) / (hi - lo) * WIDTH) * PNG_SCALE
        cols = _columns_of(rows[y], _hex(MARKER_COLOURS[m.kind]))
        near = [c for c in cols if abs(c - expected) <= 3 * PNG_SCALE]
        assert near, f"{m.kind} marker not at x≈{expected:.0f}px in the PNG (colour at {cols[:10]})"
        found[m.kind] = sum(near) / len(near)
    assert found["detect"] < found["resume"]
    # Spacing alone (independent of where the plot starts) matches the times.
    gap = log.relative(log.markers[1].at) - log.relative(log.markers[0].at)
    assert abs((found["resume"] - found["detect"]) - gap / (hi - lo) * WIDTH * PNG_SCALE) <= 3
    assert width > WIDTH * PNG_SCALE and height > 100


def test_heatmap_files_link_each_cell(tmp_path: Path) -> None:
    report = {
        "stall_timeout": 15.0,
        "hang_bound": 300.0,
        "cells": [
            {"fault": "broker-kill", "profile": "kombu", "resume_s": 2.0},
            {"fault": "broker-kill", "profile": "celery-prefork", "resume_s": "HANG"},
        ],
    }
    html, png = write_heatmap(
        report, tmp_path, link=lambda c: f"cells/{c['profile']}/timeline.html"
    )
    text = html.read_text()
    assert 'href="cells/kombu/timeline.html"' in text and "HANG" in text
    assert png.read_bytes()[:4] == b"\x89PNG"
