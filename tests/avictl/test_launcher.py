"""The one place local clusters get their node configs: ids, addresses, peers, secrets, layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from avictl.launcher import Credentials, NodeAddress, NodeLayout, loopback_addresses, node_configs, node_ids, readdress
from cluster.config import verify_password, verify_token
from simulations.local_cluster import LocalCluster


def test_node_ids_count_from_one() -> None:
    """Node i (0-based) is n<i+1>."""
    assert ["n1", "n2", "n3"] == node_ids(3)


def test_given_ports_alternate_api_and_raft() -> None:
    """Node i gets API port ports[2i] and Raft port ports[2i+1]."""
    addresses = loopback_addresses(2, [7000, 7001, 7002, 7003])
    assert {"n1": NodeAddress("127.0.0.1", 7000, 7001), "n2": NodeAddress("127.0.0.1", 7002, 7003)} == addresses


def test_free_ports_are_distinct() -> None:
    """Without ports every API and Raft port of every node differs."""
    addresses = loopback_addresses(3)
    ports = [p for a in addresses.values() for p in (a.api_port, a.raft_port)]
    assert 6 == len(set(ports))


def test_port_count_must_match() -> None:
    """Too few ports for the nodes is refused by name."""
    with pytest.raises(ValueError, match="3 nodes need 6 ports, not 4"):
        loopback_addresses(3, [1, 2, 3, 4])


def test_every_node_names_every_other_as_peer(tmp_path: Path) -> None:
    """Each config lists all the other nodes, in id order, at their addresses."""
    addresses = loopback_addresses(3, list(range(7000, 7006)))
    configs = node_configs(NodeLayout(tmp_path), addresses, Credentials.generate())
    peers = {n: [(p.node_id, p.api_url, p.raft_addr) for p in c.peers] for n, c in configs.items()}
    assert [("n1", "http://127.0.0.1:7000", "127.0.0.1:7001"), ("n3", "http://127.0.0.1:7004", "127.0.0.1:7005")] == peers["n2"]
    assert ["n2", "n3"] == [p[0] for p in peers["n1"]]
    assert "127.0.0.1:7003" == configs["n2"].raft_addr and "http://127.0.0.1:7002" == configs["n2"].api_url


def test_configs_hold_hashes_not_secrets(tmp_path: Path) -> None:
    """Every node shares the cluster secret; the admin's password and token appear only as hashes."""
    credentials = Credentials.generate()
    configs = node_configs(NodeLayout(tmp_path), loopback_addresses(2, [1, 2, 3, 4]), credentials)
    for config in configs.values():
        assert credentials.cluster_secret == config.cluster_secret
        assert verify_password(credentials.password, config.admin_password_hash)
        assert verify_token(credentials.token, config.admin_token_hash)
        assert credentials.password not in str(config.to_json()) and credentials.token not in str(config.to_json())


def test_credentials_repr_hides_the_secrets() -> None:
    """A logged Credentials value shows none of its secrets."""
    credentials = Credentials.generate()
    assert credentials.token not in repr(credentials) and credentials.password not in repr(credentials)


def test_layout_puts_each_node_in_its_own_directory(tmp_path: Path) -> None:
    """Config, log and data of node n2 live under <nodes_dir>/n2/."""
    layout = NodeLayout(tmp_path)
    config = node_configs(layout, loopback_addresses(2, [1, 2, 3, 4]), Credentials.generate())["n2"]
    assert (tmp_path / "n2" / "node.json", tmp_path / "n2" / "controller.log") == (layout.config_path("n2"), layout.log_path("n2"))
    assert str(tmp_path / "n2" / "data") == config.data_dir


def test_readdress_moves_nodes_and_their_peers(tmp_path: Path) -> None:
    """Readdressed configs listen at the new addresses and name their peers there; the rest is kept."""
    configs = node_configs(NodeLayout(tmp_path), loopback_addresses(2, [1, 2, 3, 4]), Credentials.generate(), durable_journal=False)
    moved = readdress(configs, {"n1": NodeAddress("10.0.0.11", 7001, 7002), "n2": NodeAddress("10.0.0.12", 7001, 7002)})
    assert ("10.0.0.12", 7001, "10.0.0.12:7002") == (moved["n2"].api_host, moved["n2"].api_port, moved["n2"].raft_addr)
    assert [("n2", "http://10.0.0.12:7001", "10.0.0.12:7002")] == [(p.node_id, p.api_url, p.raft_addr) for p in moved["n1"].peers]
    assert (False, configs["n1"].cluster_secret) == (moved["n1"].durable_journal, moved["n1"].cluster_secret)


def test_local_cluster_wires_its_nodes_through_the_launcher(tmp_path: Path) -> None:
    """LocalCluster's configs use its layout, and its password and token match the hashes."""
    cluster = LocalCluster(tmp_path, nodes=3, durable_journal=False)
    assert ["n1", "n2", "n3"] == cluster.ids
    for node_id, config in cluster.configs.items():
        assert [n for n in cluster.ids if n != node_id] == [p.node_id for p in config.peers]
        assert str(tmp_path / node_id / "data") == config.data_dir and not config.durable_journal
        assert verify_password(cluster.password, config.admin_password_hash)
        assert verify_token(cluster.token, config.admin_token_hash)
    assert tmp_path / "n2" / "node.json" == cluster.config_path("n2")
