"""scripts/compat_names.py sees a renamed private upstream name (it can fail).

The check looks at the real py-amqp / kombu / aiormq classes; here they are
altered the way an upstream release could alter them, and the check must say
``missing`` or ``changed`` instead of ``present``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import amqp
import amqp.transport
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _names() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compat_names", ROOT / "scripts/compat_names.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _status(report: dict[str, Any], name: str) -> str:
    return next(n["status"] for n in report["names"] if n["name"] == name)


def test_every_name_is_present_in_the_installed_versions() -> None:
    report = _names().run()
    assert report["ok"], [n for n in report["names"] if n["status"] != "present"]
    assert len(report["names"]) >= 20


def test_quick_recv_renamed_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    def setup_without_quick_recv(self: Any) -> None:
        self._recv_fast = self.sock.recv  # an upstream rename

    monkeypatch.setattr(amqp.transport.TCPTransport, "_setup_transport", setup_without_quick_recv)
    report = _names().run()
    assert _status(report, "TCPTransport._setup_transport sets _quick_recv") == "missing"
    assert not report["ok"]


def test_on_basic_ack_with_another_signature_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amqp.Channel, "_on_basic_ack", lambda self, frame: None)
    report = _names().run()
    assert _status(report, "Channel._on_basic_ack / _on_basic_nack") == "changed"


def test_aiormq_frame_clock_renamed_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiormq.connection

    init = aiormq.connection.Connection.__init__

    def init_renamed(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        del self._Connection__last_frame_time  # as if aiormq renamed it

    monkeypatch.setattr(aiormq.connection.Connection, "__init__", init_renamed)
    report = _names().run()
    assert _status(report, "Connection.__last_frame_time") == "missing"
