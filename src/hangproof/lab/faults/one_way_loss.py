"""one-way-loss: packets of one direction only vanish; the other direction flows on.

Real-world event: an asymmetric failure on the path between worker and broker
(a half-failed bond or LAG member, an asymmetric route whose return path is
black-holed, a stateful firewall on one leg only, a security group changed on
one side). Neither side gets a FIN or RST. What each side sees depends on the
direction:

- ``one-way-loss-in`` (broker -> client dropped): the client hears nothing, not
  even the TCP ACKs of what it sends, so its send buffer fills and a publish
  blocks in ``sendall``; the broker still hears the client's heartbeats and
  keeps the connection. Only the client's own heartbeat check can notice.
- ``one-way-loss-out`` (client -> broker dropped): the client keeps hearing the
  broker's heartbeats, so a receive-side heartbeat check is satisfied, while
  nothing it sends (acks, publishes, Cancel, Close) arrives; its send buffer
  fills. The broker drops the client for missed heartbeats and its FIN does
  arrive.

Upstream reports: kombu#670 (a consumer whose heartbeats are missed hangs
forever in ``basic_cancel``, waiting for a Cancel-Ok that never comes),
kombu#463 (a publish that blocks forever on a dead link), celery#975.

Injected as one iptables DROP rule inside the broker's own namespace, on the
broker's client-facing interface, for the clients' AMQP port: ``OUTPUT
--sport`` for ``in``, ``INPUT --dport`` for ``out`` (the producer in the
broker's namespace is not on that interface and is untouched).

"Publishing enough to fill the send buffer": ``attach()`` starts a *filler* in
the clients' namespace, a stock ``kombu`` producer (no confirms, what
kombu#463's users ran) already connected before the fault. ``inject()`` tells
it to publish 4 KiB messages (at most :data:`FILL_MESSAGES`, to the default
exchange with a routing key no queue has, so the broker discards them) and it
logs each ``publish()`` it starts and each it got through; it blocks once the
socket's send buffer is full. ``heal()`` reads, before the rule goes,
``detail["measured"]``: ``dropped_packets`` (the DROP rule's own counter),
``filler_connected``, ``filler_published_during_fault`` and
``filler_blocked`` (a ``publish()`` started and had not returned a second
later: blocked in ``sendall`` on a full send buffer) and ``filler_error``
(how the blocked publish ended, if it did before the heal: py-amqp 5.4.2
raises ``basic_publish: timed out`` once the socket's timeout passes). ``detail["measured"]`` is a dict the fault fills at heal,
so the matrix's copy of ``detail`` (taken after ``inject()``) shows it.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hangproof.lab.engine import processes
from hangproof.lab.faults import CellContext, Fault, delete_rules, insert_rules

#: Marks our rules, so heal deletes exactly what inject added.
RULE_COMMENT = "hpfault-one-way-loss"
#: Messages the filler publishes at most (x 4 KiB = 16 MiB: above Linux's
#: default wmem_max autotuning ceiling of 4 MiB, so the buffer does fill).
FILL_MESSAGES = 4096
FILL_BYTES = 4 * 1024
#: The filler stops by itself after this long (close() stops it by pid first).
FILL_MAX_SECONDS = 600.0
_PKTS = re.compile(r"^\s*(\d+)\s+\d+\s.*" + RULE_COMMENT, re.MULTILINE)


@dataclass(eq=False, repr=False)
class OneWayLoss(Fault):
    """DROP one direction of the clients' AMQP traffic on the broker's interface."""

    #: The DROP rule acts on every client of the interface and the filler is the
    #: fault's own (started once, :meth:`OneWayLoss.attach`): the profiles of a
    #: matrix run share one injection (one_way_loss_in/_out inherit it).
    parallel = True
    #: "in" (broker -> client packets vanish) or "out" (client -> broker).
    direction: str

    def __post_init__(self) -> None:
        direction = self.direction
        if direction not in ("in", "out"):
            raise ValueError(f"direction must be 'in' or 'out', not {direction!r}")
        self.name = f"one-way-loss-{direction}"
        self.measured: dict[str, Any] = {}
        self.detail: dict[str, Any] = {"direction": direction, "measured": self.measured}
        self._filler: Any = None
        self._fill_go: Path | None = None
        self._fill_log: Path | None = None
        self._fill_mark = 0

    def _rules(self) -> list[list[str]]:
        iface, port = self.target.broker_iface, str(self.target.node.client_port)
        mark = ["-m", "comment", "--comment", RULE_COMMENT, "-j", "DROP"]
        if self.direction == "in":  # broker -> client
            return [["OUTPUT", "-o", iface, "-p", "tcp", "--sport", port, *mark]]
        return [["INPUT", "-i", iface, "-p", "tcp", "--dport", port, *mark]]

    def attach(self, ctx: CellContext) -> None:
        """Start the filler in the clients' namespace, connected and waiting for inject().

        Once per injection: the cells sharing one injection (``parallel``)
        share the filler, a stock kombu producer of its own whose send buffer
        is the one that fills; each cell keeps its own consumer and probes.
        """
        if self._filler is not None or "filler" in self.measured:
            return
        if ctx.client_url.startswith("amqps://"):
            self.measured["filler"] = "skipped over TLS"
            return
        self._fill_go = ctx.work / f"{ctx.queue}.fill-go"
        self._fill_log = ctx.work / f"{ctx.queue}.fill.log"
        self._fill_go.unlink(missing_ok=True)
        self._fill_log.unlink(missing_ok=True)
        argv = [sys.executable, "-m", __name__, ctx.client_url, str(self._fill_go)]
        self._filler = processes.spawn(argv, netns=ctx.client_netns, log=self._fill_log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "connected" not in self._fill_text():
            time.sleep(0.2)
        self.measured["filler_connected"] = "connected" in self._fill_text()

    def _fill_text(self) -> str:
        log = self._fill_log
        return log.read_text(errors="replace") if log is not None and log.exists() else ""

    def _fill_count(self) -> int:
        return self._fill_text().count("published ")

    def _fill_started(self) -> int:
        return self._fill_text().count("publishing ")

    def inject(self) -> None:
        """Insert the DROP rule, then let the filler publish into the dead direction."""
        insert_rules(self.target.broker_netns, self._rules())
        self._fill_mark = self._fill_count()
        if self._fill_go is not None:
            self._fill_go.write_text("go")

    def _dropped_packets(self) -> int | None:
        chain = "OUTPUT" if self.direction == "in" else "INPUT"
        result = processes.run(
            ["iptables", "-w", "5", "-L", chain, "-v", "-x", "-n"],
            netns=self.target.broker_netns,
            check=False,
            timeout=15,
        )
        found = _PKTS.search(result.stdout)
        return int(found.group(1)) if found else None

    def heal(self) -> None:
        """Record what the fault did (dropped packets, the filler's progress), delete the rule."""
        if "dropped_packets" not in self.measured:  # first heal only
            self.measured["dropped_packets"] = self._dropped_packets()
            if self._filler is not None:
                before = self._fill_count()
                time.sleep(1.0)
                after = self._fill_count()
                self.measured["filler_published_during_fault"] = after - self._fill_mark
                self.measured["filler_blocked"] = after == before < self._fill_started()
                errors = [ln for ln in self._fill_text().splitlines() if ln.startswith("error ")]
                self.measured["filler_error"] = errors[0] if errors else None
        delete_rules(self.target.broker_netns, self._rules())

    def close(self) -> None:
        """Heal, then stop the filler by pid."""
        self.heal()
        if self._filler is not None:
            processes.stop_pid(self._filler.pid, grace=2)
            self._filler = None


def fill(url: str, go: Path) -> None:
    """The filler: connect, wait for ``go``, publish :data:`FILL_MESSAGES` x 4 KiB (bounded)."""
    from kombu import Connection, Producer

    deadline = time.monotonic() + FILL_MAX_SECONDS
    with Connection(url, connect_timeout=5) as conn:
        conn.connect()
        # Open the channel now: a publish during the fault must block on the
        # full send buffer, not on a Channel.OpenOk that cannot arrive.
        producer = Producer(conn.channel())
        print("connected", flush=True)
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        body = b"x" * FILL_BYTES
        started = time.monotonic()
        for i in range(FILL_MESSAGES):
            if time.monotonic() > deadline:
                return
            print(f"publishing {i}", flush=True)
            try:
                producer.publish(body, exchange="", routing_key="hpfault-nowhere", retry=False)
            except Exception as exc:  # what a stock publisher sees: record it, stop
                print(f"error after {time.monotonic() - started:.1f}s: {exc!r}"[:200], flush=True)
                return
            print(f"published {i}", flush=True)


if __name__ == "__main__":
    fill(sys.argv[1], Path(sys.argv[2]))
