"""Controllers on three hosts, SEs on three others (the lab): a controller host cut off from the
network loses its SEs to the others within 5 s, the majority keeps taking writes, and the cut node
refuses them (503) until healed (issue 12, lab test 5)."""

from __future__ import annotations

import time
from typing import Iterator, Optional

import pytest

from simulations.lab import Lab
from tests.helpers import wait_until
from tests.lab.conftest import require_lab

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab()
    made = Lab(tmp_path_factory.mktemp("lab-controllers"))
    try:
        made.up(timeout=90)
        yield made
    finally:
        made.close()
    assert made.leftovers() == []


def attached(lab: Lab, se: str, node: Optional[str] = None) -> Optional[str]:
    """The controller API URL SE ``se`` says it streams its slice from (as ``node`` has it)."""
    record = lab.se_record(se, node=node)
    return ((record or {}).get("runtime") or {}).get("connected_to")


def test_a_cut_controller_loses_its_ses_and_its_writes_to_the_majority(lab: Lab) -> None:
    node_of = {url: node for node, url in zip(lab.controllers.ids, lab.api_urls, strict=True)}
    streams = wait_until(lambda: (s := {se: attached(lab, se) for se in ("s1", "s2", "s3")}) and all(s.values()) and s,
                         20, interval=0.2, what="every SE streaming from a controller")
    victim = node_of[streams["s1"]]
    others = [n for n in lab.controllers.ids if n != victim]
    moved = [se for se, url in streams.items() if node_of[url] == victim]
    lab.cut(lab.controller_host(victim))
    cut_at = time.monotonic()
    try:
        def reattached() -> bool:
            return all((url := attached(lab, se, node=others[0])) is not None and node_of[url] != victim for se in moved)

        wait_until(reattached, 10, interval=0.1, what=f"{', '.join(moved)} to stream from another controller")
        took = time.monotonic() - cut_at
        print(f"SEs {moved} reattached {took:.2f} s after {victim} was cut off")
        assert took <= 5.0, f"reattached after {took:.1f} s"
        code, made = lab.request("POST", "/api/pool", {"name": "written-while-cut"}, node=others[1])
        assert code == 201, made

        def refuses() -> Optional[int]:
            code, _ = lab.request("POST", "/api/pool", {"name": "on-the-cut-node"}, node=victim, timeout=15)
            return code if code == 503 else None

        assert wait_until(refuses, 20, interval=0.5, what=f"{victim} to refuse writes") == 503
    finally:
        lab.heal()
    wait_until(lambda: lab.controllers.status(victim) and lab.controllers.status(victim).get("has_quorum"), 30,
               what=f"{victim} to rejoin the majority")
    code, listed = lab.request("GET", "/api/pool?name=written-while-cut", node=victim)
    assert code == 200 and listed["count"] == 1
    code, listed = lab.request("GET", "/api/pool?name=on-the-cut-node", node=others[0])
    assert listed["count"] == 0, "nothing the cut node refused was applied"
