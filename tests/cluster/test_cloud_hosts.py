"""A cloud of hosts an operator provides (CLOUD_LINUXSERVER): SEs on its hosts join it, and its
VIPs must lie in a data network of one of its SEs."""

from __future__ import annotations

from typing import Any

import pytest

from cluster import commands as c
from cluster import decide as d
from cluster.views import ConfigView, ref_uuid
from tests.cluster.test_views import commit, fresh_view, proposal_of

CLOUD, GROUP = d.new_uuid("cloud"), d.new_uuid("serviceenginegroup")


def write(view: ConfigView, command: Any) -> str:
    decision = c.decide(view, command, 0.0)
    commit(view, proposal_of(view, decision))
    return decision.uuid


def se_body(name: str, addr: str, mask: int = 24) -> dict[str, Any]:
    return {"name": name, "data_vnics": [{"mac_address": "02:00:00:00:00:01", "if_name": "eth0",
                                          "vnic_networks": [{"ip": {"ip_addr": {"addr": addr}, "mask": mask}}]}]}


@pytest.fixture
def view() -> ConfigView:
    v = fresh_view()
    write(v, c.CreateObject("cloud", {"name": "hosts", "vtype": "CLOUD_LINUXSERVER", "linuxserver_configuration": {
        "hosts": [{"host_ip": {"addr": "10.99.0.21"}}, {"host_ip": {"addr": "10.99.0.22"}}]}}, "admin", CLOUD))
    write(v, c.CreateObject("serviceenginegroup", {"name": "edge", "cloud_ref": f"/api/cloud/{CLOUD}"}, "admin", GROUP))
    return v


def test_an_se_on_a_listed_host_joins_the_cloud_and_its_group(view: ConfigView) -> None:
    uuid = write(view, c.RegisterServiceEngine(se_body("se-21", "10.99.0.21"), d.new_uuid("serviceengine")))
    se = view.get(uuid)
    assert se is not None
    assert (ref_uuid(se.body["cloud_ref"]), ref_uuid(se.body["se_group_ref"])) == (CLOUD, GROUP)
    elsewhere = view.get(write(view, c.RegisterServiceEngine(se_body("se-9", "10.98.0.9"), d.new_uuid("serviceengine"))))
    assert elsewhere is not None and ref_uuid(elsewhere.body["cloud_ref"]) != CLOUD, "an unlisted host stays in the local cloud"


def test_a_vip_of_the_cloud_lies_in_a_data_network_of_its_ses(view: ConfigView) -> None:
    """A VIP no SE host of the cloud can reach, or an SE's own address, is 422 naming the address."""
    def vip(addr: str) -> Any:
        return c.CreateObject("vsvip", {"name": f"v-{addr}", "cloud_ref": f"/api/cloud/{CLOUD}", "vip": [{"ip_address": {"addr": addr}}]}, "admin", d.new_uuid("vsvip"))

    with pytest.raises(d.CommandError) as info:
        c.decide(view, vip("10.99.0.100"), 0.0)
    assert (info.value.code, info.value.field) == (422, "vip[0].ip_address.addr"), "no SE registered yet"
    write(view, c.RegisterServiceEngine(se_body("se-21", "10.99.0.21"), d.new_uuid("serviceengine")))
    write(view, vip("10.99.0.100"))
    for addr, says in (("10.98.0.100", "in no data network"), ("10.99.0.21", "own address")):
        with pytest.raises(d.CommandError) as info:
            c.decide(view, vip(addr), 0.0)
        assert info.value.field == "vip[0].ip_address.addr" and says in info.value.message


def test_a_virtual_service_its_group_and_its_vsvip_share_one_cloud(view: ConfigView) -> None:
    write(view, c.RegisterServiceEngine(se_body("se-21", "10.99.0.21"), d.new_uuid("serviceengine")))
    vip = write(view, c.CreateObject("vsvip", {"name": "v", "cloud_ref": f"/api/cloud/{CLOUD}", "vip": [{"ip_address": {"addr": "10.99.0.100"}}]}, "admin", d.new_uuid("vsvip")))
    body = {"name": "vs", "services": [{"port": 80}], "vsvip_ref": f"/api/vsvip/{vip}", "cloud_ref": f"/api/cloud/{CLOUD}"}
    with pytest.raises(d.CommandError) as info:
        c.decide(view, c.CreateObject("virtualservice", body, "admin", d.new_uuid("virtualservice")), 0.0)
    assert (info.value.code, info.value.field) == (422, "se_group_ref"), "Default-Group is the local cloud's"
    write(view, c.CreateObject("virtualservice", {**body, "se_group_ref": f"/api/serviceenginegroup/{GROUP}"}, "admin", d.new_uuid("virtualservice")))
