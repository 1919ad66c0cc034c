"""No credential in any output: the one masker, the probe's usage errors, argv, logs, events."""

from __future__ import annotations

import logging
import subprocess
from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hangproof.credentials import MASK, mask_argv, mask_url
from hangproof.errors import HangproofError
from hangproof.probe import RESERVED_HINT, parse_amqp_url

# -- the masker ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://u:p@ss@h/", "amqp://u:***@h/"),  # '@' in the password: the last '@' ends it
        ("amqp://u:pa/ss@h:5672/v", "amqp://u:***@h:5672/v"),
        ("amqp://u:pa#ss@h/", "amqp://u:***@h/"),
        ("amqp://u:pa?ss@h/", "amqp://u:***@h/"),
        ("amqp://u:p%40ss@h/", "amqp://u:***@h/"),
        ("amqp://u@h/", "amqp://u@h/"),  # no password: nothing to hide
        ("amqp://h/", "amqp://h/"),
        ("amqp://u:***@h/", "amqp://u:***@h/"),  # idempotent
        ("'amqp://u:pw@h/'", "'amqp://u:***@h/'"),  # inside a repr
        ("see amqp://u:pw@h:1/v and amqps://x:y@z/", "see amqp://u:***@h:1/v and amqps://x:***@z/"),
    ],
)
def test_mask_url_hides_the_whole_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


# Characters a password or user name may hold: the URL-reserved ones that broke the
# old masker, and any printable unicode (no whitespace: a URL cannot carry it raw).
_SPECIAL = st.sampled_from(list("@/#?%:;&=+$,![]'\"*"))
_PRINTABLE = st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"))
_PART = st.text(alphabet=st.one_of(_SPECIAL, _PRINTABLE), min_size=1, max_size=24)
_HOST = st.sampled_from(["rabbit", "10.0.0.7", "[::1]", "vip.example.com"])
_VHOST = st.sampled_from(["", "/", "prod", "%2F"])


def _forms(password: str) -> set[str]:
    return {password, quote(password, safe=""), quote(password)}


def _wrapped(url: str) -> list[str]:
    # A URL as it reaches output: alone, in a sentence, in a repr, in a list's repr.
    return [url, f"cannot connect to {url}: refused", repr(url), repr([url, url])]


@given(user=_PART, password=_PART, host=_HOST, vhost=_VHOST, encode=st.booleans())
def test_masked_url_never_contains_the_password(
    user: str, password: str, host: str, vhost: str, encode: bool
) -> None:
    written_user = quote(user, safe="") if encode else user
    written_password = quote(password, safe="") if encode else password
    url = f"amqp://{written_user}:{written_password}@{host}:5672/{vhost}"
    # What may legitimately show: scheme, user (up to its first ':'), host, vhost
    # and the text around the URL. A password that is part of those proves nothing.
    visible = "".join(_wrapped(f"amqp://{written_user}{MASK}@{host}:5672/{vhost}"))
    assume(not any(form in visible for form in _forms(password)))
    for text in _wrapped(url):
        shown = mask_url(text)
        for form in _forms(password):
            assert form not in shown


@given(st.text())
def test_mask_url_never_raises(text: str) -> None:
    assert isinstance(mask_url(text), str)


@given(user=_PART, password=_PART, host=_HOST, vhost=_VHOST, encode=st.booleans())
def test_parse_never_shows_the_password(
    user: str, password: str, host: str, vhost: str, encode: bool
) -> None:
    """A URL either parses (and its masked form hides the password) or gives one clean error."""
    written_user = quote(user, safe="") if encode else user
    written_password = quote(password, safe="") if encode else password
    url = f"amqp://{written_user}:{written_password}@{host}:5672/{vhost}"
    visible = f"amqp://{written_user}{MASK}@{host}:5672/{vhost}"
    # The error's fixed words, and repr(AmqpUrl)'s field names and decoded user.
    fields = (
        RESERVED_HINT
        + "not an AMQP URL: ('@' after the host) (expected amqp://user:pass@host:port/vhost)"
        + (f"AmqpUrl(scheme='amqps', host='{host}', port=5672, username={user!r}{user}, vhost='/')")
    )
    assume(not any(form in visible + fields + repr([visible, fields]) for form in _forms(password)))
    try:
        parsed = parse_amqp_url(url)
    except HangproofError as exc:
        message = str(exc)
    else:
        if encode:  # percent-encoded credentials always round-trip
            assert (parsed.username, parsed.password) == (user, password)
        message = parsed.masked() + repr(parsed)
    for form in _forms(password):
        assert form not in message


@pytest.mark.parametrize("password", ["s3cr/et99", "s3cr#et99", "s3cr?et99", "12345/et99"])
def test_reserved_character_in_password_is_a_clean_usage_error(password: str) -> None:
    # urllib's own message quoted the text after ':' ("...integer value as 's3cr'").
    with pytest.raises(HangproofError) as info:
        parse_amqp_url(f"amqp://bob:{password}@rabbit:5672/")
    message = str(info.value)
    assert "s3cr" not in message and "et99" not in message and "12345" not in message
    assert "percent-encode" in message and "%2F" in message


def test_percent_encoded_reserved_characters_parse() -> None:
    parsed = parse_amqp_url("amqp://bob:a%2Fb%23c%3Fd%40e@rabbit:5672/")
    assert (parsed.host, parsed.password) == ("rabbit", "a/b#c?d@e")
    assert parse_amqp_url("amqp://bob:p@ss@rabbit/").password == "p@ss"


