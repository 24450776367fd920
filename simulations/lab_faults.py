"""The lab's faults as nftables rulesets: what :meth:`simulations.lab.Lab.cut` and ``heal`` apply
inside one host's namespace through ``nft -j -f -`` (JSON, never rule text pasted together).

A cut is one ``inet`` table (and, for an unplugged cable, one ``arp`` table) named
:data:`NFT_TABLE`, holding a set of the addresses and prefixes the host no longer talks to; every
ruleset first adds and deletes both tables, so it replaces whatever was there in one transaction.
Removing the namespace removes the tables.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Iterable, Optional

from simulations.netns import run_cmd

__all__ = ["NFT_TABLE", "apply_ruleset", "cut_ruleset", "heal_ruleset"]

NFT_TABLE = "avictl_lab"


def _addr_expr(value: str) -> Any:
    net = ipaddress.IPv4Network(value, strict=False)
    return str(net.network_address) if net.prefixlen == 32 else {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _match(left: Any, right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def heal_ruleset() -> dict[str, Any]:
    """nftables JSON removing the lab's cut tables (adding each first makes the delete always valid)."""
    cmds: list[dict[str, Any]] = []
    for family in ("inet", "arp"):
        table = {"family": family, "name": NFT_TABLE}
        cmds += [{"add": {"table": table}}, {"delete": {"table": table}}]
    return {"nftables": cmds}


def cut_ruleset(peers: Iterable[str], *, harness: Optional[str], arp: bool) -> dict[str, Any]:
    """nftables JSON, applied in one host's namespace, that drops IPv4 to and from ``peers``
    (addresses or prefixes); its own loopback and, when given, ``harness`` stay reachable. With
    ``arp`` it drops ARP to and from them as well (an unplugged cable); without, ARP still flows
    (a link that fails above layer 2). Replaces whatever cut the host had, in one transaction."""
    elements = [_addr_expr(p) for p in sorted(set(peers))]
    if not elements:
        raise ValueError("a cut needs at least one peer")
    cmds = list(heal_ruleset()["nftables"])
    fam = "inet"
    cmds += [
        {"add": {"table": {"family": fam, "name": NFT_TABLE}}},
        {"add": {"set": {"family": fam, "table": NFT_TABLE, "name": "cut", "type": "ipv4_addr", "flags": ["interval"], "elem": elements}}},
    ]
    for chain, hook, iface, field in (("input", "input", "iifname", "saddr"), ("output", "output", "oifname", "daddr")):
        cmds.append({"add": {"chain": {"family": fam, "table": NFT_TABLE, "name": chain, "type": "filter", "hook": hook, "prio": 0,
                                       "policy": "accept"}}})
        rules = [[_match({"meta": {"key": iface}}, "lo"), {"accept": None}]]
        if harness:
            rules.append([_match({"payload": {"protocol": "ip", "field": field}}, harness), {"accept": None}])
        rules.append([_match({"payload": {"protocol": "ip", "field": field}}, "@cut"), {"counter": {"packets": 0, "bytes": 0}}, {"drop": None}])
        cmds += [{"add": {"rule": {"family": fam, "table": NFT_TABLE, "chain": chain, "expr": expr}}} for expr in rules]
    if arp:
        cmds += [
            {"add": {"table": {"family": "arp", "name": NFT_TABLE}}},
            {"add": {"set": {"family": "arp", "table": NFT_TABLE, "name": "cut", "type": "ipv4_addr", "flags": ["interval"], "elem": elements}}},
        ]
        for chain, field in (("input", "saddr ip"), ("output", "daddr ip")):
            cmds.append({"add": {"chain": {"family": "arp", "table": NFT_TABLE, "name": chain, "type": "filter", "hook": chain, "prio": 0,
                                           "policy": "accept"}}})
            rules = []
            if harness:
                rules.append([_match({"payload": {"protocol": "arp", "field": field}}, harness), {"accept": None}])
            rules.append([_match({"payload": {"protocol": "arp", "field": field}}, "@cut"), {"drop": None}])
            cmds += [{"add": {"rule": {"family": "arp", "table": NFT_TABLE, "chain": chain, "expr": expr}}} for expr in rules]
    return {"nftables": cmds}


def apply_ruleset(namespace: str, ruleset: dict[str, Any]) -> None:
    """Apply ``ruleset`` (nftables JSON) in ``namespace`` in one transaction; RuntimeError with nft's message when refused."""
    run_cmd("ip", "netns", "exec", namespace, "nft", "-j", "-f", "-", input=json.dumps(ruleset), check=True)
