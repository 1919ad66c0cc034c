"""``hangproof probe`` as a user runs it: exit codes, JSON contract, masking, --repeat."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangproof.cli import main
from hangproof.errors import HangproofError
from hangproof.probe import mask_url, parse_amqp_url


@pytest.fixture
def closed_port() -> Iterator[int]:
    # Bound but not listening: the port stays ours and answers SYN with RST.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        yield int(reserved.getsockname()[1])


def test_refused_json_contract_and_exit_1(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["probe", f"amqp://bob:hunter2@127.0.0.1:{closed_port}/", "--json"])
    out, err = capsys.readouterr()
    assert code == 1
    doc = json.loads(out)
    assert doc["verdict"] == "refused"
    assert doc["hint"].startswith("nothing listens")
    assert [s["stage"] for s in doc["stages"]] == ["dns", "tcp-connect"]
    assert set(doc["stages"][0]) == {"stage", "seconds", "ok"}
    assert "hunter2" not in out + err
    assert doc["url"] == f"amqp://bob:***@127.0.0.1:{closed_port}/"


def test_human_output_is_a_table_and_a_verdict(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["probe", f"amqp://guest:guest@127.0.0.1:{closed_port}/"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "tcp-connect" in out and "verdict: refused" in out
    assert "Traceback" not in out + err
    assert "guest:guest" not in out + err


@pytest.mark.parametrize(
    "url",
    ["http://x", "amqp://", "amqp://host:notaport/", "rabbit", "amqp://u:secret@host:99999/"],
)
def test_bad_url_is_one_line_usage_error(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", url]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("hangproof: not an AMQP URL:") and err.count("\n") == 1
    assert "secret" not in err


def test_bad_url_message() -> None:
    with pytest.raises(HangproofError) as info:
        parse_amqp_url("http://x")
    assert str(info.value) == (
        "not an AMQP URL: 'http://x' (expected amqp://user:pass@host:port/vhost)"
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--timeout", "0"], "--timeout"),
        (["--repeat", "0"], "--repeat"),
        (["--interval", "-1"], "--interval"),
    ],
)
def test_bad_options_exit_2(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["probe", "amqp://h/", *args]) == 2
    assert words in capsys.readouterr().err


def test_repeat_json_has_runs_and_summary(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"amqp://guest:pw@127.0.0.1:{closed_port}/"
    code = main(["probe", url, "--json", "--repeat", "3", "--interval", "0"])
    out, err = capsys.readouterr()
    assert code == 1
    doc = json.loads(out)
    assert doc["summary"] == {"refused": 3} and doc["count"] == 3
    assert len(doc["runs"]) == 3 and doc["verdict"] == "refused"
    assert err.count("run ") == 3  # progress on stderr


def test_repeat_human_summary(closed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"amqp://guest:pw@127.0.0.1:{closed_port}/"
    assert main(["probe", url, "--repeat", "2", "--interval", "0"]) == 1
    out = capsys.readouterr().out
    assert "2 runs" in out and "refused" in out


def test_python_dash_m_probe(closed_port: int) -> None:
    # How the lab runs it inside a namespace: `ip netns exec NS python -m hangproof.probe`.
    proc = subprocess.run(
        [sys.executable, "-m", "hangproof.probe", f"amqp://a:b@127.0.0.1:{closed_port}/", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "refused"


@pytest.mark.parametrize(
    ("url", "vhost", "port", "tls"),
    [
        ("amqp://h", "/", 5672, False),
        ("amqp://h/", "/", 5672, False),
        ("amqp://h//", "/", 5672, False),  # kombu's spelling of "/"
        ("amqp://h/%2F", "/", 5672, False),
        ("amqp://h/prod", "prod", 5672, False),
        ("amqps://h:1234/a%2Fb", "a/b", 1234, True),
        ("pyamqp://h:32672/", "/", 32672, False),  # Celery's broker_url spelling
    ],
)
def test_url_parsing(url: str, vhost: str, port: int, tls: bool) -> None:
    parsed = parse_amqp_url(url)
    assert (parsed.vhost, parsed.port, parsed.tls) == (vhost, port, tls)
    assert (parsed.username, parsed.password) == ("guest", "guest")


def test_mask_url() -> None:
    assert mask_url("amqp://u:p%40ss@h/") == "amqp://u:***@h/"
    assert mask_url("see amqp://u:pw@h:1/v and amqps://x:y@z/") == (
        "see amqp://u:***@h:1/v and amqps://x:***@z/"
    )
    assert parse_amqp_url("amqp://u:pw@h/v").masked() == "amqp://u:***@h:5672/v"


# -- the URL off argv: environment variable, --url-file, stdin ------------------


def test_url_from_environment(
    closed_port: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HANGPROOF_URL", f"amqp://bob:env-s3cret@127.0.0.1:{closed_port}/")
    assert main(["probe", "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["url"] == f"amqp://bob:***@127.0.0.1:{closed_port}/"
    assert "env-s3cret" not in out + err


def test_url_from_file(
    closed_port: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HANGPROOF_URL", "amqp://wrong:wrong@127.0.0.1:1/")  # the file wins
    url_file = tmp_path / "broker-url"
    url_file.write_text(f"# the broker\n\namqp://bob:file-s3cret@127.0.0.1:{closed_port}/\n")
    assert main(["probe", "--url-file", str(url_file), "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["url"] == f"amqp://bob:***@127.0.0.1:{closed_port}/"
    assert "file-s3cret" not in out + err


def test_url_from_stdin(
    closed_port: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        sys, "stdin", io.StringIO(f"amqp://bob:in-s3cret@127.0.0.1:{closed_port}/\n")
    )
    assert main(["probe", "--url-file", "-", "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["verdict"] == "refused"
    assert "in-s3cret" not in out + err


def test_url_from_stdin_in_a_real_process(closed_port: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hangproof.probe", "--url-file", "-", "--json"],
        input=f"amqp://bob:pipe-s3cret@127.0.0.1:{closed_port}/\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "refused"
    assert "pipe-s3cret" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("args", "file_text", "words"),
    [
        ([], None, "no broker URL"),
        (["amqp://h/", "--url-file", "{file}"], "amqp://h/\n", "not both"),
        (["--url-file", "{file}"], "# only a comment\n\n", "holds no URL"),
        (["--url-file", "{missing}"], None, "cannot read --url-file"),
    ],
)
def test_url_input_errors_are_one_line(
    args: list[str],
    file_text: str | None,
    words: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("HANGPROOF_URL", raising=False)
    url_file = tmp_path / "url"
    if file_text is not None:
        url_file.write_text(file_text)
    argv = [a.format(file=url_file, missing=tmp_path / "nope") for a in args]
    assert main(["probe", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and words in err, err
    assert "Traceback" not in err
