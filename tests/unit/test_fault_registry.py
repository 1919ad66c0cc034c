"""Faults are plug-ins: one base class, one registry, the name declared once (issue 11, part 5)."""

from __future__ import annotations

import dataclasses

import pytest

from hangproof.errors import HangproofError
from hangproof.failure import FaultClass
from hangproof.lab.faults import FAULTS, Fault, fault_bed, fault_type


# --------------------------------------------------------------------
def test_every_fault_class_has_exactly_one_registered_fault() -> None:
    assert set(FAULTS) == {fc.value for fc in FaultClass}
    for name, module in FAULTS.items():
        cls = fault_type(name)
        assert issubclass(cls, Fault)
        assert cls.name == name  # the name is declared once, on the class
        assert cls.__module__ == f"hangproof.lab.faults.{module}"


def test_fault_parameters_are_dataclass_fields_after_the_target() -> None:
    params = {}
    for name in FAULTS:
        cls = fault_type(name)
        assert dataclasses.is_dataclass(cls), name
        first, *rest = dataclasses.fields(cls)
        assert first.name == "target", name
        # Built as cls(target): every parameter has a default.
        assert all(f.default is not dataclasses.MISSING for f in rest), name
        if rest:
            params[name] = {f.name: f.default for f in rest}
        # Identity equality (a fault holds live state); no repr of the target's broker URL.
        assert cls.__eq__ is object.__eq__ and cls.__repr__ is object.__repr__, name
    assert params == {
        "one-way-loss-in": {"direction": "in"},
        "one-way-loss-out": {"direction": "out"},
        "flow-state-expiry": {"variant": "expiry"},
        "flow-state-rst": {"variant": "rst"},
        "silent-flow-loss": {"client_ip": "198.18.200.2"},
    }


def test_faults_keep_their_beds_and_parallel_declarations() -> None:
    assert fault_bed("vip-race") == fault_bed("vip-failover") == "seed-lab"
    assert fault_bed("url-failover") == fault_bed("cluster-partition") == "seed-cluster"
    assert fault_bed("flow-state-rst") == fault_bed("flow-state-expiry") == "testbed-router"
    assert fault_bed("blackhole") == "testbed"
    assert fault_type("vip-race").parallel is False
    assert fault_type("vip-failover").parallel is True
    assert fault_type("blackhole").parallel is None


def test_an_unknown_fault_is_one_clear_error() -> None:
    with pytest.raises(HangproofError, match=r"^unknown fault 'nope'; choose one of: blackhole, "):
        fault_type("nope")


def test_a_fault_name_cannot_be_registered_twice_or_outside_fault_class() -> None:
    before = dict(FAULTS)
    with pytest.raises(TypeError, match="defined twice"):

        class AnotherBlackhole(Fault):
            name = FaultClass.BLACKHOLE.value

    with pytest.raises(ValueError):

        class Invented(Fault):
            name = "not-a-fault-class"

    class SharedBase(Fault):  # no name: a base of several faults, not registered
        pass

    assert dict(FAULTS) == before
    assert fault_type("blackhole").__name__ == "Blackhole"
