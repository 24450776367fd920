"""Which server gets the next connection: round robin, least connections, consistent hash.

Pure: no I/O, no clock. A ``Balancer`` holds one pool's servers, their up/down state (fed by the
health checker) and their open-connection counts (fed by the proxies), and ``pick()`` chooses among
the servers that are enabled and up.

- Round robin is smooth weighted round robin: every period of ``sum(ratio)`` picks gives each
  server exactly ``ratio`` picks, interleaved (5:1:1 gives ``A B A A C A A``, not
  ``A A A A A B C``), and at every point of the period each server is within one pick of its share.
  The period is precomputed as a schedule (earliest deadline first, see ``_smooth_schedule``), so a
  pick is one list index; nginx's smooth algorithm interleaves as well but costs O(n) per pick.
- Least connections picks the lowest ``open / ratio``; ties go round the servers in turn.
- Consistent hash on the client IP uses a Maglev lookup table (Eisenbud et al., NSDI 2016) whose
  size is a prime chosen from the number of configured servers, never from how many are up, so
  every SE with the same pool builds the same table. Each server's share of the table is
  proportional to its ratio. Down servers are left out by rebuilding the table from the up ones,
  which moves about 1/N of clients when one of N servers goes or comes back. A config change that
  crosses the table-size step (164 configured servers) rebuilds at the new size and moves most
  clients.

Schedules and tables are rebuilt lazily, on the first pick after the up set changes, so a burst of
health changes costs one rebuild.

Open-connection counters are shared between a Balancer and the ones ``updated()`` derives from it,
so a proxy that calls ``closed()`` on the Balancer it called ``opened()`` on keeps the counts right
whichever instance it holds. Up/down state is copied, not shared: feed it to the current Balancer.
"""

from __future__ import annotations

import hashlib
import heapq
import zlib
from typing import Iterable, Optional, Sequence

from engine.config import ALGORITHMS, ServerConfig

__all__ = ["Balancer", "maglev_table_size"]

ROUND_ROBIN = "LB_ALGORITHM_ROUND_ROBIN"
LEAST_CONNECTIONS = "LB_ALGORITHM_LEAST_CONNECTIONS"
CONSISTENT_HASH = "LB_ALGORITHM_CONSISTENT_HASH"

_RR, _LC, _HASH = 0, 1, 2
_KINDS = {ROUND_ROBIN: _RR, LEAST_CONNECTIONS: _LC, CONSISTENT_HASH: _HASH}
assert set(_KINDS) == set(ALGORITHMS)

# Maglev wants the table at least ~100x the number of servers: the bigger M/N, the more even the
# spread and the fewer clients of *other* servers move when one goes (measured: under 3% at
# M/N >= 100, ~1% typical, against up to 8% with 4093 slots for 6 servers). Few steps, so adding or
# removing a server rarely changes the size (which moves most clients); 16381 slots rebuild in
# ~7 ms, 65537 in ~40 ms.
_MAGLEV_SIZES = (16381, 65537)
_LCM_1_TO_20 = 232792560  # divisible by every ratio, so schedule positions are exact integers


def maglev_table_size(server_count: int) -> int:
    """The prime table size for a pool of ``server_count`` configured servers."""
    for size in _MAGLEV_SIZES:
        if size >= 100 * server_count:
            return size
    return _MAGLEV_SIZES[-1]


