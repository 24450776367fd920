"""A stranger reaching a controller's Raft port without the cluster secret gets nothing and runs nothing."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import zlib
from pathlib import Path

import pytest

from simulations.local_cluster import LocalCluster

pytestmark = pytest.mark.slow


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.path}",))


def test_unauthenticated_raft_traffic_is_ignored(cluster3: LocalCluster, tmp_path: Path) -> None:
    """Pickled payloads (plain, compressed, framed as pysyncobj frames them) and garbage run nothing and get no data."""
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Marker(str(marker)))
    payloads = [
        evil,
        zlib.compress(evil),
        struct.pack("i", len(zlib.compress(evil))) + zlib.compress(evil),
        struct.pack("i", 9) + b"garbage!!" + os.urandom(64),
    ]
    host, port = cluster3.configs["n1"].raft_addr.split(":")
    answers = b""
    for payload in payloads:
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            sock.sendall(payload)
            sock.settimeout(1.0)
            try:
                while chunk := sock.recv(4096):
                    answers += chunk
            except (socket.timeout, ConnectionResetError):
                pass
    assert not marker.exists()
    assert b"commit" not in answers and b"append_entries" not in answers
    code, _ = cluster3.request("n1", "POST", "/api/pool", {"name": "after-stranger", "servers": []})
    assert code == 201
