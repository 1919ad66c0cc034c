"""Mitigations are plug-ins: one base class, one registry (issue 11, part 5).

No root: the mitigations' commands are recorded instead of run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from hangproof.errors import HangproofError
from hangproof.lab import mitigations
from hangproof.lab.mitigations import MITIGATIONS, REGISTRY, Mitigation, make_mitigation


# -- mitigations ---------------------------------------------------------------
def test_mitigation_names_are_the_cli_contract() -> None:
    assert MITIGATIONS == ("none", "conntrack-flush", "reject-undnat", "no-port-holder")
    assert [REGISTRY[n].name for n in MITIGATIONS] == list(MITIGATIONS)
    assert all(issubclass(c, Mitigation) for c in REGISTRY.values())


def test_an_unknown_mitigation_is_one_clear_error() -> None:
    with pytest.raises(HangproofError) as err:
        make_mitigation("nope")
    assert str(err.value) == (
        "unknown mitigation 'nope'; choose one of: "
        "none, conntrack-flush, reject-undnat, no-port-holder"
    )


def test_a_mitigation_name_cannot_be_registered_twice() -> None:
    with pytest.raises(TypeError, match="defined twice"):

        class AnotherNone(Mitigation):
            name = "none"

    assert REGISTRY["none"].__name__ == "NoMitigation"


@dataclass
class FakeTopo:
    node_port: int = 32672

    def ns(self, node: str) -> str:
        return f"hpx-{node}"


@dataclass
class FakeState:
    holders: set[str]

    def find(self, role: str, node: str) -> list[str]:
        return [node] if role == "port-holder" and node in self.holders else []


@dataclass
class FakeLab:
    holders: set[str] = field(default_factory=lambda: {"n1"})
    calls: list[tuple[str, str]] = field(default_factory=list)
    topo: FakeTopo = field(default_factory=FakeTopo)

    def __post_init__(self) -> None:
        self.state = FakeState(self.holders)

    def stop_port_holder(self, node: str) -> None:
        self.calls.append(("stop", node))

    def start_port_holder(self, node: str, state: Any) -> None:
        self.calls.append(("start", node))


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], str | None]]:
    calls: list[tuple[list[str], str | None]] = []
    monkeypatch.setattr(
        mitigations.processes,
        "run",
        lambda argv, netns=None, check=True: calls.append((list(argv), netns)),
    )
    return calls


def test_reject_undnat_inserts_then_deletes_the_same_rule(
    ran: list[tuple[list[str], str | None]],
) -> None:
    fix, lab = make_mitigation("reject-undnat"), FakeLab()
    assert fix.apply(lab, "n2") is True  # type: ignore[arg-type]
    fix.remove(lab, "n2")  # type: ignore[arg-type]
    rule = mitigations.reject_undnat_rule(32672)
    assert ran == [
        (["iptables", "-I", "INPUT", "1", *rule], "hpx-n2"),
        (["iptables", "-D", "INPUT", *rule], "hpx-n2"),
    ]
    assert fix.on_vip_added("198.18.0.100") == []


def test_no_port_holder_stops_only_a_holder_that_runs_and_restarts_it(
    ran: list[tuple[list[str], str | None]],
) -> None:
    fix, lab = make_mitigation("no-port-holder"), FakeLab(holders={"n1"})
    assert fix.apply(lab, "n2") is False  # type: ignore[arg-type]
    assert fix.apply(lab, "n1") is True  # type: ignore[arg-type]
    fix.remove(lab, "n1")  # type: ignore[arg-type]
    assert lab.calls == [("stop", "n1"), ("start", "n1")]
    assert ran == []


def test_conntrack_flush_acts_when_the_vip_arrives_and_none_does_nothing(
    ran: list[tuple[list[str], str | None]],
) -> None:
    flush, none, lab = make_mitigation("conntrack-flush"), make_mitigation("none"), FakeLab()
    assert flush.apply(lab, "n1") is False and none.apply(lab, "n1") is False  # type: ignore[arg-type]
    assert flush.on_vip_added("198.18.0.100") == [["conntrack", "-D", "-d", "198.18.0.100"]]
    assert flush.vip_added_note == "conntrack flushed"
    assert none.on_vip_added("198.18.0.100") == []
    assert ran == [] and lab.calls == []
