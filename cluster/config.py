"""A controller node's configuration file (written by ``avictl cluster up``, read by ``controller run``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

import attrs

__all__ = ["ConfigError", "NodeConfig", "PeerConfig", "hash_password", "hash_token", "verify_password", "verify_token"]


class ConfigError(ValueError):
    """A node configuration file that cannot be used; the message names the field."""


@attrs.frozen
class PeerConfig:
    node_id: str
    api_url: str
    raft_addr: str


@attrs.frozen
class NodeConfig:
    node_id: str
    data_dir: str
    api_host: str
    api_port: int
    raft_addr: str
    peers: tuple[PeerConfig, ...]
    cluster_secret: str
    admin_user: str
    admin_password_hash: str
    admin_token_hash: str
    durable_journal: bool = True
    #: when set, the leader runs the local cloud: it starts the SEs the log requests as processes on
    #: this host, with their state, logs and pid files under ``<local_cloud_home>/se/<name>/``
    local_cloud_home: str = ""

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @property
    def all_raft_addrs(self) -> list[str]:
        return [self.raft_addr] + [p.raft_addr for p in self.peers]

    def to_json(self) -> dict[str, Any]:
        doc = attrs.asdict(self)
        doc["peers"] = [attrs.asdict(p) for p in self.peers]
        return doc

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_json(), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "NodeConfig":
        try:
            doc = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        fields = {f.name: f for f in attrs.fields(cls)}
        unknown = set(doc) - set(fields)
        if unknown:
            raise ConfigError(f"{path}: unknown field {sorted(unknown)[0]!r}")
        try:
            peers = tuple(PeerConfig(**p) for p in doc.pop("peers", []))
        except TypeError as exc:
            raise ConfigError(f"{path}: peers: {exc}") from None
        missing = [n for n, f in fields.items() if n not in doc and n != "peers" and f.default is attrs.NOTHING]
        if missing:
            raise ConfigError(f"{path}: missing field {missing[0]!r}")
        return cls(peers=peers, **doc)


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000)
    return f"pbkdf2_sha256$100000${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, rounds, salt, digest = stored.split("$")
    except ValueError:
        return False
    if algo != "pbkdf2_sha256":
        return False
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(rounds))
    return hmac.compare_digest(candidate.hex(), digest)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def verify_token(token: str, stored: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored)
