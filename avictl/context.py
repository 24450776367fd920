"""The context file: which cluster ``avictl`` talks to, and how to reach and stop its nodes.

``$AVICTL_HOME/context.json`` (``AVICTL_HOME`` defaults to ``~/.avictl``), mode 0600 because it
holds the admin password and token::

    {"cluster_id", "username", "password", "token",
     "nodes": [{"id", "api", "raft", "pid", "data_dir", "config", "log"}]}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import attrs

from avictl.errors import UsageFault

__all__ = ["CONTEXT_FILE", "Context", "ContextError", "NodeEntry", "avictl_home", "context_path", "load_context", "save_context"]

CONTEXT_FILE = "context.json"


class ContextError(UsageFault):
    """The context file exists but cannot be used."""


@attrs.frozen
class NodeEntry:
    id: str
    api: str
    raft: str
    pid: Optional[int]
    data_dir: str
    config: str
    log: str

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Context:
    cluster_id: str
    username: str
    password: str
    token: str
    nodes: tuple[NodeEntry, ...] = ()

    @property
    def api_urls(self) -> list[str]:
        return [n.api for n in self.nodes]

    def node(self, node_id: str) -> Optional[NodeEntry]:
        return next((n for n in self.nodes if n.id == node_id), None)

    def with_node(self, entry: NodeEntry) -> "Context":
        """This context with ``entry`` replacing the node of the same id (or appended)."""
        nodes = [entry if n.id == entry.id else n for n in self.nodes]
        if self.node(entry.id) is None:
            nodes.append(entry)
        return attrs.evolve(self, nodes=tuple(nodes))

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "username": self.username,
            "password": self.password,
            "token": self.token,
            "nodes": [n.to_json() for n in self.nodes],
        }

    @classmethod
    def from_json(cls, doc: Any, where: str = "context") -> "Context":
        if not isinstance(doc, dict):
            raise ContextError(f"{where}: expected a JSON object")
        for key in ("cluster_id", "username", "password", "token"):
            if not isinstance(doc.get(key), str):
                raise ContextError(f"{where}: {key} must be a string")
        raw_nodes = doc.get("nodes", [])
        if not isinstance(raw_nodes, list):
            raise ContextError(f"{where}: nodes must be a list")
        nodes = []
        names = [f.name for f in attrs.fields(NodeEntry)]
        for i, raw in enumerate(raw_nodes):
            if not isinstance(raw, dict):
                raise ContextError(f"{where}: nodes[{i}] must be an object")
            missing = [n for n in names if n not in raw]
            if missing:
                raise ContextError(f"{where}: nodes[{i}] lacks {missing[0]!r}")
            pid = raw["pid"]
            if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
                raise ContextError(f"{where}: nodes[{i}].pid must be an integer or null")
            text = {n: str(raw[n]) for n in names if n != "pid"}
            nodes.append(NodeEntry(pid=pid, **text))
        return cls(doc["cluster_id"], doc["username"], doc["password"], doc["token"], tuple(nodes))


def avictl_home(environ: Optional[Mapping[str, str]] = None) -> Path:
    env = os.environ if environ is None else environ
    home = env.get("AVICTL_HOME")
    return Path(home).expanduser() if home else Path("~/.avictl").expanduser()


def context_path(home: Optional[Path] = None) -> Path:
    return (home or avictl_home()) / CONTEXT_FILE


def load_context(home: Optional[Path] = None) -> Optional[Context]:
    """The saved context, or ``None`` when there is none."""
    path = context_path(home)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ContextError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ContextError(f"{path}: not valid JSON: {exc}") from None
    return Context.from_json(doc, str(path))


def save_context(context: Context, home: Optional[Path] = None) -> Path:
    """Write the context atomically with mode 0600 (it holds credentials)."""
    home = home or avictl_home()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = context_path(home)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # O_CREAT's mode does not apply to an existing file, and the umask may have narrowed it.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(context.to_json(), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
