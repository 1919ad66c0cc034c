"""harden()'s publish path: one deadline over every retry, and a Basic.Return is an error.

Fake brokers on loopback (no root): one that accepts TCP and never speaks (each
handshake attempt runs into its deadline, as a partitioned node's does), and one
that confirms a mandatory publish only after returning it (Basic.Return, then
Basic.Ack: what RabbitMQ does when no queue is bound).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import amqp
import pytest
from celery import Celery
from kombu import Connection, Producer
from pamqp import body, commands, frame, header, heartbeat

from hangproof.celery import harden
from hangproof.failure import Policy
from hangproof.guard import publishing
from hangproof.guard.errors import PublishTimeout, PublishUnroutable
from hangproof.guard.publishing import GuardProducer, PublishDeadline
from hangproof.guard.transport import GuardConnection

SLACK = 1.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_deadline_refuses_a_retry_that_would_sleep_past_it() -> None:
    clock = FakeClock()
    deadline = PublishDeadline(7.5, clock=clock)
    deadline.on_retry(OSError("refused"), 2.0)  # 2 s of 7.5: fine
    clock.now += 7.0
    assert deadline.remaining() == pytest.approx(0.5)
    with pytest.raises(PublishTimeout, match=r"within publish_timeout 7\.5 s") as raised:
        deadline.on_retry(OSError("refused"), 1.0)
    assert "2 retry round(s)" in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)
    assert not isinstance(raised.value, OSError)  # kombu's ensure() must not retry it


def test_nested_deadline_keeps_the_earlier_and_errback_is_inert_outside() -> None:
    clock = FakeClock()
    publishing.deadline_errback(OSError("x"), 1e9)  # no publish running: no-op
    assert publishing.remaining(5.0) == 5.0
    with publishing.bounded(PublishDeadline(2.0, clock=clock)):
        with publishing.bounded(PublishDeadline(10.0, clock=clock)):
            assert publishing.remaining(5.0) == 2.0
        clock.now += 3.0
        assert publishing.remaining(5.0) == 0.0
        with pytest.raises(PublishTimeout):
            publishing.deadline_errback(OSError("x"), 0)
    assert publishing.current() is None


def test_retry_policy_gets_the_deadline_errback_and_keeps_the_callers() -> None:
    seen: list[float] = []
    policy = publishing.bounded_retry_policy(
        {"max_retries": 3, "errback": lambda exc, interval: seen.append(interval)}
    )
    assert policy["max_retries"] == 3
    policy["errback"](OSError("x"), 0.5)
    assert seen == [0.5]
    assert publishing.bounded_retry_policy(policy)["errback"] is policy["errback"]


@contextlib.contextmanager
def mute_broker() -> Iterator[int]:
    """Accepts TCP connections and never sends a byte (a paused or partitioned node)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        born = time.monotonic()
        while not stop.is_set() and time.monotonic() - born < 60:
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for s in held:
            s.close()
        listener.close()


def hardened_app(port: int, stall: float) -> tuple[Celery, Policy]:
    app = Celery("bound", broker=f"amqp://guest:guest@127.0.0.1:{port}//")
    app.conf.task_ignore_result = True
    policy = harden(app, Policy(stall_timeout=stall), consuming_probe=False)
    return app, policy


def test_celery_send_task_all_retries_within_publish_timeout() -> None:
    # harden()'s retry policy is 3 retries, and kombu nests the same policy
    # in the connection its channel opens: every handshake attempt runs for
    # handshake_deadline, so without one total deadline this takes many
    # times publish_timeout (measured on the cluster-partition cell: 11-14 s
    # for 7.5 s).
    with mute_broker() as port:
        app, policy = hardened_app(port, stall=2.0)
        limit = float(policy.publish_timeout or 0)
        assert limit == 1.0
        assert app.conf.task_publish_retry_policy["max_retries"] >= 1
        started = time.monotonic()
        with pytest.raises(PublishTimeout, match=r"within publish_timeout 1\.0 s"):
            app.send_task("hangproof.record", args=("k",), queue="q")
        elapsed = time.monotonic() - started
    assert elapsed < limit + SLACK * 0.5, elapsed


