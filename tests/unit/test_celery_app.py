"""The lab's one Celery app: each caller's environment gives the settings it had before.

The seed loop's fleet (a profile) and the fault matrix, guard tests and
benchmark (the ``HANGPROOF_*`` knobs) share one module; the figures in the docs
were measured with these exact settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hangproof.lab.clients import celery_app
from hangproof.lab.clients.accounting import Ledger
from hangproof.lab.clients.celery_app import POOLS, PROFILES, make_app

URL = "amqp://guest:guest@198.18.0.100:32672//"
SEED = {
    "broker_connection_timeout": None,
    "control_queue_exclusive": False,
    "event_queue_exclusive": False,
}


def test_profiles_and_pools_keep_the_values_the_docs_were_measured_with() -> None:
    assert PROFILES == {"seed": SEED, "stock": {}, "gevent": {}, "harden": SEED}
    assert POOLS == {
        "seed": ("prefork", 1),
        "stock": ("prefork", 1),
        "gevent": ("gevent", 4),
        "harden": ("prefork", 1),
    }


#: What the other callers set; none of it may change a profile (the fleet's workers
#: inherit the environment of whatever started them).
OTHER_KNOBS = {
    "HANGPROOF_GUARD": "1",
    "HANGPROOF_LATE_ACKS": "1",
    "HANGPROOF_PREFETCH": "4",
    "HANGPROOF_CONNECTION_TIMEOUT": "none",
    "HANGPROOF_BROKER_USE_SSL": '{"cert_reqs": 2}',
}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_profile_acks_late_with_prefetch_one_and_only_harden_is_guarded(profile: str) -> None:
    conf = make_app(URL, profile, env=OTHER_KNOBS).conf
    assert (conf.task_acks_late, conf.worker_prefetch_multiplier) == (True, 1)
    assert not conf.task_reject_on_worker_lost and not conf.broker_use_ssl
    assert (conf.broker_transport == "hangproof.kombu:Transport") == (profile == "harden")
    if profile == "seed":
        assert {k: conf[k] for k in SEED} == SEED
    if profile == "stock":
        # Stock keeps Celery's defaults (control_queue_exclusive exists from
        # Celery 5.4; the oldest supported set, 5.3.0, has no such setting).
        assert conf.broker_connection_timeout == 4
        assert conf.get("control_queue_exclusive", True) is True


def test_the_harden_profile_reads_its_stall_timeout() -> None:
    slow = make_app(URL, "harden", env={"HANGPROOF_STALL_TIMEOUT": "60"}).conf
    default = make_app(URL, "harden", env={}).conf
    assert slow.broker_connection_timeout > default.broker_connection_timeout


def test_without_a_profile_the_knobs_decide() -> None:
    stock = make_app(URL, env={}).conf
    assert (stock.worker_prefetch_multiplier, stock.task_acks_late) == (4, False)
    assert stock.broker_transport != "hangproof.kombu:Transport"
    late = make_app(URL, env={"HANGPROOF_LATE_ACKS": "1", "HANGPROOF_PREFETCH": "1"}).conf
    assert (late.task_acks_late, late.task_reject_on_worker_lost) == (True, True)
    assert late.worker_prefetch_multiplier == 1
    guarded = make_app(URL, env={"HANGPROOF_GUARD": "1", "HANGPROOF_LATE_ACKS": "1"}).conf
    assert guarded.broker_transport == "hangproof.kombu:Transport"
    assert guarded.task_acks_late and guarded.broker_connection_timeout is not None
    # The fault matrix's seed-like cells: no handshake deadline, even guarded.
    for guard in ("0", "1"):
        env = {"HANGPROOF_GUARD": guard, "HANGPROOF_CONNECTION_TIMEOUT": "none"}
        assert make_app(URL, env=env).conf.broker_connection_timeout is None
    ssl = make_app(URL, env={"HANGPROOF_BROKER_USE_SSL": '{"cert_reqs": 2}'}).conf
    assert ssl.broker_use_ssl == {"cert_reqs": 2}


def test_a_users_settings_apply_on_top_of_the_profile() -> None:
    conf = make_app(URL, "seed", "hangproof.lab.clients.celery_app:PROFILES").conf
    assert conf.seed == SEED  # the object's lowercase names, as settings


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="seed, stock, gevent, harden"):
        make_app(URL, "celery3")


def test_every_recording_task_writes_the_one_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HANGPROOF_LEDGER", str(tmp_path / "l"))
    celery_app.record.run("k1")
    celery_app.sleep_then_record.run("k2", 0.0)
    celery_app.seed_record.run("k1")  # the seed loop's task; a second run of k1
    assert sorted(Ledger(tmp_path / "l").executions()) == ["k1", "k1", "k2"]
    monkeypatch.delenv("HANGPROOF_LEDGER")
    celery_app.record.run("k3")  # no ledger: nothing recorded, no error
    assert not Ledger(tmp_path / "l").has_run("k3")