# -- argv ---------------------------------------------------------------------


def test_mask_argv_hides_rabbitmqctl_passwords_and_cookies() -> None:
    argv = ["rabbitmqctl", "-n", "rabbit@h", "-q", "add_user", "bob", "s3cret"]
    assert mask_argv(argv) == [*argv[:-1], MASK]
    assert mask_argv(["rabbitmqctl", "change_password", "bob", "n3w"])[-1] == MASK
    assert mask_argv(["rabbitmqctl", "authenticate_user", "bob", "pw1"])[-1] == MASK
    assert mask_argv(["x", "--erlang-cookie", "C00KIE"]) == ["x", "--erlang-cookie", MASK]
    assert mask_argv(["x", "--password=pw"]) == ["x", f"--password={MASK}"]
    assert mask_argv(["erl", "-setcookie", "C00KIE"])[-1] == MASK
    assert mask_argv(["celery", "-b", "amqp://u:pw@h//"]) == ["celery", "-b", "amqp://u:***@h//"]
    assert mask_argv(["rabbitmqctl", "list_users"]) == ["rabbitmqctl", "list_users"]


def test_subprocess_errors_from_the_lab_runner_do_not_echo_secrets() -> None:
    from hangproof.lab.engine import processes

    secret_argv = ["sh", "-c", "sleep 5", "sh", "add_user", "bob", "s3cretpw"]
    with pytest.raises(subprocess.TimeoutExpired) as timeout:
        processes.run(secret_argv, timeout=0.2)
    assert "s3cretpw" not in str(timeout.value) and "s3cretpw" not in repr(timeout.value.cmd)
    failing = ["sh", "-c", "exit 3", "sh", "add_user", "bob", "s3cretpw"]
    with pytest.raises(subprocess.CalledProcessError) as failed:
        processes.run(failing, check=True)
    assert failed.value.returncode == 3
    assert "s3cretpw" not in str(failed.value)


def test_rabbitmqctl_error_does_not_echo_the_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from hangproof.lab.components.rabbitmq import RabbitNode
    from hangproof.lab.engine import processes

    def failing_run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 69, "", "Error: unable to perform an operation")

    monkeypatch.setattr(processes, "run", failing_run)
    node = RabbitNode("t", tmp_path, amqp_port=1, epmd_port=2, dist_port=3)  # type: ignore[arg-type]
    with pytest.raises(HangproofError) as info:
        node.ctl("add_user", "bob", "s3cretpw")
    assert "s3cretpw" not in str(info.value)
    assert "add_user bob ***" in str(info.value)


# -- guard: logs and /healthz events -------------------------------------------


def test_guard_events_and_logs_mask_urls(caplog: pytest.LogCaptureFixture) -> None:
    from hangproof.failure import Policy
    from hangproof.guard.runtime import GuardState
    from hangproof.guard.watchdog import Detection

    state = GuardState(Policy(stall_timeout=3))
    state.on_connected(object())
    error = OSError("failed to connect to amqp://bob:s3c@ret@rabbit:5672//")
    with caplog.at_level(logging.WARNING, logger="hangproof.guard"):
        state.on_connection_error(error, Detection.CONNECTION_ERROR)
        logging.getLogger("hangproof.guard").warning("retrying %r", error)
    events = repr(state.health()["events"])
    assert "ret@rabbit" not in events and "s3c" not in events
    assert "amqp://bob:***@rabbit:5672//" in events
    assert "s3c" not in caplog.text and "amqp://bob:***@rabbit" in caplog.text


def test_guard_log_tracebacks_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    import hangproof.guard.runtime  # noqa: F401  (installs the filter on hangproof.guard)

    logger = logging.getLogger("hangproof.guard")
    with caplog.at_level(logging.ERROR, logger="hangproof.guard"):
        try:
            raise ConnectionError("amqp://bob:t0ps3cret@rabbit//")
        except ConnectionError:
            logger.exception("hangproof.guard: round failed")
    assert "t0ps3cret" not in caplog.text
    assert "amqp://bob:***@rabbit//" in caplog.text


# -- doctor: py-spy output -------------------------------------------------------


def test_doctor_py_spy_output_is_masked() -> None:
    from hangproof.doctor.scan import clean_py_spy_dump

    dump = (
        "Process 812: celery -A proj worker -b amqp://bob:p@ss@rabbit:5672//\n"
        "Python v3.11.2 (/usr/bin/python3.11)\n\n"
        'Thread 812 (idle): "MainThread"\n'
        "    _read (amqp/transport.py:640)\n"
        "        url: 'amqp://bob:p@ss@rabbit:5672//'\n"
    )
    cleaned = clean_py_spy_dump(dump)
    assert cleaned is not None and cleaned.startswith("Thread 812")
    assert "p@ss" not in cleaned and "ss@rabbit" not in cleaned
    assert "amqp://bob:***@rabbit:5672//" in cleaned


# -- the CLI's own usage errors ----------------------------------------------------


def test_unquoted_password_with_a_space_is_not_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    # The shell split `amqp://u:pa ss@h` in two; click would echo the second word.
    from hangproof.cli import main

    assert main(["probe", "amqp://bob:s3cr", "et99@rabbit:5672/"]) == 2
    out, err = capsys.readouterr()
    assert "et99" not in out + err and "s3cr" not in out + err
    assert "--url-file" in err