class _Counter:
    """Open connections to one server; shared by a Balancer and those ``updated()`` makes from it."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = 0


class _Member:
    """One server of a Balancer. ``pick_member`` hands it to a proxy, which may count its
    connection on ``counter`` directly (the same object ``opened``/``closed`` use)."""

    __slots__ = ("server", "key", "ratio", "up", "counter")

    def __init__(self, server: ServerConfig, up: bool, counter: _Counter) -> None:
        self.server = server
        self.key = server.key
        self.ratio = server.ratio
        self.up = up
        self.counter = counter


class Balancer:
    """One pool's servers, their health and load, and the algorithm that picks among them.

    Servers with the same ``ip:port`` as an earlier one in the list are ignored. Keys the Balancer
    does not know are tolerated: ``set_up``/``opened``/``closed`` ignore them, ``is_up`` says False
    and ``open_connections`` 0, because a proxy or checker may report on a server a config change
    just removed.
    """

    def __init__(self, algorithm: str, servers: Sequence[ServerConfig]) -> None:
        if algorithm not in _KINDS:
            raise ValueError(f"unknown algorithm {algorithm!r}; this SE knows {', '.join(ALGORITHMS)}")
        self._init(algorithm, servers, {})

    def _init(self, algorithm: str, servers: Sequence[ServerConfig], previous: dict[str, _Member]) -> None:
        self._algorithm = algorithm
        self._kind = _KINDS[algorithm]
        members: dict[str, _Member] = {}
        for server in servers:
            key = server.key
            if key in members:
                continue
            old = previous.get(key)
            members[key] = _Member(server, True, _Counter()) if old is None else _Member(server, old.up, old.counter)
        self._members = members
        self._servers = tuple(m.server for m in members.values())
        self._table_size = maglev_table_size(len(members))
        self._eligible: list[_Member] = []
        self._schedule: list[_Member] = []  # round robin: one period; hash: the Maglev table
        self._cursor = 0
        self._dirty = True

    # -- construction -----------------------------------------------------------------------------

    def updated(self, servers: Sequence[ServerConfig], algorithm: Optional[str] = None) -> "Balancer":
        """A Balancer for a changed server list (and optionally algorithm).

        Servers that stay (same ``ip:port``) keep their up/down state and open-connection counter,
        whatever else about them changed; new servers start up with no connections.
        """
        algorithm = self._algorithm if algorithm is None else algorithm
        if algorithm not in _KINDS:
            raise ValueError(f"unknown algorithm {algorithm!r}; this SE knows {', '.join(ALGORITHMS)}")
        new = Balancer.__new__(Balancer)
        new._init(algorithm, servers, self._members)
        return new

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def servers(self) -> tuple[ServerConfig, ...]:
        return self._servers

    # -- state fed by the health checker and the proxies ------------------------------------------

    def set_up(self, key: str, up: bool) -> None:
        member = self._members.get(key)
        if member is not None and member.up != up:
            member.up = up
            self._dirty = True

    def is_up(self, key: str) -> bool:
        member = self._members.get(key)
        return member is not None and member.up

    def opened(self, key: str) -> None:
        member = self._members.get(key)
        if member is not None:
            member.counter.open += 1

    def closed(self, key: str) -> None:
        member = self._members.get(key)
        if member is not None and member.counter.open > 0:
            member.counter.open -= 1

    def open_connections(self, key: str) -> int:
        member = self._members.get(key)
        return 0 if member is None else member.counter.open

    def available(self) -> list[ServerConfig]:
        """The servers ``pick()`` chooses among: enabled and up, in config order."""
        if self._dirty:
            self._rebuild()
        return [m.server for m in self._eligible]

    # -- the hot path -----------------------------------------------------------------------------

    def pick(self, client_ip: str) -> Optional[ServerConfig]:
        """The server for a new connection from ``client_ip``, or None when no server is available.

        The caller calls ``opened(server.key)`` if it connects and ``closed(server.key)`` when done.
        """
        member = self.pick_member(client_ip)
        return None if member is None else member.server

    def pick_member(self, client_ip: str) -> Optional[_Member]:
        """``pick``, returning the server's member: its ``server``, ``key`` and connection ``counter``.

        A caller may count a connection with ``member.counter.open += 1`` and release it with
        ``-= 1`` (never below 0) instead of ``opened``/``closed``: the counter is the one those use.
        """
        if self._dirty:
            self._rebuild()
        kind = self._kind
        if kind == _RR:
            schedule = self._schedule
            if not schedule:
                return None
            i = self._cursor
            if i >= len(schedule):
                i = 0
            self._cursor = i + 1
            return schedule[i]
        if kind == _HASH:
            table = self._schedule
            if not table:
                return None
            return table[zlib.crc32(client_ip.encode()) % len(table)]
        return self._least_connections()

    def _least_connections(self) -> Optional[_Member]:
        eligible = self._eligible
        n = len(eligible)
        if n == 0:
            return None
        start = self._cursor
        if start >= n:
            start = 0
        self._cursor = start + 1
        best = eligible[start]
        best_open = best.counter.open
        best_ratio = best.ratio
        # open/ratio < best_open/best_ratio, cross-multiplied to stay in exact integers; strict, so
        # the first of equals after ``start`` wins and ties rotate.
        for j in range(start + 1, n):
            m = eligible[j]
            if m.counter.open * best_ratio < best_open * m.ratio:
                best, best_open, best_ratio = m, m.counter.open, m.ratio
        for j in range(start):
            m = eligible[j]
            if m.counter.open * best_ratio < best_open * m.ratio:
                best, best_open, best_ratio = m, m.counter.open, m.ratio
        return best

    # -- rebuilding -------------------------------------------------------------------------------

    def _rebuild(self) -> None:
        eligible = [m for m in self._members.values() if m.up and m.server.enabled]
        self._eligible = eligible
        if self._kind == _RR:
            self._schedule = _smooth_schedule(eligible)
            # Keep the cursor where it was so that flapping does not keep favouring the first server.
        elif self._kind == _HASH:
            self._schedule = _maglev(eligible, self._table_size)
        self._dirty = False


def _smooth_schedule(members: Sequence[_Member]) -> list[_Member]:
    """One period of smooth weighted round robin, ``sum(ratio)`` slots long.

    Server *j*'s *k*-th turn must fall in slots ``[(k-1)W/w, kW/w)`` (W the sum of ratios, w its
    ratio); earliest-deadline-first fills every slot in time because the ratios sum to W. So after
    any *i* slots a server has had ``floor(i w / W)`` or ``ceil(i w / W)`` turns: its share, never a
    burst ahead of it or a gap behind it.
    """
    total = sum(m.ratio for m in members)
    released: list[tuple[int, int]] = []  # (deadline in units of 1/LCM, member index)
    waiting: list[tuple[int, int]] = []  # (release slot, member index)
    turns = [0] * len(members)
    for j, m in enumerate(members):
        heapq.heappush(released, (_LCM_1_TO_20 // m.ratio, j))
    schedule = []
    for slot in range(total):
        while waiting and waiting[0][0] <= slot:
            _, j = heapq.heappop(waiting)
            heapq.heappush(released, ((turns[j] + 1) * (_LCM_1_TO_20 // members[j].ratio), j))
        _, j = heapq.heappop(released)
        member = members[j]
        schedule.append(member)
        turns[j] += 1
        if turns[j] < member.ratio:
            heapq.heappush(waiting, (-(-turns[j] * total // member.ratio), j))  # ceil(k W / w)
    return schedule


def _permutation(key: str, size: int) -> tuple[int, int]:
    digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
    offset = int.from_bytes(digest[:8], "big") % size
    skip = int.from_bytes(digest[8:], "big") % (size - 1) + 1
    return offset, skip


def _maglev(members: Iterable[_Member], size: int) -> list[_Member]:
    """The Maglev lookup table: each server walks its own permutation of the slots, taking ``ratio``
    free slots per round, until the table is full. Built in ``ip:port`` order so that the table
    depends only on the set of servers, not on their order in the config."""
    ordered = sorted(members, key=lambda m: m.server.key)
    if not ordered:
        return []
    positions = []
    skips = []
    for m in ordered:
        offset, skip = _permutation(m.server.key, size)
        positions.append(offset)
        skips.append(skip)
    owner = [-1] * size
    filled = 0
    n = len(ordered)
    ratios = [m.ratio for m in ordered]
    while True:
        for i in range(n):
            pos = positions[i]
            skip = skips[i]
            for _ in range(ratios[i]):
                while owner[pos] >= 0:
                    pos += skip
                    if pos >= size:
                        pos -= size
                owner[pos] = i
                filled += 1
                if filled == size:
                    return [ordered[o] for o in owner]
            positions[i] = pos
