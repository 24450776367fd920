"""The root group's global options (:class:`Settings`) and the client they build for a command."""

from __future__ import annotations

from typing import Optional

import attrs
import click

from avictl.client import Client
from avictl.context import Context, context_path, load_context
from avictl.errors import Refused
from avictl.nodes import pid_alive

__all__ = ["Settings", "client_of", "settings"]


@attrs.define
class Settings:
    """Global options; the client is built on first use, so local commands need no context."""

    api: tuple[str, ...] = ()
    token: Optional[str] = None
    deadline: float = 15.0
    tenant: Optional[str] = None
    _client: Optional[Client] = None

    def client(self) -> Client:
        if self._client is None:
            context = load_context() if not (self.api and self.token) else None
            endpoints = [u for value in self.api for u in value.split(",") if u.strip()]
            if not endpoints and context is not None:
                _fail_if_cluster_stopped(context)
                endpoints = context.api_urls
            token = self.token or (context.token if context else None)
            self._client = Client([e.strip() for e in endpoints], token, deadline=self.deadline, tenant=self.tenant)
        return self._client


def _fail_if_cluster_stopped(context: Context) -> None:
    """Say at once that a local cluster is down, instead of retrying for the deadline: every node
    of the context was started here (it has a pid) and none of those processes runs."""
    local = [n for n in context.nodes if n.pid]
    if not local or len(local) != len(context.nodes) or any(pid_alive(n.pid, n.config) for n in local):
        return
    raise Refused(f"the cluster in {context_path()} is not running (no controller process of {', '.join(n.id for n in local)} is alive); "
                  "start it with 'avictl cluster up'")


def settings(ctx: click.Context) -> Settings:
    obj = ctx.find_object(Settings)
    assert obj is not None
    return obj


def client_of(ctx: click.Context) -> Client:
    return settings(ctx).client()
