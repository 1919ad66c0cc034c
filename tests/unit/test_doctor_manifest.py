"""deploy/doctor-daemonset.yaml, rendered and checked: least privilege, probes that hit the
real liveness endpoint, and a command line the doctor CLI accepts.

What no test here can show is whether each privilege is *needed* on a real node; the
manifest says why each one is there, and this test makes sure every one is explained.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "doctor-daemonset.yaml"
#: The capabilities doctor needs, each explained in the manifest's comments.
JUSTIFIED_CAPABILITIES = {"NET_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"}


@pytest.fixture(scope="module")
def daemonset() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    assert len(docs) == 1
    (doc,) = docs
    assert (doc["apiVersion"], doc["kind"]) == ("apps/v1", "DaemonSet")
    return doc


def _pod(ds: dict[str, Any]) -> dict[str, Any]:
    return ds["spec"]["template"]["spec"]


def _container(ds: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod(ds)["containers"]
    return container


def test_selector_matches_the_pod_labels(daemonset: dict[str, Any]) -> None:
    selector = daemonset["spec"]["selector"]["matchLabels"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_security_context_is_least_privilege(daemonset: dict[str, Any]) -> None:
    pod = _pod(daemonset)
    sc = _container(daemonset)["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == JUSTIFIED_CAPABILITIES
    assert len(sc["capabilities"]["add"]) == len(JUSTIFIED_CAPABILITIES)
    seccomp = sc.get("seccompProfile") or pod.get("securityContext", {}).get("seccompProfile")
    assert seccomp == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert not pod.get("hostIPC")
    assert pod["hostNetwork"] is True and pod["hostPID"] is True


def test_every_privilege_is_justified_in_a_comment(daemonset: dict[str, Any]) -> None:
    comments = "\n".join(
        line.split("#", 1)[1] for line in MANIFEST.read_text().splitlines() if "#" in line
    )
    for privilege in [*JUSTIFIED_CAPABILITIES, "hostNetwork", "hostPID", "runAsUser"]:
        assert re.search(rf"\b{privilege}\b:", comments), f"no comment says why {privilege}"


def test_tolerations_are_narrow(daemonset: dict[str, Any]) -> None:
    tolerations = _pod(daemonset).get("tolerations", [])
    for toleration in tolerations:
        # An operator: Exists without a key tolerates every taint, NoExecute included.
        assert toleration.get("key"), toleration
        assert toleration.get("effect") == "NoSchedule", toleration


def _parsed_command(daemonset: dict[str, Any]) -> dict[str, Any]:
    from hangproof.doctor.commands import doctor

    container = _container(daemonset)
    argv = [*container.get("command", []), *container.get("args", [])]
    assert argv[:2] == ["hangproof", "doctor"]
    env = {e["name"]: e for e in container.get("env", [])}
    args = []
    for arg in argv[2:]:
        for name in re.findall(r"\$\((\w+)\)", arg):
            assert name in env, f"{arg} uses ${name}, which the container does not define"
            arg = arg.replace(f"$({name})", "127.0.0.1")
        args.append(arg)
    app = typer.Typer()
    app.command()(doctor)
    command = typer.main.get_command(app)
    with command.make_context("doctor", args) as ctx:  # parses, never runs
        return dict(ctx.params)


def test_command_line_is_one_the_cli_accepts(daemonset: dict[str, Any]) -> None:
    params = _parsed_command(daemonset)
    assert params["watch"] and params["watch"] >= 1
    assert params["metrics_port"]
    env = {e["name"]: e for e in _container(daemonset)["env"]}
    # Bind the node's own address, not every interface of a hostNetwork pod.
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"


def test_probes_point_at_the_real_liveness_endpoint(daemonset: dict[str, Any]) -> None:
    from hangproof.doctor.metrics import DoctorMetrics

    params = _parsed_command(daemonset)
    container = _container(daemonset)
    probe = container["livenessProbe"]["httpGet"]
    port = probe["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    assert port == params["metrics_port"]
    assert probe["path"] == "/healthz"  # /metrics answers even when the scan loop is stuck
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == params["metrics_port"]
    # The paths the manifest names really exist on doctor's server.
    server = DoctorMetrics().serve(0, "127.0.0.1", watch=params["watch"])
    try:
        for path in (probe["path"], annotations["prometheus.io/path"]):
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
                assert r.status == 200
    finally:
        server.close()
    # A stuck loop must be noticed: the probe gives up within a few scan intervals.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness.get("failureThreshold", 3) <= 5 * params["watch"]
