"""A shared pair's new connections: which SE gets the next one, and how many went where.

The primary of a shared pair (``HA_MODE_SHARED_PAIR``) gives each new connection to the least
loaded SE of the pair, itself included (``engine.ha.pick_target``). Loads are like for like: each
SE's open connections at its last heartbeat plus the new connections given it since.
``ConnectionShares`` keeps those loads (fed by ``engine.ha_coordinator`` from the heartbeats) and
the counts its status reports: per VS, the new connections given to each SE and those passed as
sockets on the primary, those received (by way) on a secondary. Relayed connections are counted
by ``engine.ha_relay.Relays``. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine import ha

__all__ = ["ConnectionShares"]


class ConnectionShares:
    """The loads and counts behind one SE's shares of its shared pairs' new connections."""

    def __init__(self, se_name: str, scaleout_mode: str) -> None:
        self.name = se_name
        self.scaleout_mode = scaleout_mode
        self.own_open = 0  # open connections at our last heartbeat
        self.peer_open: dict[str, int] = {}  # peer -> open connections at its last heartbeat
        self._since_beat: dict[str, int] = {}  # SE -> connections given it since its last heartbeat
        self._given: dict[str, dict[str, int]] = {}  # primary: vs -> SE -> new connections given to it
        self._passed: dict[str, dict[str, int]] = {}  # primary: vs -> SE -> connections passed as sockets
        self._received: dict[str, dict[str, int]] = {}  # secondary: vs -> "fd_passing"/"relay" -> count

    def pick(self, uuid: str, linked_peers: Iterable[str]) -> str:
        """The SE that gets the next new connection of ``uuid`` (maybe this one), counted as given to it."""
        loads = {self.name: self.own_open + self._since_beat.get(self.name, 0)}
        for peer in linked_peers:
            loads[peer] = self.peer_open.get(peer, 0) + self._since_beat.get(peer, 0)
        given = self._given.setdefault(uuid, {})
        target = ha.pick_target(loads, given)
        given[target] = given.get(target, 0) + 1
        if target == self.name:
            self._since_beat[self.name] = self._since_beat.get(self.name, 0) + 1
        return target

    def passed(self, uuid: str, peer: str) -> None:
        """A new connection of ``uuid`` went to ``peer`` as its socket."""
        self._since_beat[peer] = self._since_beat.get(peer, 0) + 1
        passed = self._passed.setdefault(uuid, {})
        passed[peer] = passed.get(peer, 0) + 1

    def relaying(self, peer: str) -> None:
        """A new connection is being relayed to ``peer``: it counts towards its load at once."""
        self._since_beat[peer] = self._since_beat.get(peer, 0) + 1

    def received(self, uuid: str, way: str) -> None:
        """A peer gave this SE a new connection of ``uuid``, by ``way`` (``fd_passing`` or ``relay``)."""
        received = self._received.setdefault(uuid, {})
        received[way] = received.get(way, 0) + 1

    def beat(self, own_open: int) -> None:
        """This SE sends its heartbeat, saying ``own_open`` connections are open."""
        self.own_open = own_open
        self._since_beat[self.name] = 0

    def heard(self, peer: str, open_connections: int) -> None:
        """``peer``'s heartbeat said it has ``open_connections`` open."""
        self.peer_open[peer] = open_connections
        self._since_beat[peer] = 0

    def forget_peer(self, peer: str) -> None:
        self.peer_open.pop(peer, None)
        self._since_beat.pop(peer, None)

    def forget_vs(self, uuid: str) -> None:
        self._given.pop(uuid, None)
        self._passed.pop(uuid, None)
        self._received.pop(uuid, None)

    def status(self, uuid: str, primary: bool, relayed: dict[str, int]) -> dict[str, Any]:
        """What the status says of ``uuid``'s distribution; ``relayed``: per secondary, on the primary."""
        if primary:
            passed = self._passed.get(uuid, {})
            return {
                "distribution": ha.distribution(sum(passed.values()), sum(relayed.values()), self.scaleout_mode),
                "given": dict(self._given.get(uuid, {})),
                "relayed": dict(relayed),
            }
        received = self._received.get(uuid, {})
        return {
            "distribution": ha.distribution(received.get("fd_passing", 0), received.get("relay", 0), self.scaleout_mode),
            "received": dict(received),
        }
