"""Fail closed: a renamed private upstream name stops the guard with one clear error.

Each test fakes an upstream rename on the *real* class (monkeypatch, undone
after the test) and checks that the user gets ``UpstreamChanged`` naming the
package, its installed version and what is missing, instead of a guard that
silently lost its deadline. The last tests parse all of ``src/`` so that no
private upstream name is used outside ``hangproof.guard.upstream``.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import importlib.metadata
import inspect
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangproof.guard import upstream
from hangproof.guard.upstream import UpstreamChanged

SRC = Path(__file__).resolve().parents[2] / "src" / "hangproof"
UPSTREAM_MODULE = SRC / "guard" / "upstream.py"
#: Import names of the packages whose private names must stay in upstream.py.
UPSTREAM_PACKAGES = ("amqp", "kombu", "celery", "aio_pika", "aiormq")


@pytest.fixture(autouse=True)
def _fresh_checks() -> Iterator[None]:
    upstream.reset()
    yield
    upstream.reset()


def _celery_app():
    from celery import Celery

    return Celery("failclosed", broker="amqp://guest:guest@127.0.0.1:1//", set_as_current=False)


def _assert_names(exc: UpstreamChanged, package: str, *what: str) -> None:
    message = str(exc)
    assert "\n" not in message  # one line
    assert f"{package} {importlib.metadata.version(package)} " in message
    for item in what:
        assert item in message, message
    assert "guest" not in message  # never a credential


def test_every_package_passes_on_the_installed_versions() -> None:
    for package in ("amqp", "kombu", "celery", "aiormq", "aio-pika"):
        upstream.check(package)


def test_harden_refuses_when_py_amqp_renames_quick_recv(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's own example: no _quick_recv would quietly drop the handshake deadline."""
    from amqp.transport import TCPTransport

    from hangproof.celery import harden

    original = TCPTransport._setup_transport

    def renamed(self) -> None:
        original(self)
        self._recv_fast = self._quick_recv  # what a rename upstream would look like
        del self._quick_recv

    monkeypatch.setattr(TCPTransport, "_setup_transport", renamed)
    app = _celery_app()
    with pytest.raises(UpstreamChanged) as caught:
        harden(app)
    _assert_names(caught.value, "amqp", "_quick_recv")
    assert app.conf.broker_transport != "hangproof.kombu:Transport"  # nothing half-configured


def test_harden_refuses_when_py_amqp_drops_an_ack_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import amqp

    from hangproof.celery import harden

    monkeypatch.delattr(amqp.Channel, "_on_basic_ack")
    with pytest.raises(UpstreamChanged) as caught:
        harden(_celery_app())
    _assert_names(caught.value, "amqp", "_on_basic_ack")


def test_harden_refuses_when_kombu_renames_the_connection_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kombu

    from hangproof.celery import harden

    monkeypatch.delattr(kombu.Connection, "_connection")
    with pytest.raises(UpstreamChanged) as caught:
        harden(_celery_app())
    _assert_names(caught.value, "kombu", "_connection")


def test_harden_refuses_when_celery_renames_a_consumer_hook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celery.worker.consumer.consumer import Consumer

    from hangproof.celery import harden

    monkeypatch.delattr(Consumer, "on_connection_error_after_connected")
    with pytest.raises(UpstreamChanged) as caught:
        harden(_celery_app())
    _assert_names(caught.value, "celery", "on_connection_error_after_connected")


