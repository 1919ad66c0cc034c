"""The kube-proxy 1.9 rule generator, against a golden iptables-restore text."""

from __future__ import annotations

from pathlib import Path

from hangproof.lab.components.kube_proxy import chain_hash, nat_rules
from hangproof.lab.mitigations import reject_undnat_rule

DATA = Path(__file__).parent.parent / "data" / "lab"
ENDPOINTS = [("198.19.1.2", 5672), ("198.19.2.2", 5672), ("198.19.3.2", 5672)]


def test_matches_golden_text() -> None:
    golden = (DATA / "kube_proxy_1.9_nat.rules").read_text()
    assert nat_rules("openstack/rabbitmq:amqp", 32672, ENDPOINTS) == golden


def test_the_incident_rule_is_last_in_kube_services() -> None:
    text = nat_rules("openstack/rabbitmq:amqp", 32672, ENDPOINTS)
    services = [line for line in text.splitlines() if line.startswith("-A KUBE-SERVICES")]
    assert services[-1].endswith("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    assert '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in text
    assert "-m mark --mark 0x4000/0x4000 -j MASQUERADE" in text


def test_statistic_random_spreads_evenly() -> None:
    text = nat_rules("s:p", 32000, ENDPOINTS)
    probs = [
        line.split("--probability ")[1].split()[0]
        for line in text.splitlines()
        if "--probability" in line
    ]
    # 1/3 then 1/2 then the rest: each endpoint gets a third, as kube-proxy does.
    assert probs == ["0.33333", "0.50000"]
    assert text.count("-j DNAT --to-destination") == 3


def test_chain_names_are_kube_proxy_hashes() -> None:
    svc = chain_hash("KUBE-SVC-", "openstack/rabbitmq:amqp", "tcp")
    assert svc.startswith("KUBE-SVC-") and len(svc) == len("KUBE-SVC-") + 16
    assert svc == chain_hash("KUBE-SVC-", "openstack/rabbitmq:amqp", "tcp")
    assert svc != chain_hash("KUBE-SVC-", "other/svc:amqp", "tcp")


def test_golden_text_is_what_iptables_save_printed_back() -> None:
    # Recorded from a lab node: every rule we wrote came back from the kernel.
    saved = (DATA / "iptables-save-node.txt").read_text()
    assert "--dst-type LOCAL -j KUBE-NODEPORTS" in saved
    assert "-j DNAT --to-destination 198.19.1.2:5672" in saved


def test_reject_undnat_rule() -> None:
    assert reject_undnat_rule(32672) == [
        "-p",
        "tcp",
        "--dport",
        "32672",
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