def test_kombu_producer_without_the_guard_is_unchanged() -> None:
    conn = Connection("amqp://127.0.0.1:1//")
    assert publishing.publish_limit(conn) is None
    assert publishing.guarded_producer_class(Producer) is GuardProducer


def _send(conn: socket.socket, channel: int, value: object) -> None:
    conn.sendall(frame.marshal(value, channel))


@contextlib.contextmanager
def returning_broker(mute: frozenset[str] = frozenset(), drip: float = 0.0) -> Iterator[int]:
    """Answers declares; returns (312 NO_ROUTE) then confirms every mandatory publish.

    A publish without ``mandatory`` is confirmed and dropped, as RabbitMQ does
    when no queue is bound (the queue-deleted fault's lost task). The methods
    in ``mute`` get no answer at all (a partitioned node's declares); with
    ``drip`` > 0 it sends a heartbeat frame every ``drip`` s all the same
    (the partitioned node's link is alive).
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.recv(8)
        _send(conn, 0, commands.Connection.Start(server_properties={}, mechanisms="PLAIN"))
        if drip:
            conn.settimeout(drip)
        buf, tags, publish = b"", 0, None
        born = time.monotonic()
        while not stop.is_set() and time.monotonic() - born < 30:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                if drip:
                    with contextlib.suppress(OSError):
                        _send(conn, 0, heartbeat.Heartbeat())
                    continue
                return
            except OSError:
                return
            if not data:
                return
            buf += data
            while buf:
                try:
                    used, channel, value = frame.unmarshal(buf)
                except Exception:
                    break
                buf = buf[used:]
                name = getattr(value, "name", "")
                if name in mute:
                    continue
                reply = {
                    "Connection.StartOk": commands.Connection.Tune(0, 131072, 0),
                    "Connection.Open": commands.Connection.OpenOk(),
                    "Channel.Open": commands.Channel.OpenOk(),
                    "Confirm.Select": commands.Confirm.SelectOk(),
                    "Exchange.Declare": commands.Exchange.DeclareOk(),
                    "Queue.Bind": commands.Queue.BindOk(),
                    "Channel.Close": commands.Channel.CloseOk(),
                    "Connection.Close": commands.Connection.CloseOk(),
                }.get(name)
                if name == "Queue.Declare":
                    reply = commands.Queue.DeclareOk(value.queue or "q", 0, 0)
                if name == "Basic.Consume":
                    reply = commands.Basic.ConsumeOk(value.consumer_tag or "ctag")
                if name == "Basic.Cancel":
                    reply = commands.Basic.CancelOk(value.consumer_tag)
                if reply is not None:
                    _send(conn, 0 if name.startswith("Connection") else channel, reply)
                if name == "Basic.Publish":
                    publish = value
                elif isinstance(value, body.ContentBody) and publish is not None:
                    tags += 1
                    if not publish.mandatory:  # RabbitMQ drops it silently, and confirms
                        _send(conn, channel, commands.Basic.Ack(tags))
                        publish = None
                        continue
                    _send(conn, channel, commands.Basic.Return(312, "NO_ROUTE",
                                                               publish.exchange,
                                                               publish.routing_key))  # fmt: skip
                    _send(conn, channel, header.ContentHeader(0, len(value.value),
                                                              commands.Basic.Properties()))  # fmt: skip
                    _send(conn, channel, body.ContentBody(value.value))
                    _send(conn, channel, commands.Basic.Ack(tags))
                    publish = None

    def serve() -> None:
        born = time.monotonic()
        while not stop.is_set() and time.monotonic() - born < 30:
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("drip", [0.0, 0.3], ids=["silent", "heartbeats"])
def test_a_declare_the_broker_never_answers_ends_within_publish_timeout(drip: float) -> None:
    # cluster-partition x celery-prefork+harden (docs/fault-matrix-ci-run.md):
    # the publish raised PublishTimeout after 12.1 s for publish_timeout 7.5 s,
    # from one attempt: the connect was bounded, the confirm wait was bounded,
    # but the declares before the publish waited for the broker's answer with
    # no timeout (a node on the minority side of a partition does not answer
    # a queue declare until it pauses and resets the connection). Its link
    # stays alive meanwhile: heartbeats kept py-amqp's wait going (the same
    # timeout again per frame: 10.2 s for 7.5 s on cluster-partition x kombu+guard).
    with returning_broker(mute=frozenset({"Queue.Declare", "Exchange.Declare"}), drip=drip) as port:
        app, policy = hardened_app(port, stall=2.0)
        limit = float(policy.publish_timeout or 0)
        started = time.monotonic()
        with pytest.raises(PublishTimeout, match="no answer from the broker"):
            app.send_task("hangproof.record", args=("k",), queue="partitioned-q")
        elapsed = time.monotonic() - started
    assert elapsed < limit + SLACK * 0.5, elapsed


def test_guard_channel_turns_a_basic_return_into_publish_unroutable() -> None:
    with returning_broker() as port:
        conn = GuardConnection(host=f"127.0.0.1:{port}", publish_timeout=2.0)
        conn.connect()
        try:
            channel = conn.channel()
            with pytest.raises(PublishUnroutable, match="312 NO_ROUTE"):
                channel.basic_publish(amqp.Message("x"), "ex", "gone", True)
            # The next publish on the same channel is judged on its own: not
            # mandatory, confirmed (and dropped) without a return.
            channel.basic_publish(amqp.Message("y"), "ex", "gone", False)
            with pytest.raises(PublishUnroutable):
                channel.basic_publish(amqp.Message("z"), "ex", "gone", True)
        finally:
            conn.collect()


def test_hardened_send_task_is_mandatory_and_a_return_is_an_error() -> None:
    with returning_broker() as port:
        app, _ = hardened_app(port, stall=4.0)
        started = time.monotonic()
        with pytest.raises(PublishUnroutable, match="no queue took it"):
            app.send_task("hangproof.record", args=("k",), queue="deleted-queue")
        assert time.monotonic() - started < 2.0  # an answer, not a retry loop


def test_hardened_broadcast_with_no_worker_is_no_reply_not_an_error() -> None:
    # inspect().ping() publishes to Celery's fanout pidbox through the same
    # producer pool as tasks. No worker listening is an ordinary answer (no
    # replies), as with stock Celery; made mandatory, the broker returns the
    # broadcast and every inspect()/control call raised PublishUnroutable
    # (the warm-up ping of tests/lab/test_faults_calls.py).
    with returning_broker() as port:
        app, _ = hardened_app(port, stall=4.0)
        started = time.monotonic()
        assert app.control.inspect(timeout=0.3).ping() is None
        assert app.control.broadcast("ping", reply=False) is None
        assert time.monotonic() - started < 2.0
        # A task to a queue nobody has is still an error on the same app.
        with pytest.raises(PublishUnroutable, match="no queue took it"):
            app.send_task("hangproof.record", args=("k",), queue="deleted-queue")


def test_pidbox_reply_is_not_mandatory_but_a_queue_publish_is() -> None:
    # A worker's control reply (kombu marks it with a "ticket" header) to a
    # caller that has gone is dropped by kombu on purpose ("no one is
    # expecting a reply"): it must not raise in the worker.
    with returning_broker() as port:
        app, _ = hardened_app(port, stall=4.0)
        with app.producer_or_acquire() as producer:
            assert isinstance(producer, GuardProducer)
            producer.publish({"ok": "pong"}, exchange="reply.celery.pidbox",
                             routing_key="gone", headers={"ticket": "t1"}, retry=False)  # fmt: skip
            with pytest.raises(PublishUnroutable):
                producer.publish({"x": 1}, exchange="", routing_key="gone", retry=False)
