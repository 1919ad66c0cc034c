"""The lab never touches what it did not create (issue 9, items 1-3), without root.

Real processes (``sleep`` started here) and real files; nothing needs root or
a namespace. The root half (foreign namespaces, ``lab down --all``) is
tests/lab/test_lab_ownership.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangproof.cli import main
from hangproof.lab.components.cookie import lab_cookie, write_cookie
from hangproof.lab.components.rabbitmq import RabbitNode
from hangproof.lab.engine import processes
from hangproof.lab.engine.lab import Lab, teardown
from hangproof.lab.engine.state import DEFAULT_STATE_ROOT, LabState, state_root
from hangproof.lab.engine.topology import Topology, TopologyError

OLD_FIXED_COOKIE = "HANGPROOFLABCOOKIE"


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process the test owns, in its own session like the lab's."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def stat_start_time(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 of proc(5); fields[0] here is field 3


# -- 1. pid identity ---------------------------------------------------------
def test_state_lives_under_run_which_a_reboot_clears(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HANGPROOF_STATE_DIR", raising=False)
    assert DEFAULT_STATE_ROOT == Path("/run/hangproof")
    assert state_root() == Path("/run/hangproof")
    monkeypatch.setenv("HANGPROOF_STATE_DIR", "/tmp/elsewhere")
    assert state_root() == Path("/tmp/elsewhere")


def test_track_records_start_time_and_boot_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sleeper: subprocess.Popen[bytes]
) -> None:
    monkeypatch.setenv("HANGPROOF_STATE_DIR", str(tmp_path))
    state = LabState("hpsafe")
    state.track("worker", "n1", sleeper.pid)
    loaded = LabState.load("hpsafe")
    assert loaded is not None
    (p,) = loaded.processes
    assert p.start_time == stat_start_time(sleeper.pid)
    assert p.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@pytest.mark.parametrize(
    ("why", "start_delta", "boot"),
    [
        ("reused pid", 12345, None),
        ("another boot", 0, "00000000-0000-0000-0000-000000000000"),
        ("no identity recorded", None, None),
    ],
)
def test_a_pid_that_is_not_ours_is_never_signalled(
    sleeper: subprocess.Popen[bytes], why: str, start_delta: int | None, boot: str | None
) -> None:
    said: list[str] = []
    start = None if start_delta is None else stat_start_time(sleeper.pid) + start_delta
    boot_id = boot or (None if start is None else processes.boot_id())
    stopped = processes.stop_if_ours(
        sleeper.pid, start_time=start, boot_id=boot_id, grace=1.0, progress=said.append
    )
    time.sleep(0.2)
    assert stopped is False, why
    assert sleeper.poll() is None, f"{why}: the unrelated process was signalled"
    assert len(said) == 1 and str(sleeper.pid) in said[0] and "\n" not in said[0]
    assert "not signalled" in said[0]


def test_our_own_process_is_stopped(sleeper: subprocess.Popen[bytes]) -> None:
    said: list[str] = []
    stopped = processes.stop_if_ours(
        sleeper.pid,
        start_time=stat_start_time(sleeper.pid),
        boot_id=processes.boot_id(),
        grace=2.0,
        progress=said.append,
    )
    assert stopped is True and said == []
    assert sleeper.wait(timeout=5) is not None


# -- 2. namespace ownership: the lab's own name prefix --------------------------
@pytest.mark.parametrize("name", ["cni", "docker", "containerd", "crio", "podman", "lab", "mylab"])
def test_names_outside_the_reserved_prefix_are_refused(name: str) -> None:
    with pytest.raises(TopologyError, match="hp"):
        Topology.seed(name)


@pytest.mark.parametrize("name", ["hpcni", "hplab", "hpt", "hpbench"])
def test_names_with_the_prefix_are_accepted(name: str) -> None:
    assert Topology.seed(name).name == name


def test_lab_down_refuses_a_runtime_name_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "down", "--name", "cni"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "cni" in err and "container runtime" in err and "Traceback" not in err


# -- 3. the Erlang cookie ---------------------------------------------------------
class OpenRecorder:
    """Every open() and chmod() under ``root`` (builtin, os, pathlib), via audit hooks.

    The audit event of ``os.open`` carries the flags but not the creation mode,
    so "0400 from creation" is proven as: created with O_CREAT|O_EXCL, never
    chmodded afterwards (by path or by fd), and 0400 in the end under umask 0.
    """

    def __init__(self) -> None:
        self.root: str | None = None
        self.events: list[tuple[str, int]] = []
        self.chmods: list[object] = []

    def __call__(self, event: str, args: tuple[object, ...]) -> None:
        if self.root is None:
            return
        if event == "open" and isinstance(args[0], str | Path):
            if str(args[0]).startswith(self.root):
                self.events.append((str(args[0]), int(args[2])))  # type: ignore[call-overload]
        elif event == "os.chmod":
            self.chmods.append(args[0])


_RECORDER = OpenRecorder()
sys.addaudithook(_RECORDER)  # audit hooks cannot be removed; inert while root is None


@pytest.fixture
def opens(tmp_path: Path) -> Iterator[OpenRecorder]:
    _RECORDER.root, _RECORDER.events, _RECORDER.chmods = str(tmp_path), [], []
    old = os.umask(0)  # a creation mode of 0400 must not depend on the umask
    try:
        yield _RECORDER
    finally:
        os.umask(old)
        _RECORDER.root = None


def assert_private(path: Path) -> None:
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
    assert stat.S_IMODE(st.st_mode) == 0o400, f"{path} has mode {oct(st.st_mode)}"
    assert st.st_uid == os.geteuid()


def assert_created_private(opens: OpenRecorder, path: Path) -> None:
    writes = [flags for p, flags in opens.events if p == str(path) and flags & os.O_ACCMODE]
    assert writes, f"{path} was never written"
    for flags in writes:
        assert flags & os.O_CREAT and flags & os.O_EXCL, "cookie not created with O_EXCL"
        assert flags & os.O_NOFOLLOW, "cookie creation follows symlinks"
    late = [c for c in opens.chmods if isinstance(c, int) or str(c) == str(path)]
    assert late == [], "cookie chmodded after creation: it had another mode for a while"
    assert_private(path)  # and 0400 under umask 0: the mode it was created with


def test_node_cookie_is_random_and_private_from_creation(
    tmp_path: Path, opens: OpenRecorder
) -> None:
    a, b = RabbitNode("a", tmp_path / "a"), RabbitNode("b", tmp_path / "b")
    a.prepare()
    b.prepare()
    ca, cb = (n.home / ".erlang.cookie" for n in (a, b))
    for cookie in (ca, cb):
        assert_private(cookie)
        assert_created_private(opens, cookie)
        assert stat.S_IMODE(os.stat(cookie.parent).st_mode) == 0o700
    assert ca.read_text() != cb.read_text()
    assert OLD_FIXED_COOKIE not in (ca.read_text(), cb.read_text())
    assert len(ca.read_text()) >= 32


def test_a_node_keeps_its_cookie_across_restarts(tmp_path: Path) -> None:
    node = RabbitNode("a", tmp_path / "a")
    node.prepare()
    first = (node.home / ".erlang.cookie").read_text()
    again = RabbitNode("a", tmp_path / "a")
    again.prepare()
    assert (again.home / ".erlang.cookie").read_text() == first


def test_a_readable_or_planted_cookie_is_replaced_not_trusted(
    tmp_path: Path, opens: OpenRecorder
) -> None:
    node = RabbitNode("a", tmp_path / "a")
    node.home.mkdir(parents=True)
    cookie = node.home / ".erlang.cookie"
    cookie.write_text(OLD_FIXED_COOKIE)
    cookie.chmod(0o644)  # what the old code left for a moment, or a planted one
    node.prepare()
    assert_private(cookie)
    assert cookie.read_text() != OLD_FIXED_COOKIE


def test_a_symlink_at_the_cookie_path_is_never_followed(
    tmp_path: Path, opens: OpenRecorder
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    node = RabbitNode("a", tmp_path / "a")
    node.home.mkdir(parents=True)
    (node.home / ".erlang.cookie").symlink_to(victim)
    node.prepare()
    assert victim.read_text() == "keep me"
    assert_private(node.home / ".erlang.cookie")


def test_write_cookie_refuses_a_path_that_reappears(tmp_path: Path) -> None:
    path = tmp_path / "c"
    write_cookie(path, "a" * 32)
    assert_private(path)
    with pytest.raises(FileExistsError):
        write_cookie(path, "b" * 32, replace=False)
    assert path.read_text() == "a" * 32


def test_one_cookie_per_lab_shared_by_its_cluster_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opens: OpenRecorder
) -> None:
    monkeypatch.setenv("HANGPROOF_STATE_DIR", str(tmp_path))
    one = Lab(Topology.seed("hpone"))
    two = Lab(Topology.seed("hptwo"))
    n1, n2 = one.broker("n1"), one.broker("n2")
    assert n1.cookie and n1.cookie == n2.cookie
    assert two.broker("n1").cookie != n1.cookie
    for lab in (one, two):
        path = lab.state.directory / "erlang.cookie"
        assert_private(path)
        assert_created_private(opens, path)
    assert lab_cookie(one.state.directory) == n1.cookie


def test_cookies_do_not_outlive_the_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANGPROOF_STATE_DIR", str(tmp_path))
    lab = Lab(Topology.seed("hpgone"))
    state = LabState("hpgone", lab.topo.to_dict())
    state.save()
    node = lab.broker("n1")
    node.prepare()
    cookies = [state.directory / "erlang.cookie", node.home / ".erlang.cookie"]
    assert all(c.exists() for c in cookies)
    teardown(state)
    assert not any(c.exists() for c in cookies)
    assert LabState.load("hpgone") is None
