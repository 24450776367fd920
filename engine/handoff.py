"""The data plane and the HA coordinator as each sees the other, so that neither imports the other.

``engine.dataplane.DataPlane`` is given a ``HandoffFactory`` (the agent builds one from
``engine.ha_coordinator.HaCoordinator``) and calls it once, with itself; what it gets back is a
``VipHandoff``: the few calls the data plane makes to decide which listeners accept, plus the
status and change callback the agent reports. The coordinator sees the data plane only as
``ServedListeners``: the listeners it gates and moves sockets for, and the connection count it
sends on its heartbeats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Protocol

from engine.config import SliceConfig, VirtualServiceConfig
from engine.listener import Listener

__all__ = ["HandoffFactory", "ServedListeners", "VipHandoff"]


class ServedListeners(Protocol):
    """The data plane as the HA coordinator reads it."""

    backlog: int

    def listeners_of(self, vs_uuid: str) -> list[Listener]:
        """The current (not retired) listeners of one VS."""
        ...

    def listener_at(self, address: tuple[str, int]) -> Optional[Listener]:
        ...

    def open_connections(self) -> int:
        ...


class VipHandoff(Protocol):
    """Which SE of this host accepts on each managed VS, as the data plane and the agent ask it."""

    #: called when this SE's role for a VS changes (a takeover among them), so it is reported at once
    on_change: Optional[Callable[[], None]]

    def start(self) -> None:
        """Begin handing off (idempotent; needs the running loop); called at the start of every apply."""
        ...

    def manages(self, vs: VirtualServiceConfig) -> bool:
        """True: ``vs``'s listeners accept only when the handoff says so; the data plane must not start them."""
        ...

    def attach(self, listener: Listener) -> None:
        """Gate a new listener's accepts (its ``gate`` and ``refused``); called before it can accept."""
        ...

    def applied(self, config: SliceConfig) -> None:
        """Take a newly applied slice; called once its listeners exist and its removals have begun."""
        ...

    def status(self) -> dict[str, dict[str, Any]]:
        """``{vs_uuid: {role, epoch, owner, accepting, holding, ...}}`` for the agent's reports."""
        ...

    async def close(self) -> None:
        """Stop handing off; the data plane has stopped accepting first (a standby takes over at once)."""
        ...


#: builds the handoff of one data plane, given that data plane
HandoffFactory = Callable[[ServedListeners], VipHandoff]
