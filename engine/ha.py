"""Active/standby VIP ownership between Service Engines: the decisions, as pure functions.

Who accepts on a VS's VIP is a max-register: a ``Claim(epoch, gen, owner)``. The controller's
placement gives ``Claim(epoch, 0, ses[0])``; a standby that takes over after losing its active
raises ``gen`` by one at the same epoch; SEs exchange their claims and keep the greatest. So a new
placement (higher epoch) always wins over a local takeover made under an older one, and a takeover
wins over the placement it was made under. An SE accepts on a VIP only while the greatest claim it
knows names it, and only after it has asked its peer (or seen it die), so two SEs never both accept
for long; an SE whose own clock jumped (it was frozen) stops accepting until it has asked again.

The socket side lives in ``engine.ha_coordinator`` (with ``engine.ha_link``, ``engine.ha_relay``
and ``engine.ha_share``); nothing here does I/O or reads a clock: time is passed in as monotonic
seconds. The relay fallback of a shared pair (its header line, the peers' intake addresses, what
the status calls the distribution) is decided here too.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Mapping, Optional

import attrs

from engine.config import PlacementConfig

__all__ = [
    "LEGACY",
    "SCALEOUT_MODES",
    "SHARED_PAIR",
    "Claim",
    "after_peer_lost",
    "claim_from_wire",
    "clock_jumped",
    "distribution",
    "managed",
    "merge",
    "on_slice",
    "parse_relay_header",
    "peer_silent",
    "peers_of",
    "pick_target",
    "relay_from_wire",
    "relay_header",
    "relay_token_from_wire",
    "role_of",
    "suspect_gap",
    "takeover",
]

#: ``scaleout_mode``: how a shared pair's primary hands a connection to a secondary. ``auto`` passes
#: the accepted socket and relays only when that send fails; ``relay`` always relays.
SCALEOUT_MODES = ("auto", "relay")
RELAY_HEADER_MAX = 512

LEGACY = "HA_MODE_LEGACY_ACTIVE_STANDBY"
SHARED_PAIR = "HA_MODE_SHARED_PAIR"
HANDOFF_MODES = (LEGACY, SHARED_PAIR)


@attrs.frozen(order=True)
class Claim:
    """Who should accept on a VS's VIP; the greater claim wins (epoch, then gen, then name)."""

    epoch: int
    gen: int
    owner: str

    def to_wire(self) -> list[Any]:
        return [self.epoch, self.gen, self.owner]


def claim_from_wire(value: Any) -> Optional[Claim]:
    """A claim as a peer sent it, or None when it is malformed."""
    if (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value[:2])
        and isinstance(value[2], str)
        and value[2]
    ):
        return Claim(value[0], value[1], value[2])
    return None


def relay_from_wire(value: Any) -> Optional[tuple[str, int]]:
    """A peer's relay intake address (``[host, port]`` on loopback: peers share this host), or None."""
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)):
        return None
    host, port = value
    if isinstance(port, bool) or not 0 < port < 65536:
        return None
    try:
        if not ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        return None
    return host, port


def relay_header(vs_uuid: str, client: tuple[str, int], token: str) -> bytes:
    """The line a primary writes first on a relayed connection; ``token`` is the secondary's intake token."""
    return f"AVI-RELAY {vs_uuid} {client[0]} {client[1]} {token}\n".encode()


def relay_token_from_wire(value: Any) -> Optional[str]:
    """A peer's relay intake token as it arrives over the HA link (hex, 32 to 128 characters), or None."""
    if isinstance(value, str) and 32 <= len(value) <= 128 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


def parse_relay_header(line: bytes) -> Optional[tuple[str, tuple[str, int], str]]:
    """``(vs_uuid, (client_ip, client_port), token)`` from a relay header line (without its newline), or None."""
    try:
        parts = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        return None
    if len(parts) != 5 or parts[0] != "AVI-RELAY" or not parts[1] or not parts[3].isdigit() or not parts[4]:
        return None
    port = int(parts[3])
    if port > 65535:
        return None
    try:
        ip = str(ipaddress.ip_address(parts[2]))
    except ValueError:
        return None
    return parts[1], (ip, port), parts[4]


def distribution(passed: int, relayed: int, scaleout_mode: str) -> str:
    """How a shared pair's connections moved between its SEs: what happened, else what would."""
    used = [name for name, count in (("fd_passing", passed), ("relay", relayed)) if count]
    if used:
        return "+".join(used)
    return "relay" if scaleout_mode == "relay" else "fd_passing"


def managed(placement: Optional[PlacementConfig], me: str) -> bool:
    """True when the VS's VIP is owned by one of several SEs (active/standby, or a shared pair whose
    primary passes connections on); otherwise this SE just binds its VIP."""
    return placement is not None and placement.ha_mode in HANDOFF_MODES and len(placement.ses) >= 2 and me in placement.ses


def peers_of(placement: PlacementConfig, me: str) -> tuple[str, ...]:
    return tuple(name for name in placement.ses if name != me)


def merge(mine: Optional[Claim], theirs: Optional[Claim]) -> Optional[Claim]:
    if mine is None:
        return theirs
    if theirs is None:
        return mine
    return max(mine, theirs)


def on_slice(current: Optional[Claim], placement: PlacementConfig) -> Claim:
    """The claim after a slice: its placement wins unless the local claim is as new or newer."""
    placed = Claim(placement.epoch, 0, placement.ses[0])
    if current is None or current.epoch < placement.epoch:
        return placed
    return max(current, placed)


def takeover(current: Claim, me: str) -> Claim:
    """The claim of a standby that takes the VIP from its lost active, under the same epoch."""
    return Claim(current.epoch, current.gen + 1, me)


def role_of(claim: Claim, me: str) -> str:
    return "active" if claim.owner == me else "standby"


def after_peer_lost(claims: Mapping[str, Claim], members: Mapping[str, tuple[str, ...]], me: str, peer: str) -> dict[str, Claim]:
    """The VSs ``me`` takes over when ``peer`` is lost: those the peer owned that ``me`` also serves."""
    return {vs: takeover(claim, me) for vs, claim in claims.items() if claim.owner == peer and me in members.get(vs, ())}


def pick_target(loads: Mapping[str, int], assigned: Mapping[str, int]) -> str:
    """Which SE of a shared pair serves the next new connection: the fewest open connections, then
    the fewest given so far, then the name. ``loads`` holds every candidate (the primary included)."""
    return min(loads, key=lambda name: (loads[name], assigned.get(name, 0), name))


def suspect_gap(peer_timeout: float, heartbeat_interval: float, tick_interval: float) -> float:
    """How long a stall makes an active SE doubt it still owns its VIPs.

    A peer declares us lost ``peer_timeout`` after the last heartbeat it heard, which we sent at most
    one heartbeat interval (plus a tick) before our last tick; any stall that long may have let it
    take over.
    """
    return max(peer_timeout - heartbeat_interval - tick_interval, tick_interval * 2)


def clock_jumped(last_tick: float, now: float, gap: float) -> bool:
    """True when this process did not run for longer than ``gap`` (SIGSTOP, a stalled loop)."""
    return now - last_tick > gap


def peer_silent(last_heard: float, now: float, peer_timeout: float) -> bool:
    return now - last_heard > peer_timeout
