"""CI tells the truth (issue 9, item 8) and setup.sh never blocks the host's services (item 6).

Each test runs the real script or the real conftest in a subprocess, with fake
tools on PATH (a failing ``apt-get``, a ``pytest`` that collects nothing), so
nothing on the host is installed, swept or blocked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFTEST = REPO / "tests" / "conftest.py"
SETUP = REPO / "scripts" / "setup.sh"
TEST_SH = REPO / "scripts" / "test.sh"
LAB_TOOLS = ("ip", "iptables-restore", "conntrack", "rabbitmq-server", "keepalived", "ss")


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


# -- 8. a skipped lab test is a failure under HANGPROOF_REQUIRE_LAB=1 ---------------
@pytest.fixture
def lab_suite() -> Iterator[Path]:
    """A tiny suite with the project's own conftest and one lab test, readable by nobody."""
    d = Path(tempfile.mkdtemp(prefix="hp-ci-"))
    try:
        d.chmod(0o755)
        shutil.copy(CONFTEST, d / "conftest.py")
        (d / "pytest.ini").write_text("[pytest]\nmarkers =\n    lab: needs root\n")
        (d / "test_needs_lab.py").write_text(
            "import pytest\n\n\n@pytest.mark.lab\ndef test_real_evidence():\n    pass\n\n\n"
            "@pytest.mark.lab\ndef test_skips_itself():\n    pytest.skip('no broker here')\n\n\n"
            "def test_unit():\n    pass\n"
        )
        for f in d.iterdir():
            f.chmod(0o644)
        yield d
    finally:
        shutil.rmtree(d)


