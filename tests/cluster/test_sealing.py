"""Secrets at rest: sealing with the cluster's key, bound to the field, deterministic."""

from __future__ import annotations

from typing import Any

import pytest

from cluster import commands as c
from cluster import decide as d
from cluster.sealing import SEALED_PREFIX, Sealer, SealError, is_sealed
from tests.cluster.test_views import commit, fresh_view, proposal_of

SEALER = Sealer("cluster-secret-a")


def test_a_sealed_secret_opens_with_the_same_key_in_the_same_field_only() -> None:
    sealed = SEALER.seal("hunter2", "cloud:vcenter_configuration.password")
    assert sealed.startswith(SEALED_PREFIX) and "hunter2" not in sealed
    assert SEALER.unseal(sealed, "cloud:vcenter_configuration.password") == "hunter2"
    with pytest.raises(SealError):
        SEALER.unseal(sealed, "cloud:vcenter_configuration.username")
    with pytest.raises(SealError):
        Sealer("cluster-secret-b").unseal(sealed, "cloud:vcenter_configuration.password")
    with pytest.raises(SealError):
        SEALER.unseal(SEALED_PREFIX + "not-base64!!", "cloud:vcenter_configuration.password")


def test_sealing_is_deterministic_so_an_unchanged_secret_writes_nothing() -> None:
    assert SEALER.seal("x", "k:p") == SEALER.seal("x", "k:p") != SEALER.seal("y", "k:p")


def _cloud(password: Any) -> dict[str, Any]:
    return {"name": "vc", "vtype": "CLOUD_VCENTER", "vcenter_configuration": {
        "vcenter_url": "https://vc/sdk", "username": "u", "password": password, "privilege": "READ_ACCESS"}}


def test_decide_stores_secrets_sealed_and_carries_the_stored_one_over() -> None:
    """Create stores the password sealed; PUT with the same password, or without it, changes
    nothing; a new password is sealed anew; PATCH keeps the sealed one it does not touch."""
    view = fresh_view()
    created = c.decide(view, c.CreateObject("cloud", _cloud("pw-1"), "admin", "cloud-x"), 0.0, seal=SEALER)
    commit(view, proposal_of(view, created))
    stored = view.get("cloud-x")
    assert stored is not None
    sealed = stored.body["vcenter_configuration"]["password"]
    assert is_sealed(sealed) and SEALER.unseal(sealed, "cloud:vcenter_configuration.password") == "pw-1"
    assert c.decide(view, c.UpdateObject("cloud", "cloud-x", _cloud("pw-1"), "admin"), 0.0, seal=SEALER).events == ()
    without = _cloud("x")
    del without["vcenter_configuration"]["password"]
    assert c.decide(view, c.UpdateObject("cloud", "cloud-x", without, "admin"), 0.0, seal=SEALER).events == ()
    patched = c.decide(view, c.PatchObject("cloud", "cloud-x", {"replace": {"description": "d"}}, "admin"), 0.0, seal=SEALER)
    assert patched.events[0].body["vcenter_configuration"]["password"] == sealed
    changed = c.decide(view, c.UpdateObject("cloud", "cloud-x", _cloud("pw-2"), "admin"), 0.0, seal=SEALER)
    assert SEALER.unseal(changed.events[0].body["vcenter_configuration"]["password"], "cloud:vcenter_configuration.password") == "pw-2"


def test_a_client_cannot_hand_in_a_sealed_value_of_its_own() -> None:
    """A value in sealed form is accepted only where it is what is already stored (PUT of a GET)."""
    view = fresh_view()
    forged = SEALER.seal("chosen", "cloud:vcenter_configuration.password")
    with pytest.raises(d.CommandError) as info:
        c.decide(view, c.CreateObject("cloud", _cloud(forged), "admin", "cloud-y"), 0.0, seal=SEALER)
    assert (info.value.code, info.value.field) == (422, "vcenter_configuration.password")
