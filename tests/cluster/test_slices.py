"""What a Service Engine's slice carries of an HTTP virtual service's application profile: its
http_profile limits, in the SE's units, as the SE reads them."""

from __future__ import annotations

from typing import Any

from cluster import decide as d
from cluster.commands import PlaceVirtualService
from cluster.slices import slice_for
from engine.config import HttpLimits, read_slice
from storage.events import ObjectCreated
from tests.cluster._decide_world import apply, commit, create, fresh_view, register_se


def _vs(view: Any, name: str, addr: str, **extra: Any) -> str:
    vip = create(view, "vsvip", {"name": f"{name}-vip", "vip": [{"ip_address": {"addr": addr, "type": "V4"}}]})
    return create(view, "virtualservice", {"name": name, "services": [{"port": 80}], "vsvip_ref": f"/api/vsvip/{vip}", **extra})


def test_an_http_vs_carries_its_profiles_limits_in_bytes_and_seconds() -> None:
    """A VS on a created HTTP profile gets that profile's limits, one on System-HTTP the defaults,
    one on a profile stored without http_profile (before it existed) the defaults too, and an L4
    VS none; the SE reads them as its HttpLimits."""
    view = fresh_view()
    create(view, "applicationprofile", {"name": "big-heads", "type": "APPLICATION_PROFILE_TYPE_HTTP", "http_profile": {
        "client_max_header_size": 32, "client_max_request_size": 16, "max_header_count": 0, "client_header_timeout": 2500}})
    old = d.new_uuid("applicationprofile")
    commit(view, (ObjectCreated(kind="applicationprofile", uuid=old, name="old", tenant="admin",
                                body={"name": "old", "type": "APPLICATION_PROFILE_TYPE_HTTP"}),))
    vss = [
        _vs(view, "big", "127.10.0.1", application_profile_ref="/api/applicationprofile?name=big-heads"),
        _vs(view, "plain", "127.10.0.2"),
        _vs(view, "old", "127.10.0.3", application_profile_ref=f"/api/applicationprofile/{old}"),
        _vs(view, "tcp", "127.10.0.4", application_profile_name="System-L4-Application"),
    ]
    se = register_se(view, "se1")
    for vs in vss:
        apply(view, PlaceVirtualService(vs, ["se1"], "admin"))
    doc = {"revision": 1, **slice_for(view, se)}
    by_name = {vs["name"]: vs for vs in doc["virtual_services"]}
    assert {"max_header_size": 32768, "max_request_size": 16384, "max_header_count": 0, "header_timeout": 2.5} == by_name["big"]["http_limits"]
    assert "http_limits" not in by_name["tcp"]
    config, refused = read_slice(doc)
    assert {} == refused
    limits = {vs.name: vs.http_limits for vs in config.virtual_services}
    assert HttpLimits(32768, 16384, 0, 2.5) == limits["big"] and 32768 == limits["big"].head_size
    assert HttpLimits() == limits["plain"] == limits["old"] == HttpLimits(12288, 49152, 256, 10.0)
