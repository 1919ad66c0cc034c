"""Prometheus metrics and liveness for ``doctor --watch``.

A private registry keeps the exporter free of process metrics we did not ask for
and lets tests create several exporters in one process.

``/healthz`` answers from the age of the last *completed* scan, not from the
HTTP thread: prometheus_client's server runs in its own thread, so a scan loop
stuck in a tool would still answer ``/metrics`` and look alive. It fails (503)
once the last scan is older than ``max(stale_scans × watch, MIN_LIVENESS_AGE)``.

>>> m = DoctorMetrics()
>>> m.update([], scanned=3, seconds=0.01)
>>> b"hangproof_doctor_scanned_sockets 3.0" in m.render()
True
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any

from hangproof.doctor.model import Finding
from hangproof.doctor.rules import KINDS
from hangproof.failure import Severity
from hangproof.http_endpoint import NOT_FOUND, EndpointServer

#: /healthz fails after this many watch intervals without a completed scan.
STALE_SCANS = 3
#: ...but never sooner than this: one scan may legitimately take a while (three
#: tools at 15 s each, plus py-spy's 30 s budget), and a restart costs more than
#: a late scan.
MIN_LIVENESS_AGE = 60.0


class DoctorMetrics:
    """Gauges updated after each scan; ``serve()`` exposes ``/metrics`` and ``/healthz``."""

    def __init__(self, *, clock: Callable[[], float] = monotonic) -> None:
        from prometheus_client import CollectorRegistry, Gauge
        from prometheus_client import Counter as PromCounter

        self._clock = clock
        self.started_at = clock()
        self.last_scan_at: float | None = None
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
        self.last_scan_age = Gauge(
            "hangproof_doctor_last_scan_age_seconds",
            "Seconds since the last completed scan (what /healthz judges)",
            registry=self.registry,
        )
        self.last_scan_age.set_function(self.scan_age)

    def scan_age(self) -> float:
        """Seconds since the last completed scan (since start, before the first)."""
        since = self.started_at if self.last_scan_at is None else self.last_scan_at
        return max(0.0, self._clock() - since)

    def update(self, findings: Sequence[Finding], *, scanned: int, seconds: float) -> None:
        """Replace the gauges with the last scan's figures (kinds absent now read 0)."""
        counts = Counter((f.kind, str(f.severity)) for f in findings)
        for kind in KINDS:
            for severity in Severity:
                self.findings.labels(kind, str(severity)).set(counts.get((kind, str(severity)), 0))
        self.scanned.set(scanned)
        self.seconds.set(seconds)
        self.scans.inc()
        self.last_scan_at = self._clock()

    def health(self, max_age: float) -> dict[str, Any]:
        """The body of ``/healthz``."""
        age = self.scan_age()
        return {
            "healthy": age <= max_age,
            "last_scan_age": round(age, 3),
            "max_age": max_age,
            "scans_completed": self.last_scan_at is not None,
        }

    def render(self) -> bytes:
        """The text exposition format (what /metrics serves)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def serve(
        self, port: int, addr: str = "0.0.0.0", *, watch: float, stale_scans: int = STALE_SCANS
    ) -> DoctorServer:
        """Serve ``/metrics`` and ``/healthz`` on ``addr:port`` from a daemon thread."""
        return DoctorServer(self, addr, port, float(max(stale_scans * watch, MIN_LIVENESS_AGE)))


class DoctorServer(EndpointServer):
    """The HTTP side of :class:`DoctorMetrics`; ``close()`` stops it.

    >>> server = DoctorMetrics().serve(0, "127.0.0.1", watch=30)
    >>> server.address[0], server.max_age
    ('127.0.0.1', 90.0)
    >>> server.close()
    """

    def __init__(self, metrics: DoctorMetrics, host: str, port: int, max_age: float) -> None:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        self.max_age = max_age

        def route(path: str) -> tuple[int, bytes, str]:
            if path == "/metrics":
                return 200, metrics.render(), CONTENT_TYPE_LATEST
            if path == "/healthz":
                health = metrics.health(max_age)
                return (
                    200 if health["healthy"] else 503,
                    json.dumps(health).encode(),
                    "application/json",
                )
            return NOT_FOUND

        super().__init__(route, host, port, name="hangproof-doctor-http")