def run_suite(suite: Path, require: str | None) -> subprocess.CompletedProcess[str]:
    """Run the suite where lab tests cannot run: as nobody (we are root) or as ourselves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGPROOF_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if require is not None:
        env["HANGPROOF_REQUIRE_LAB"] = require
    drop = []
    if os.geteuid() == 0:
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        env["HOME"] = str(suite)
    return subprocess.run(
        [*drop, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(suite)],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_the_requirement_lab_tests_are_skipped(lab_suite: Path) -> None:
    result = run_suite(lab_suite, None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 2 skipped" in result.stdout


def test_required_lab_tests_fail_instead_of_skipping(lab_suite: Path) -> None:
    result = run_suite(lab_suite, "1")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "1 passed, 2 errors" in result.stdout, out
    assert "HANGPROOF_REQUIRE_LAB=1 but this lab test cannot run: lab tests need root" in out


def test_a_required_lab_test_that_skips_itself_fails(lab_suite: Path) -> None:
    # As on a CI runner with root and the tools: the conftest's probe says "available".
    with (lab_suite / "conftest.py").open("a") as f:
        f.write("\n\ndef _lab_unavailable():\n    return None\n")
    result = run_suite(lab_suite, "1")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "1 failed, 2 passed" in result.stdout, out
    assert "forbids skipping a lab test; it skipped: Skipped: no broker here" in out
    assert run_suite(lab_suite, None).stdout.count("SKIPPED") == 1


# -- 8. scripts/test.sh: exit 5 is a failure when lab evidence is required ---------
@pytest.fixture
def fake_venv(tmp_path: Path) -> Path:
    """ruff passes, pytest collects nothing (exit 5) and records HANGPROOF_REQUIRE_LAB."""
    assert "HANGPROOF_VENV" in TEST_SH.read_text(), "test.sh must honour HANGPROOF_VENV"
    bin_ = tmp_path / "venv" / "bin"
    bin_.mkdir(parents=True)
    executable(bin_ / "ruff", "#!/bin/sh\nexit 0\n")
    executable(
        bin_ / "pytest",
        f'#!/bin/sh\necho "${{HANGPROOF_REQUIRE_LAB:-unset}}" > {tmp_path}/required\nexit 5\n',
    )
    executable(bin_ / "hangproof", "#!/bin/sh\nexit 0\n")  # the final `lab down --all`
    return tmp_path / "venv"


def run_test_sh(venv: Path, require: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGPROOF_")}
    env["HANGPROOF_VENV"] = str(venv)
    env["HANGPROOF_COMPAT_SETS"] = "none"  # the compat matrix needs a real venv; not this test's
    if require is not None:
        env["HANGPROOF_REQUIRE_LAB"] = require
    return subprocess.run(
        ["bash", str(TEST_SH)], env=env, capture_output=True, text=True, timeout=60
    )


def test_no_tests_collected_fails_when_lab_is_required(fake_venv: Path) -> None:
    result = run_test_sh(fake_venv, "1")
    assert result.returncode != 0, result.stdout + result.stderr
    assert (fake_venv.parent / "required").read_text().strip() == "1"


def test_no_tests_collected_passes_when_lab_is_not_required(fake_venv: Path) -> None:
    result = run_test_sh(fake_venv, "0")
    assert result.returncode == 0, result.stdout + result.stderr


def test_test_sh_requires_lab_evidence_as_root_with_the_tools(fake_venv: Path) -> None:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    capable = os.geteuid() == 0 and all(shutil.which(t, path=path) for t in LAB_TOOLS)
    run_test_sh(fake_venv, None)
    seen = (fake_venv.parent / "required").read_text().strip()
    assert seen == ("1" if capable else "unset")


def test_ci_requires_lab_evidence() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "HANGPROOF_REQUIRE_LAB=1" in ci


# -- 6. setup.sh removes its policy-rc.d on every exit -----------------------------
@pytest.fixture
def fake_host(tmp_path: Path) -> Path:
    """PATH where every Debian package is missing, we look like root and apt-get obeys $APT_RC.

    The policy file is relocated by HANGPROOF_POLICY_RC: this never touches /usr/sbin.
    """
    assert "HANGPROOF_POLICY_RC" in SETUP.read_text(), "setup.sh must honour HANGPROOF_POLICY_RC"
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    executable(bin_ / "id", "#!/bin/sh\necho 0\n")
    executable(bin_ / "dpkg-query", "#!/bin/sh\nexit 1\n")
    executable(
        bin_ / "apt-get",
        "#!/bin/sh\n"
        f'if [ -e "$HANGPROOF_POLICY_RC" ]; then echo present >> {tmp_path}/apt-saw-policy; fi\n'
        'if [ "$1" = install ]; then exit "${APT_RC:-0}"; fi\n'
        "exit 0\n",
    )
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    executable(venv / "bin" / "python", "#!/bin/sh\n")
    stamp = venv / ".hangproof-installed"
    stamp.touch()
    future = (REPO / "pyproject.toml").stat().st_mtime + 3600
    os.utime(stamp, (future, future))
    return tmp_path


def run_setup(host: Path, apt_rc: int) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{host / 'bin'}:/usr/bin:/bin",
        "HOME": str(host),
        "HANGPROOF_POLICY_RC": str(host / "policy-rc.d"),
        "HANGPROOF_VENV": str(host / "venv"),
        "APT_RC": str(apt_rc),
    }
    return subprocess.run(["bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=60)


def test_failed_apt_leaves_no_policy_behind(fake_host: Path) -> None:
    result = run_setup(fake_host, apt_rc=100)
    assert result.returncode != 0
    assert (fake_host / "apt-saw-policy").exists(), "apt ran without the policy"
    assert not (fake_host / "policy-rc.d").exists(), "policy-rc.d left behind after apt failed"


def test_setup_twice_and_after_a_failure_is_safe(fake_host: Path) -> None:
    assert run_setup(fake_host, apt_rc=100).returncode != 0
    for _ in range(2):
        result = run_setup(fake_host, apt_rc=0)
        assert result.returncode == 0, result.stderr
        assert not (fake_host / "policy-rc.d").exists()
    assert (fake_host / "apt-saw-policy").read_text().count("present") == 3 * 2


def test_a_policy_the_admin_wrote_is_kept(fake_host: Path) -> None:
    theirs = "#!/bin/sh\n# the admin's own\nexit 0\n"
    executable(fake_host / "policy-rc.d", theirs)
    assert run_setup(fake_host, apt_rc=100).returncode != 0
    assert (fake_host / "policy-rc.d").read_text() == theirs


def test_our_policy_left_by_a_killed_run_is_removed(fake_host: Path) -> None:
    # SIGKILL runs no trap: the next run recognises our file by its marker line.
    match = re.search(r'^\s*policy_marker="([^"]+)"', SETUP.read_text(), re.M)
    assert match, "setup.sh marks the policy-rc.d it writes"
    executable(fake_host / "policy-rc.d", f"#!/bin/sh\n{match[1]}\nexit 101\n")
    assert run_setup(fake_host, apt_rc=0).returncode == 0
    assert not (fake_host / "policy-rc.d").exists()


def test_setup_killed_mid_apt_removes_its_policy(fake_host: Path) -> None:
    # SIGTERM (a CI job cancelled) while apt-get runs: the trap still cleans up.
    executable(
        fake_host / "bin" / "apt-get",
        '#!/bin/sh\nif [ "$1" = install ]; then kill -TERM "$PPID"; sleep 1; fi\nexit 0\n',
    )
    result = run_setup(fake_host, apt_rc=0)
    assert result.returncode != 0
    assert not (fake_host / "policy-rc.d").exists()
