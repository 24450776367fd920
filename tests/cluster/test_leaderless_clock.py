"""When a node says "no quorum" at once: the leaderless clock (``cluster.proposer.LeaderWatch``).

The clock only counts what the leader watcher saw continuously, restarts after a loop stall, and
restarts when a node that was cut off regains connections to a majority (it is owed one election).
The real path runs in tests/integration/test_failover.py; here the raft state and the loop's clock
are set by hand so each rule is checked on its own.
"""

from __future__ import annotations

from typing import Any

from cluster.proposer import LEADER_WATCH_PERIOD, LeaderWatch


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now


class _Raft:
    def __init__(self) -> None:
        self.leader_reachable = False
        self.majority_connected = False


def _controller() -> tuple[Any, _Clock, _Raft]:
    clock, raft = _Clock(), _Raft()
    return LeaderWatch(clock.time, raft), clock, raft


def _watch(node: Any, clock: _Clock, seconds: float) -> None:
    """The watcher ticking every LEADER_WATCH_PERIOD for ``seconds``."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now += LEADER_WATCH_PERIOD
        node.note()


def test_counts_continuous_time_without_a_leader_and_resets_when_one_is_seen() -> None:
    node, clock, raft = _controller()
    _watch(node, clock, 3.0)
    assert 2.9 <= node.leaderless_for() <= 3.1
    raft.leader_reachable = True
    assert node.leaderless_for() == 0.0
    raft.leader_reachable = False
    _watch(node, clock, 0.5)
    assert node.leaderless_for() <= 0.6


def test_a_loop_stall_restarts_the_clock() -> None:
    node, clock, _raft = _controller()
    _watch(node, clock, 3.0)
    clock.now += 10 * LEADER_WATCH_PERIOD  # the watcher did not run: an election may have happened unseen
    assert node.leaderless_for() == 0.0
    _watch(node, clock, 1.0)
    assert 0.9 <= node.leaderless_for() <= 1.1


def test_regaining_a_majority_of_connections_restarts_the_clock() -> None:
    node, clock, raft = _controller()
    _watch(node, clock, 5.0)  # cut off from everyone
    assert node.leaderless_for() > 4.9
    raft.majority_connected = True  # the others are back; an election is owed
    _watch(node, clock, LEADER_WATCH_PERIOD)
    assert node.leaderless_for() <= 2 * LEADER_WATCH_PERIOD
    _watch(node, clock, 3.0)  # connected, still no leader: the clock runs again
    assert node.leaderless_for() > 2.9
    raft.majority_connected = False
    _watch(node, clock, 1.0)
    raft.majority_connected = True
    _watch(node, clock, LEADER_WATCH_PERIOD)
    assert node.leaderless_for() <= 2 * LEADER_WATCH_PERIOD
