"""Human text for doctor's findings: the conclusion first, evidence lines under it.

>>> from hangproof.doctor.model import Finding
>>> from hangproof.failure import Severity
>>> print(render_findings([]).splitlines()[0])
No wedged or hazardous broker connections found.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from typing import Any

from hangproof.doctor.model import Finding

_WIDTH = 100


def render_findings(findings: Sequence[Finding]) -> str:
    """Every finding as a paragraph: headline, summary, evidence, remedy."""
    if not findings:
        return "No wedged or hazardous broker connections found.\n"
    blocks = [render_finding(f) for f in findings]
    return "\n".join(blocks)


def render_finding(finding: Finding) -> str:
    """One finding.

    >>> from hangproof.doctor.model import Finding
    >>> from hangproof.failure import Severity
    >>> f = Finding("half-open-suspect", Severity.WARNING, "Stuck.", "Restart.", pid=4,
    ...             process="celery", local="a:1", remote="b:5672", silent_seconds=9.0,
    ...             evidence={"unacked_segments": 1})
    >>> print(render_finding(f))  # doctest: +NORMALIZE_WHITESPACE
    WARNING half-open-suspect: pid 4 (celery) a:1 -> b:5672, silent 9 s
      Stuck.
      evidence:
        unacked_segments: 1
      remedy: Restart.
    <BLANKLINE>
    """
    head = f"{finding.severity.upper()} {finding.kind}"
    where: list[str] = []
    if finding.pid is not None:
        where.append(f"pid {finding.pid} ({finding.process})")
    if finding.local or finding.remote:
        where.append(f"{finding.local} -> {finding.remote}")
    tail = " ".join(where)
    if finding.silent_seconds is not None:
        tail += f", silent {finding.silent_seconds:g} s"
    lines = [f"{head}: {tail}" if tail else head]
    lines += textwrap.wrap(finding.summary, _WIDTH, initial_indent="  ", subsequent_indent="  ")
    lines.append("  evidence:")
    for key, value in finding.evidence.items():
        if value is None:
            continue
        lines += _evidence_lines(key, value)
    lines += textwrap.wrap(
        "remedy: " + finding.remedy, _WIDTH, initial_indent="  ", subsequent_indent="    "
    )
    return "\n".join(lines) + "\n"


def _evidence_lines(key: str, value: Any) -> list[str]:
    if isinstance(value, str) and "\n" in value:
        return [f"    {key}:"] + [f"      {line}" for line in value.splitlines()]
    if isinstance(value, (list, dict)):
        value = json.dumps(value, separators=(", ", ": "))
    return [f"    {key}: {value}"]


def render_footer(scanned: int, seconds: float, netns: str | None, hidden: Sequence[str]) -> str:
    """What was scanned and what could not be seen.

    >>> render_footer(3, 0.01, "hpdoc-x", ["conntrack: missing"]).splitlines()[1]
    'could not see: conntrack: missing'
    """
    where = f"network namespace {netns}" if netns else "this host's network namespace"
    lines = [f"scanned {scanned} TCP sockets in {where} in {seconds:.2f} s"]
    lines += [f"could not see: {line}" for line in hidden]
    return "\n".join(lines) + "\n"