def test_guard_transport_refuses_at_first_connection_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kombu users who never call harden() get the same error from the transport."""
    import amqp

    from hangproof.guard.transport import GuardConnection

    monkeypatch.delattr(amqp.Connection, "_on_blocked")
    with pytest.raises(UpstreamChanged) as caught:
        GuardConnection(host="127.0.0.1:1")
    _assert_names(caught.value, "amqp", "_on_blocked")


def test_accessors_raise_instead_of_returning_none() -> None:
    """No getattr(..., None): a missing name is an error at the point of use too."""
    for accessor in (
        upstream.quick_recv,
        upstream.amqp_transport,
        upstream.aiormq_last_frame_time,
        upstream.aiormq_blocked,
        upstream.aio_channel_connection,
        upstream.aio_channel_link,
    ):
        with pytest.raises(UpstreamChanged):
            accessor(object())


def _rename_aiormq_attribute(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    import aiormq

    original = aiormq.Connection.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        delattr(self, name)

    monkeypatch.setattr(aiormq.Connection, "__init__", init)


@pytest.mark.parametrize(
    ("attribute", "shown"),
    [
        ("_Connection__last_frame_time", "__last_frame_time"),
        ("_Connection__connection_unblocked", "__connection_unblocked"),
    ],
)
def test_aio_connect_robust_refuses_when_aiormq_renames_its_state(
    monkeypatch: pytest.MonkeyPatch, attribute: str, shown: str
) -> None:
    """Before: the aio watchdog (and the blocked check) went quiet. Now: one error, no I/O."""
    from hangproof.aio import connect_robust

    _rename_aiormq_attribute(monkeypatch, attribute)

    async def main() -> None:
        await connect_robust("amqp://guest:guest@127.0.0.1:1/")

    with pytest.raises(UpstreamChanged) as caught:
        asyncio.run(main())
    _assert_names(caught.value, "aiormq", shown)


# -- no private upstream name outside upstream.py ------------------------------


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _upstream_private_names() -> set[str]:
    """Every private name the upstream packages define or use (mangled ones too)."""
    names: set[str] = set()
    for package in UPSTREAM_PACKAGES:
        root = Path(importlib.import_module(package).__file__).parent
        for path in root.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
            for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
                for node in ast.walk(cls):
                    if isinstance(node, ast.Attribute) and node.attr.startswith("__"):
                        if not node.attr.endswith("__"):
                            names.add(f"_{cls.name.lstrip('_')}{node.attr}")
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute):
                    names.add(node.attr)
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(node.name)
                elif isinstance(node, ast.Name):
                    names.add(node.id)
    return {n for n in names if _is_private(n)}


class _Use:
    def __init__(self, path: Path, node: ast.AST, name: str, kind: str) -> None:
        self.path, self.line, self.name, self.kind = path, getattr(node, "lineno", 0), name, kind

    def __repr__(self) -> str:
        return f"{self.path.relative_to(SRC.parent)}:{self.line}: {self.kind} {self.name}"


def _private_uses(path: Path, tree: ast.AST) -> tuple[list[_Use], set[str]]:
    """(every private attribute use, private names this file itself defines)."""
    uses: list[_Use] = []
    defined: set[str] = set()
    # Names bound to modules that are not upstream (os._exit is not kombu's).
    foreign: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in UPSTREAM_PACKAGES:
                    foreign.add((alias.asname or alias.name).split(".")[0])
    parents: dict[ast.AST, ast.AST] = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[child] = parent

    def enclosing_function(node: ast.AST) -> str | None:
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node.name
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                targets: list[str] = []
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    targets = [item.name]
                elif isinstance(item, ast.Assign):
                    targets = [t.id for t in item.targets if isinstance(t, ast.Name)]
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    targets = [item.target.id]
                for name in targets:
                    if _is_private(name):
                        uses.append(_Use(path, item, name, "defines"))
                        defined.add(name)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    defined.add(target.id)
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            value = node.value
            is_super = (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Name)
                and value.func.id == "super"
            )
            if is_super and enclosing_function(node) == node.attr:
                kind = "super-calls"  # the base implementation of an override
            elif isinstance(value, ast.Name) and value.id in ("self", "cls"):
                kind = "self-uses"
            elif isinstance(value, ast.Name) and value.id in foreign:
                kind = "stdlib"
            else:
                kind = "reads"
            uses.append(_Use(path, node, node.attr, kind))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
        ):
            uses.append(_Use(path, node, node.args[1].value, "getattr"))
    return uses, defined


def _violations(sources: dict[Path, str], upstream_names: set[str]) -> list[_Use]:
    """Private upstream names read on other objects, or by string (getattr & co.).

    Definitions and ``self.`` uses depend on the class's bases, which only
    the MRO test below can see; this static scan covers everything else.
    A name hangproof defines itself (outside upstream.py) is its own.
    """
    parsed = {path: _private_uses(path, ast.parse(text)) for path, text in sources.items()}
    own: set[str] = set()
    for _, defined in parsed.values():
        own |= defined
    bad: list[_Use] = []
    for uses, _ in parsed.values():
        for use in uses:
            if use.name not in upstream_names:
                continue
            if use.kind == "getattr" or (use.kind == "reads" and use.name not in own):
                bad.append(use)
    return bad


def _hangproof_sources() -> dict[Path, str]:
    return {
        path: path.read_text(encoding="utf-8")
        for path in sorted(SRC.rglob("*.py"))
        if path != UPSTREAM_MODULE
    }


def test_no_private_upstream_name_outside_upstream_py() -> None:
    bad = _violations(_hangproof_sources(), _upstream_private_names())
    assert not bad, (
        "private upstream names used outside hangproof/guard/upstream.py "
        f"(add an accessor there, or declare the override in OVERRIDES): {bad}"
    )


def test_the_scan_catches_a_new_private_access() -> None:
    """The scan can fail: the old fail-open patterns are all flagged."""
    names = _upstream_private_names()
    snippet = (
        "import os\n"
        "def clock(conn):\n"
        "    os._exit  # not upstream\n"
        "    amqp = getattr(conn, '_connection', conn)\n"
        "    return amqp._transport, getattr(amqp, '_Connection__last_frame_time', None)\n"
    )
    bad = _violations({SRC / "guard" / "snippet.py": snippet}, names)
    assert {u.name for u in bad} == {
        "_connection",
        "_transport",
        "_Connection__last_frame_time",
    }, bad


def _mro_problems(classes: list[type]) -> list[str]:
    """Undeclared private upstream names that hangproof code uses on ``self`` or defines.

    For a class with an upstream base, the names its own code (and its
    hangproof mixins' code) defines or uses on ``self`` must not be private
    names of those bases, except the overrides declared in upstream.py.
    """
    declared = set().union(*upstream.OVERRIDES.values())
    problems: list[str] = []
    for cls in classes:
        upstream_bases = [b for b in cls.__mro__ if b.__module__.split(".")[0] in UPSTREAM_PACKAGES]
        upstream_names: set[str] = set()
        for base in upstream_bases:
            upstream_names |= {n for n in vars(base) if _is_private(n)}
            upstream_names |= {n for n in getattr(base, "__slots__", ()) if _is_private(n)}
            try:
                tree = ast.parse(textwrap.dedent(inspect.getsource(base)))
            except (OSError, TypeError):
                continue
            upstream_names |= {
                n.attr
                for n in ast.walk(tree)
                if isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name)
                and n.value.id == "self"
                and _is_private(n.attr)
            }
        for own in cls.__mro__:
            if own.__module__.split(".")[0] in UPSTREAM_PACKAGES or own is object:
                continue
            try:
                tree = ast.parse(textwrap.dedent(inspect.getsource(own)))
            except (OSError, TypeError):  # made by type(): no code of its own
                continue
            for node in ast.walk(tree):
                name = None
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                ):
                    name = node.attr
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    name = node.name
                elif isinstance(node, ast.Assign):
                    names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                    name = names[0] if names else None
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    name = node.target.id
                if name and name in upstream_names and name not in declared:
                    problems.append(f"{own.__qualname__} uses {name} of {cls.__qualname__}")
    return sorted(set(problems))


def _hangproof_classes_with_upstream_bases() -> list[type]:
    classes: list[type] = []
    for path in sorted(SRC.rglob("*.py")):
        if path == UPSTREAM_MODULE:
            continue
        name = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        module = importlib.import_module(name.removesuffix(".__init__"))
        for cls in vars(module).values():
            if (
                inspect.isclass(cls)
                and cls.__module__ == module.__name__
                and any(b.__module__.split(".")[0] in UPSTREAM_PACKAGES for b in cls.__mro__)
            ):
                classes.append(cls)
    return classes


def test_hangproof_classes_touch_no_undeclared_upstream_private_name() -> None:
    """At run time, through the MRO: mixins (like the transport's frame clock) included."""
    classes = _hangproof_classes_with_upstream_bases()
    names = {c.__name__ for c in classes}
    assert {"GuardTCPTransport", "GuardChannel", "GuardConnection", "GuardKombuConnection"} <= names
    problems = _mro_problems(classes)
    assert not problems, problems


def test_the_mro_scan_catches_an_undeclared_override() -> None:
    import amqp

    class Sneaky(amqp.Channel):
        def _on_basic_deliver(self, *args):
            self._confirm_selected = True
            return super()._on_basic_deliver(*args)

    assert _mro_problems([Sneaky]) == [
        "test_the_mro_scan_catches_an_undeclared_override.<locals>.Sneaky uses "
        "_confirm_selected of test_the_mro_scan_catches_an_undeclared_override.<locals>.Sneaky",
        "test_the_mro_scan_catches_an_undeclared_override.<locals>.Sneaky uses "
        "_on_basic_deliver of test_the_mro_scan_catches_an_undeclared_override.<locals>.Sneaky",
    ]
