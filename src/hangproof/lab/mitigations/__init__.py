"""The three node-side fixes from INCIDENT.md, as the lab deploys them: one plug-in each.

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

A mitigation is a :class:`Mitigation` subclass that declares its ``name`` once;
defining the class registers it (:data:`REGISTRY`, in definition order, which is
the CLI's order). Adding one touches this package only.

    >>> MITIGATIONS
    ('none', 'conntrack-flush', 'reject-undnat', 'no-port-holder')
    >>> make_mitigation("conntrack-flush").on_vip_added("198.18.0.100")
    [['conntrack', '-D', '-d', '198.18.0.100']]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from hangproof.errors import HangproofError
from hangproof.lab.engine import processes

if TYPE_CHECKING:
    from hangproof.lab.engine.lab import Lab

#: Mitigation name -> its plug-in class, in definition order.
REGISTRY: dict[str, type[Mitigation]] = {}


@dataclass
class Mitigation:
    """A node-side fix. ``apply(lab, node)`` deploys it on one node and says whether
    there is anything to undo; ``remove(lab, node)`` undoes it.

    ``on_vip_added(vip)`` lists the commands to run in the namespace of the node
    that just took the VIP: seed-loop hands them to keepalived's notify_master,
    ``lab race`` runs them itself right after it adds the VIP.
    """

    name: ClassVar[str]
    #: Told after "VIP added on ..." when on_vip_added ran something.
    vip_added_note: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None:
            return  # an abstract helper class
        if name in REGISTRY:
            raise TypeError(f"mitigation {name!r} is defined twice")
        REGISTRY[name] = cls

    def apply(self, lab: Lab, node: str) -> bool:
        """Deploy on ``node``; True if :meth:`remove` has something to undo."""
        return False

    def remove(self, lab: Lab, node: str) -> None:
        """Undo :meth:`apply` on ``node``."""

    def on_vip_added(self, vip: str) -> list[list[str]]:
        """Commands for the node that just added ``vip`` (none by default)."""
        return []


@dataclass
class NoMitigation(Mitigation):
    """The seed as it was."""

    name = "none"


@dataclass
class ConntrackFlush(Mitigation):
    """Flush the VIP's conntrack entries once the VIP is added."""

    name = "conntrack-flush"
    vip_added_note = "conntrack flushed"

    def on_vip_added(self, vip: str) -> list[list[str]]:
        return [conntrack_flush_command(vip)]


@dataclass
class RejectUndnat(Mitigation):
    """Reject NodePort SYNs that were not DNATed, with a TCP reset."""

    name = "reject-undnat"

    def apply(self, lab: Lab, node: str) -> bool:
        rule = reject_undnat_rule(lab.topo.node_port)
        processes.run(["iptables", "-I", "INPUT", "1", *rule], netns=lab.topo.ns(node))
        return True

    def remove(self, lab: Lab, node: str) -> None:
        rule = reject_undnat_rule(lab.topo.node_port)
        processes.run(["iptables", "-D", "INPUT", *rule], netns=lab.topo.ns(node), check=False)


@dataclass
class NoPortHolder(Mitigation):
    """kube-proxy without its port holder: stop it; remove starts it again."""

    name = "no-port-holder"

    def apply(self, lab: Lab, node: str) -> bool:
        if not lab.state.find("port-holder", node):
            return False
        lab.stop_port_holder(node)
        return True

    def remove(self, lab: Lab, node: str) -> None:
        lab.start_port_holder(node, lab.state)


MITIGATIONS = tuple(REGISTRY)


def make_mitigation(name: str) -> Mitigation:
    """The mitigation called ``name``; one clear error line for an unknown name."""
    if name not in REGISTRY:
        raise HangproofError(
            f"unknown mitigation {name!r}; choose one of: {', '.join(MITIGATIONS)}"
        )
    return REGISTRY[name]()


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
