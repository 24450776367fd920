"""Tests of cluster.decide's shortcuts: the uuid text and the memoized reading of refs."""

from __future__ import annotations

import uuid as uuidlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import decide as d
from tests.cluster.test_views import fresh_view, pool_body


def test_new_uuid_is_kind_dash_uuid4() -> None:
    """new_uuid gives '<kind>-' and the canonical text of a random version 4, RFC 4122 uuid."""
    seen = set()
    for _ in range(500):
        text = d.new_uuid("pool")
        assert text.startswith("pool-")
        parsed = uuidlib.UUID(text[len("pool-"):])
        assert (str(parsed), 4, uuidlib.RFC_4122) == (text[len("pool-"):], parsed.version, parsed.variant)
        seen.add(text)
    assert 500 == len(seen)


_view = fresh_view()
_pool = d.decide_create(_view, "pool", pool_body("p"), tenant="admin", uuid=d.new_uuid("pool")).events[0]
_view.evolve(1, "c1", [_pool])
_REFS = [
    "/api/cloud?name=Default-Cloud", "/api/cloud/?name=Default-Cloud", "/api/cloud?name=Nope", "/api/cloud?x=1", "/api/cloud",
    "https://h/api/cloud?name=Default-Cloud#x", "/api/cloud?name=Default%2DCloud", f"/api/pool/{_pool.uuid}",
    f"/api/pool/{_pool.uuid}#p", f"https://h/api/pool/{_pool.uuid}", _pool.uuid, f"/api/cloud/{_pool.uuid}",
    "/api/pool/pool-00000000-0000-4000-8000-000000000000", "pool-x", "", "cloud", "/api/healthmonitor?name=System-HTTP",
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["cloud", "pool", "healthmonitor"]), st.one_of(st.sampled_from(_REFS), st.text(max_size=12), st.none(), st.integers()),
       st.sampled_from(["admin", "other"]))
def test_resolve_ref_agrees_with_its_definition(target: str, value: object, tenant: str) -> None:
    """The memoized resolve_ref answers, and refuses with the same code, message and field, as _resolve_ref."""

    def outcome(fn: object) -> object:
        try:
            return fn(_view, target, value, tenant, "some_ref")  # type: ignore[operator]
        except d.CommandError as exc:
            return (exc.code, exc.message, exc.field)
        except ValueError as exc:
            return ("ValueError", str(exc))

    assert outcome(d._resolve_ref) == outcome(d.resolve_ref)


@pytest.mark.parametrize("value", _REFS)
def test_resolve_ref_agrees_on_every_form(value: str) -> None:
    """Each ref form a client may send resolves (or is refused) as the unmemoized definition does, twice."""
    for _ in range(2):
        for target in ("cloud", "pool"):
            try:
                expected: object = d._resolve_ref(_view, target, value, "admin", "f")
            except d.CommandError as exc:
                expected = (exc.code, exc.message, exc.field)
            try:
                got: object = d.resolve_ref(_view, target, value, "admin", "f")
            except d.CommandError as exc:
                got = (exc.code, exc.message, exc.field)
            assert expected == got
