"""Prometheus metrics for ``doctor --watch``: findings by kind and severity.

A private registry keeps the exporter free of process metrics we did not ask for
and lets tests create several exporters in one process.

>>> m = DoctorMetrics()
>>> m.update([], scanned=3, seconds=0.01)
>>> b"hangproof_doctor_scanned_sockets 3.0" in m.render()
True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from hangproof.doctor.model import Finding
from hangproof.doctor.rules import KINDS
from hangproof.failure import Severity


class DoctorMetrics:
    """Gauges updated after each scan; ``serve(port)`` exposes them over HTTP."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge
        from prometheus_client import Counter as PromCounter

        self.registry = CollectorRegistry()
        self.findings = Gauge(
            "hangproof_doctor_findings",
            "Findings of the last scan, by kind and severity",
            ["kind", "severity"],
            registry=self.registry,
        )
        self.scanned = Gauge(
            "hangproof_doctor_scanned_sockets",
            "TCP sockets seen by the last scan",
            registry=self.registry,
        )
        self.seconds = Gauge(
            "hangproof_doctor_scan_seconds", "Duration of the last scan", registry=self.registry
        )
        self.scans = PromCounter(
            "hangproof_doctor_scans", "Scans completed", registry=self.registry
        )
        self.errors = PromCounter(
            "hangproof_doctor_scan_errors", "Scans that failed", registry=self.registry
        )

    def update(self, findings: Sequence[Finding], *, scanned: int, seconds: float) -> None:
        """Replace the gauges with the last scan's figures (kinds absent now read 0)."""
        counts = Counter((f.kind, str(f.severity)) for f in findings)
        for kind in KINDS:
            for severity in Severity:
                self.findings.labels(kind, str(severity)).set(counts.get((kind, str(severity)), 0))
        self.scanned.set(scanned)
        self.seconds.set(seconds)
        self.scans.inc()

    def render(self) -> bytes:
        """The text exposition format (what /metrics serves)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve /metrics on ``addr:port`` from a daemon thread."""
        from prometheus_client import start_http_server

        start_http_server(port, addr=addr, registry=self.registry)
