"""Human output of races: a short story with the report's evidence under it."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from hangproof.lab.engine.topology import Topology

OUTCOME_WORDS = {
    "hang": "HANG: the client waits for Connection.Start that will never come",
    "connected": "connected: the client reached the real broker",
    "reset": "reset: the client failed fast and is free to retry",
    "error": "error: the client failed (see client_result)",
}


def race_story(r: dict[str, Any], topo: Topology) -> str:
    ev = r.get("evidence") or {}
    cs, ps, ct = ev.get("client_socket"), ev.get("peer_socket"), ev.get("conntrack")
    lines = [
        f"Race: client {r['client']} on {r['client_node']}, mitigation {r['mitigation']}",
        f"  1. VIP {topo.vip} left {r['old_holder']}; {r['client_node']} still sends it to "
        f"{r['old_holder']}'s MAC, so the first SYN gets no answer.",
        f"  2. SYN-SENT seen with an un-NATed conntrack entry; VIP added on {r['client_node']} "
        f"at {r['trigger_seconds']} s.",
    ]
    if r.get("connect_seconds") is not None:
        lines.append(f"  3. TCP connected after {r['connect_seconds']} s (the retransmitted SYN).")
    lines.append(
        f"  => {OUTCOME_WORDS.get(r['outcome'], r['outcome'])}"
        + (f" (window {r['window_seconds']:.0f} s)" if r["outcome"] == "hang" else "")
    )
    if r.get("client_result"):
        lines.append(
            f"     client said: {r['client_result'].get('detail')} after {r['client_result'].get('seconds')} s"
        )
    lines.append("")
    lines.append("Evidence, as in the report:")
    if cs:
        lines.append(
            f"  client socket  {cs['state']} {cs['local']} -> {cs['remote']}  "
            f"sent {max(0, (cs.get('bytes_acked') or 1) - 1)} B, received {cs.get('bytes_received', 0)} B"
            + (f", owner {cs['owner']} pid {cs['pid']}" if cs.get("owner") else "")
        )
    else:
        lines.append("  client socket  (gone)")
    if ps:
        lines.append(
            f"  peer socket    {ps['state']} {ps['local']} <- {ps['remote']}  Recv-Q {ps['unread_bytes']}, "
            + (f"owner {ps['owner']}" if ps.get("owner") else "no owning process (never accepted)")
        )
    else:
        lines.append("  peer socket    none on this node (the connection went to a pod)")
    lines.append(
        f"  listener       *:{topo.node_port} owned by {ev.get('listener_owner') or 'nobody'}"
    )
    if ct:
        lines.append(
            f"  conntrack      {'DNAT to ' + str(ct['reply_src']) if ct['dnat'] else 'no DNAT: reply source is ' + str(ct['reply_src']) + ' (the VIP itself)'}"
        )
        lines.append(f"                 {ct['entry']}")
    else:
        lines.append("  conntrack      no entry")
    hooks = ev.get("hooks") or []
    lines.append(
        "  SYNs seen at   "
        + (", ".join(f"{h['hook']} via {h['interface']} x{h['packets']}" for h in hooks) or "none")
    )
    return "\n".join(lines)


def repeat_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of outcomes and the median race time over repeated races."""
    times = [r["race_seconds"] for r in results]
    connects = [r["connect_seconds"] for r in results if r.get("connect_seconds") is not None]
    return {
        "races": len(results),
        "outcomes": dict(Counter(r["outcome"] for r in results)),
        "median_race_seconds": round(statistics.median(times), 3),
        "median_connect_seconds": round(statistics.median(connects), 3) if connects else None,
        "peer_unread_bytes": dict(
            Counter(
                str((r["evidence"].get("peer_socket") or {}).get("unread_bytes")) for r in results
            )
        ),
        "dnat": dict(
            Counter(str((r["evidence"].get("conntrack") or {}).get("dnat")) for r in results)
        ),
    }
