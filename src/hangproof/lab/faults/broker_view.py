"""The broker's own view of the clients, for faults that act on them and prove they did.

``rabbitmqctl list_connections`` / ``list_queues`` / the node's log, through
the lab node's :meth:`~hangproof.lab.components.rabbitmq.RabbitNode.ctl` (never a bare
rabbitmqctl). Client connections are those whose peer is not the broker's
own address: on the testbed the matrix's producer runs in the broker's
namespace and dials the broker's address, the clients come from the other
side of the veth.

    >>> parse_connections("<rabbit@h.1.2.3>\\t198.18.200.2\\t41000\\t3\\n")
    [{'pid': '<rabbit@h.1.2.3>', 'peer_host': '198.18.200.2', 'peer_port': 41000, 'heartbeat': 3}]
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from hangproof.lab.components.rabbitmq import RabbitNode


def parse_connections(text: str) -> list[dict[str, Any]]:
    """Rows of ``list_connections pid peer_host peer_port timeout`` (tab-separated)."""
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 4 or not parts[0].startswith("<"):
            continue
        pid, host, port, timeout = parts
        rows.append(
            {
                "pid": pid,
                "peer_host": host,
                "peer_port": int(port) if port.isdigit() else port,
                "heartbeat": int(timeout) if timeout.isdigit() else timeout,
            }
        )
    return rows


def client_connections(node: RabbitNode) -> list[dict[str, Any]]:
    """The broker's connections from clients (peer not the broker's own address)."""
    text = node.ctl("list_connections", "pid", "peer_host", "peer_port", "timeout", timeout=30)
    return [c for c in parse_connections(text) if c["peer_host"] != node.host]


def queue_consumers(node: RabbitNode, queue: str) -> int | None:
    """The broker's consumer count of ``queue``; None if the queue does not exist.

    >>> parse_queue_consumers("q1\\t0\\nq2\\t1\\n", "q2"), parse_queue_consumers("", "q")
    (1, None)
    """
    with contextlib.suppress(Exception):
        return parse_queue_consumers(
            node.ctl("list_queues", "name", "consumers", timeout=30), queue
        )
    return None


def parse_queue_consumers(text: str, queue: str) -> int | None:
    """The ``consumers`` column of ``queue`` in ``list_queues name consumers`` output."""
    for line in text.splitlines():
        name, _, count = line.partition("\t")
        if name.strip() == queue and count.strip().isdigit():
            return int(count)
    return None


def broker_log(node: RabbitNode) -> Path:
    """The node's main log (RABBITMQ_LOGS, see RabbitNode.env)."""
    return node.state_dir / "log" / "rabbit.log"


def log_size(node: RabbitNode) -> int:
    """The log's current size: read from here on with :func:`log_since`."""
    path = broker_log(node)
    return path.stat().st_size if path.exists() else 0


def log_since(node: RabbitNode, offset: int) -> str:
    """What the broker logged after ``offset``."""
    path = broker_log(node)
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")
