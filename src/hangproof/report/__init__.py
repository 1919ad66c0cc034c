"""Evidence you can look at: timelines of lab runs and the fault matrix as a picture.

Two layers, kept apart so the lab never imports a plotting library:

- :mod:`hangproof.report.events`: the event log, a pure model (events on lanes,
  measured markers, tasks per second) that the lab fills and saves as JSON;
- :mod:`hangproof.report.render`: the event log (or a fault-matrix report) ->
  one self-contained HTML file plus a PNG, through Vega-Lite (Altair builds
  the spec, ``vl-convert-python`` inlines the JavaScript and draws the PNG with
  no browser). Install with ``pip install 'hangproof[report]'``.

    >>> from hangproof.report.events import EventLog
    >>> log = EventLog(title="race", scenario="race", t0=100.0)
    >>> log.add(100.2, "client raw", "syn", "SYN sent").kind
    'syn'
"""
