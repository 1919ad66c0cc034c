"""The three node-side fixes from INCIDENT.md, as the lab deploys them.

- ``conntrack-flush``: delete the VIP's conntrack entries right after the VIP
  is added (keepalived ``notify_master``), so the next SYN is NATed afresh.
  Deployed from notify_master it narrows the race but does not close it:
  keepalived runs the script after adding the VIP, and a SYN retransmitted in
  between still reaches the port holder (seed-loop: 1 wedge in 12 cycles).
- ``reject-undnat``: in filter INPUT, reject NodePort traffic that was not
  DNATed with a TCP reset, so a stray SYN fails fast instead of meeting the
  port holder.
- ``no-port-holder``: kube-proxy without port holders (kubernetes PR 108496):
  the stray SYN meets no listener and gets a RST.
"""

from __future__ import annotations

MITIGATIONS = ("none", "conntrack-flush", "reject-undnat", "no-port-holder")


def reject_undnat_rule(node_port: int) -> list[str]:
    """iptables arguments (after ``-I INPUT 1`` / ``-D INPUT``) of the reject rule.

    >>> " ".join(reject_undnat_rule(32672))
    '-p tcp --dport 32672 -m conntrack ! --ctstate DNAT -j REJECT --reject-with tcp-reset'
    """
    return [
        "-p",
        "tcp",
        "--dport",
        str(node_port),
        "-m",
        "conntrack",
        "!",
        "--ctstate",
        "DNAT",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]


def conntrack_flush_command(vip: str) -> list[str]:
    """What notify_master runs after keepalived adds the VIP.

    >>> conntrack_flush_command("198.18.0.100")
    ['conntrack', '-D', '-d', '198.18.0.100']
    """
    return ["conntrack", "-D", "-d", vip]
