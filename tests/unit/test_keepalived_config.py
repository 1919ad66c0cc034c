"""keepalived.conf generation: the report's check, the VIP, the notify hooks."""

from __future__ import annotations

from pathlib import Path

from hangproof.lab.components.keepalived import (
    KeepalivedNode,
    KeepalivedSpec,
    keepalived_config,
    read_events,
)


def test_config_has_the_reports_vrrp_script_and_the_vip() -> None:
    text = keepalived_config(KeepalivedSpec(node="n1", router_id="hpc-n1"))
    assert 'script "/usr/bin/curl 127.0.0.1:8978"' in text
    assert "interval 2" in text and "fall 2" in text
    assert "198.18.0.100/32 dev eth0" in text
    assert "track_script" in text and "check_for_vip" in text
    assert "script_user root" in text and "enable_script_security" not in text
    # Without hooks no notify line (keepalived would run a missing path).
    assert "notify_master" not in text
    assert text.count("{") == text.count("}")


def test_notify_hooks_run_from_scripts_in_the_nodes_directory(tmp_path: Path) -> None:
    spec = KeepalivedSpec(
        node="n2", router_id="hpc-n2", notify_master=["conntrack -D -d 198.18.0.100"]
    )
    ka = KeepalivedNode(spec, "hpc-n2", tmp_path / "keepalived-n2")
    ka.write_files()
    conf = ka.config_path.read_text()
    master = tmp_path / "keepalived-n2" / "notify-master.sh"
    assert f"notify_master {master}" in conf
    script = master.read_text()
    assert script.startswith("#!/bin/sh\n")
    assert "conntrack -D -d 198.18.0.100 || true" in script
    assert master.stat().st_mode & 0o111
    # The transitions are logged for the loop's timing.
    assert "events.log" in script


def test_argv_keeps_keepalived_in_the_foreground_with_per_node_pid_files(tmp_path: Path) -> None:
    ka = KeepalivedNode(KeepalivedSpec(node="n3", router_id="x"), "hpc-n3", tmp_path)
    argv = ka.argv()
    assert "--dont-fork" in argv and "--vrrp" in argv
    for flag in ("--pid", "--vrrp_pid", "--checkers_pid"):
        assert argv[argv.index(flag) + 1].startswith(str(tmp_path))


def test_unicast_peers_are_optional() -> None:
    text = keepalived_config(
        KeepalivedSpec(
            node="n1",
            router_id="r",
            unicast_src="198.18.0.1",
            unicast_peers=("198.18.0.2", "198.18.0.3"),
        )
    )
    assert "unicast_src_ip 198.18.0.1" in text and "198.18.0.3" in text


def test_read_events_orders_transitions_across_nodes(tmp_path: Path) -> None:
    (tmp_path / "keepalived-n1").mkdir()
    (tmp_path / "keepalived-n2").mkdir()
    (tmp_path / "keepalived-n1" / "events.log").write_text("12.5 n1 master\ngarbage\n")
    (tmp_path / "keepalived-n2" / "events.log").write_text("10.0 n2 backup\n")
    assert read_events(tmp_path) == [(10.0, "n2", "backup"), (12.5, "n1", "master")]
