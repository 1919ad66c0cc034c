"""Lab scenarios: one module each, registered by name, run by ``hangproof lab run NAME``.

A scenario is a module with ``NAME``, ``HELP`` and ``run(lab, options) -> dict``.
``options`` is a :class:`RunOptions`; a scenario reads the fields it needs and
may take more from ``options.extra``. The dict is the scenario's JSON report.
Adding a scenario touches one new module and one line in :data:`SCENARIOS`.

    >>> sorted(SCENARIOS)
    ['fault-matrix', 'seed-loop']
    >>> run_scenario("seed-loop", lab, RunOptions(cycles=3))  # doctest: +SKIP
    {'outcome': 'wedged', 'cycles': 1, ...}
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hangproof.errors import HangproofError

if TYPE_CHECKING:
    from hangproof.lab.lab import Lab

#: Scenario name -> module under hangproof.lab.scenarios (imported on demand:
#: they pull in Celery, which `lab up` does not need).
SCENARIOS: dict[str, str] = {
    "seed-loop": "seed_loop",
    "fault-matrix": "fault_matrix",
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
    if name not in SCENARIOS:
        raise HangproofError(
            f"unknown scenario {name!r}; choose one of: {', '.join(sorted(SCENARIOS))}"
        )
    return importlib.import_module(f"hangproof.lab.scenarios.{SCENARIOS[name]}")


def run_scenario(name: str, lab: Lab, options: RunOptions) -> dict[str, Any]:
    """Run scenario ``name`` on an up lab; returns its JSON-able report."""
    result: dict[str, Any] = scenario_module(name).run(lab, options)
    return result
