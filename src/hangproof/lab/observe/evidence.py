"""Evidence the way the report gathered it: the report's wedge, found in ss records.

ss text is parsed by :mod:`hangproof.doctor.ss_text` (:func:`ss_records` is its
lab view) and conntrack text by :mod:`hangproof.doctor.conntrack`, the one
place for each. What is here is pure (records in, findings out) and tested on
recorded output.
"""

from __future__ import annotations

from typing import Any

from hangproof.doctor.ss_text import read_records


def ss_records(text: str, state: str | None = None) -> list[dict[str, Any]]:
    """The lab's evidence dicts (:meth:`~hangproof.doctor.ss_text.SsLine.as_dict`) of ss output.

    >>> [r["local"] for r in ss_records("0 1 198.18.0.1:40000 198.18.0.100:32672", state="SYN-SENT")]
    ['198.18.0.1:40000']
    """
    return [line.as_dict() for line in read_records(text, state)]


#: A broker answers the 8-byte header with Connection.Start within milliseconds;
#: a socket that sent it and heard nothing for this long is the report's wedge.
WEDGE_IDLE_MS = 10_000


def stuck_handshakes(
    records: list[dict[str, Any]], vip: str, node_port: int, min_idle_ms: int = WEDGE_IDLE_MS
) -> list[dict[str, Any]]:
    """Client sockets of one node stuck the report's way, from its ``ss -Htanpie`` records.

    A client socket ESTAB to ``vip:node_port`` that sent bytes (the 8-byte AMQP
    header), received none, and sent nothing for ``min_idle_ms``, whose peer
    socket is in the same namespace (VIP:NodePort, not NATed to a pod) holding
    exactly those bytes unread (Recv-Q 8).

    >>> recs = ss_records(
    ...     'ESTAB 0 0 198.18.0.1:40000 198.18.0.100:32672 users:(("celery",pid=9,fd=3)) '
    ...     'bytes_sent:8 bytes_acked:9 lastsnd:12000\\n'
    ...     'ESTAB 8 0 [::ffff:198.18.0.100]:32672 [::ffff:198.18.0.1]:40000 bytes_received:8')
    >>> [(s["owner"], s["pid"], s["fd"], s["peer_recv_q"]) for s in stuck_handshakes(recs, "198.18.0.100", 32672)]
    [('celery', 9, 3, 8)]
    """
    target = f"{vip}:{node_port}"
    peers = {r["remote"]: r for r in records if r["state"] == "ESTAB" and r["local"] == target}
    stuck = []
    for r in records:
        if r["state"] != "ESTAB" or r["remote"] != target or r["pid"] is None:
            continue
        sent = r.get("bytes_sent") or 0
        idle = r.get("lastsnd")
        if not sent or r.get("bytes_received") or not isinstance(idle, int) or idle < min_idle_ms:
            continue
        peer = peers.get(r["local"])
        if peer is None or peer["recv_q"] != sent:
            continue
        stuck.append(
            {
                "owner": r["owner"],
                "pid": r["pid"],
                "fd": r["fd"],
                "local": r["local"],
                "remote": r["remote"],
                "bytes_sent": sent,
                "bytes_received": 0,
                "idle_ms": idle,
                "peer_recv_q": peer["recv_q"],
                "peer_owner": peer["owner"],
            }
        )
    return stuck
