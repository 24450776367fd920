"""The configurations of a new local cluster: node ids, addresses, shared secrets, file layout.

``avictl cluster up`` and the test harness :class:`simulations.local_cluster.LocalCluster` (and its
namespaced subclass) build their controllers' :class:`~cluster.config.NodeConfig` here, so every
local cluster is wired the same way: nodes ``n1..nN``, each listing all the others as peers, one
cluster secret, and the admin's password and token stored only as hashes. Nothing here starts a
process or writes a file; the callers do, each its own way.
"""

from __future__ import annotations

import base64
import json
import secrets
import zlib
from pathlib import Path
from typing import Mapping, Optional, Sequence

import attrs

from avictl.nodes import free_ports
from cluster.config import NodeConfig, PeerConfig, hash_password, hash_token

__all__ = [
    "ADMIN_USER", "JOIN_TOKEN_PREFIX", "Credentials", "JoinGrant", "NodeAddress", "NodeLayout",
    "join_token", "loopback_addresses", "node_configs", "node_ids", "read_join_token", "readdress",
]

ADMIN_USER = "admin"


@attrs.frozen
class Credentials:
    """A new cluster's secrets in the clear; node configs keep only the password's and token's hashes."""

    cluster_secret: str = attrs.field(repr=False)
    password: str = attrs.field(repr=False)
    token: str = attrs.field(repr=False)

    @classmethod
    def generate(cls) -> "Credentials":
        return cls(cluster_secret=secrets.token_hex(32), password=secrets.token_urlsafe(16), token=secrets.token_urlsafe(32))


@attrs.frozen
class NodeAddress:
    """Where one controller listens: its API on ``host:api_port``, Raft on ``host:raft_port``."""

    host: str
    api_port: int
    raft_port: int

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def raft_addr(self) -> str:
        return f"{self.host}:{self.raft_port}"


@attrs.frozen
class NodeLayout:
    """Where local node ``id`` keeps its files: ``<nodes_dir>/<id>/`` holds ``node.json``,
    ``controller.log`` and the ``data/`` directory."""

    nodes_dir: Path = attrs.field(converter=Path)

    def node_dir(self, node_id: str) -> Path:
        return self.nodes_dir / node_id

    def data_dir(self, node_id: str) -> Path:
        return self.node_dir(node_id) / "data"

    def config_path(self, node_id: str) -> Path:
        return self.node_dir(node_id) / "node.json"

    def log_path(self, node_id: str) -> Path:
        return self.node_dir(node_id) / "controller.log"


def node_ids(count: int) -> list[str]:
    """``n1`` .. ``n<count>``: node i (0-based) is ``n<i+1>``."""
    return [f"n{i + 1}" for i in range(count)]


def loopback_addresses(count: int, ports: Optional[Sequence[int]] = None, host: str = "127.0.0.1") -> dict[str, NodeAddress]:
    """Node i (0-based) listens on API port ``ports[2i]`` and Raft port ``ports[2i+1]`` of ``host``
    (default: ``2 * count`` ports the kernel reports free)."""
    chosen = list(ports) if ports is not None else free_ports(2 * count, host)
    if len(chosen) != 2 * count:
        raise ValueError(f"{count} nodes need {2 * count} ports, not {len(chosen)}")
    return {node_id: NodeAddress(host, chosen[2 * i], chosen[2 * i + 1]) for i, node_id in enumerate(node_ids(count))}


def _peers(addresses: Mapping[str, NodeAddress], node_id: str) -> tuple[PeerConfig, ...]:
    return tuple(PeerConfig(other, a.api_url, a.raft_addr) for other, a in addresses.items() if other != node_id)


def node_configs(
    layout: NodeLayout,
    addresses: Mapping[str, NodeAddress],
    credentials: Credentials,
    *,
    durable_journal: bool = True,
    local_cloud_home: str = "",
) -> dict[str, NodeConfig]:
    """One config per node of ``addresses`` (in its order), each naming every other node as a peer.

    ``local_cloud_home``: when set, the leader starts the SEs the groups need, under it.
    """
    password_hash, token_hash = hash_password(credentials.password), hash_token(credentials.token)
    return {
        node_id: NodeConfig(
            node_id=node_id,
            data_dir=str(layout.data_dir(node_id)),
            api_host=address.host,
            api_port=address.api_port,
            raft_addr=address.raft_addr,
            peers=_peers(addresses, node_id),
            cluster_secret=credentials.cluster_secret,
            admin_user=ADMIN_USER,
            admin_password_hash=password_hash,
            admin_token_hash=token_hash,
            durable_journal=durable_journal,
            local_cloud_home=local_cloud_home,
        )
        for node_id, address in addresses.items()
    }


def readdress(configs: Mapping[str, NodeConfig], addresses: Mapping[str, NodeAddress]) -> dict[str, NodeConfig]:
    """``configs`` with every node moved to its address in ``addresses`` and every peer list to match."""
    if set(configs) != set(addresses):
        raise ValueError(f"addresses for {sorted(addresses)} do not match the nodes {sorted(configs)}")
    return {
        node_id: attrs.evolve(config, api_host=addresses[node_id].host, api_port=addresses[node_id].api_port,
                              raft_addr=addresses[node_id].raft_addr, peers=_peers(addresses, node_id))
        for node_id, config in configs.items()
    }


# -- forming a cluster across hosts ----------------------------------------------------------------

JOIN_TOKEN_PREFIX = "avjoin1."


@attrs.frozen
class JoinGrant:
    """What ``avictl cluster join`` needs on a new host: that node's config (the cluster secret
    and the admin's hashes in it), the admin's password and token for the host's context, and
    every node's address."""

    cluster_id: str
    node: NodeConfig = attrs.field(repr=False)
    credentials: Credentials
    addresses: dict[str, NodeAddress]


def join_token(grant: JoinGrant) -> str:
    """``grant`` as one line to copy to the other host. It holds the cluster secret: treat it
    as one (hand it over a private channel, never in a ticket or a chat)."""
    doc = {
        "cluster_id": grant.cluster_id,
        "node": grant.node.to_json(),
        "password": grant.credentials.password,
        "token": grant.credentials.token,
        "addresses": {n: [a.host, a.api_port, a.raft_port] for n, a in grant.addresses.items()},
    }
    packed = zlib.compress(json.dumps(doc, separators=(",", ":")).encode())
    return JOIN_TOKEN_PREFIX + base64.urlsafe_b64encode(packed).decode().rstrip("=")


def read_join_token(token: str, data_dir: str) -> JoinGrant:
    """The grant in ``token``, with the node's data directory set to ``data_dir`` (this host's);
    ValueError saying what is wrong."""
    if not token.startswith(JOIN_TOKEN_PREFIX):
        raise ValueError(f"a join token starts with {JOIN_TOKEN_PREFIX!r} (made by 'avictl cluster init')")
    body = token[len(JOIN_TOKEN_PREFIX):].strip()
    try:
        doc = json.loads(zlib.decompress(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))
        node = dict(doc["node"], data_dir=data_dir)
        node["peers"] = tuple(PeerConfig(**p) for p in node["peers"])
        config = NodeConfig(**node)
        addresses = {n: NodeAddress(h, int(a), int(r)) for n, (h, a, r) in doc["addresses"].items()}
        credentials = Credentials(cluster_secret=config.cluster_secret, password=doc["password"], token=doc["token"])
        return JoinGrant(str(doc["cluster_id"]), config, credentials, addresses)
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        raise ValueError(f"the join token is damaged or incomplete ({type(exc).__name__}); copy it again, whole") from None
