"""Lab scenarios: one module each, registered by name, run by ``hangproof lab run NAME``.

A scenario is a module with ``NAME``, ``HELP`` and ``run(lab, options) -> dict``.
``options`` is a :class:`RunOptions`; a scenario reads the fields it needs and
may take more from ``options.extra``. The dict is the scenario's JSON report;
``summary(result) -> str`` (optional) is its human output. ``NEEDS_LAB``
(default True) says whether it runs on the shared lab: when False, ``lab`` is
None and ``hangproof lab run`` brings nothing up (fault-matrix builds its own
beds).
Adding a scenario touches one new module and one line in :data:`SCENARIOS`.

    >>> sorted(SCENARIOS)
    ['fault-matrix', 'prometheus-alerts', 'seed-loop']
    >>> run_scenario("seed-loop", lab, RunOptions(cycles=3))  # doctest: +SKIP
    {'outcome': 'wedged', 'cycles': 1, ...}
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hangproof.errors import HangproofError

if TYPE_CHECKING:
    from hangproof.lab.engine.lab import Lab

#: Scenario name -> module under hangproof.lab.scenarios (imported on demand:
#: they pull in Celery, which `lab up` does not need).
SCENARIOS: dict[str, str] = {
    "seed-loop": "seed_loop",
    "fault-matrix": "fault_matrix",
    "prometheus-alerts": "prometheus_alerts",
}


@dataclass
class RunOptions:
    """Options every scenario understands; scenario-specific ones go in ``extra``."""

    profile: str = "seed"
    celery_config: str | None = None
    mitigation: str = "none"
    cycles: int = 20
    max_seconds: float = 600.0
    extra: dict[str, Any] = field(default_factory=dict)


def scenario_module(name: str) -> ModuleType:
    """The module of scenario ``name``; a clear error naming the choices if unknown."""
    if name not in SCENARIOS:
        raise HangproofError(
            f"unknown scenario {name!r}; choose one of: {', '.join(sorted(SCENARIOS))}"
        )
    return importlib.import_module(f"hangproof.lab.scenarios.{SCENARIOS[name]}")


def needs_lab(name: str) -> bool:
    """Whether scenario ``name`` runs on the shared lab (``NEEDS_LAB``, default True).

    >>> needs_lab("seed-loop"), needs_lab("fault-matrix")
    (True, False)
    """
    return bool(getattr(scenario_module(name), "NEEDS_LAB", True))


def run_scenario(name: str, lab: Lab | None, options: RunOptions) -> dict[str, Any]:
    """Run scenario ``name`` (on an up lab, unless it needs none); returns its JSON report."""
    module = scenario_module(name)
    if lab is None and getattr(module, "NEEDS_LAB", True):
        raise HangproofError(f"scenario {name} needs an up lab")
    result: dict[str, Any] = module.run(lab, options)
    return result


def scenario_summary(name: str, result: dict[str, Any]) -> str:
    """The scenario's human output: its ``summary(result)``, else the report as JSON."""
    summary = getattr(scenario_module(name), "summary", None)
    if summary is None:
        return json.dumps(result, indent=2, default=str)
    return str(summary(result))
