"""Backend selection: proportions, least load, health, and Maglev's minimal disruption."""

from __future__ import annotations

import collections
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import ALGORITHMS, ServerConfig
from engine.routing import Balancer, maglev_table_size

RR = "LB_ALGORITHM_ROUND_ROBIN"
LC = "LB_ALGORITHM_LEAST_CONNECTIONS"
HASH = "LB_ALGORITHM_CONSISTENT_HASH"


def make_servers(ratios: list[int], enabled: list[bool] | None = None) -> list[ServerConfig]:
    enabled = enabled or [True] * len(ratios)
    return [ServerConfig(f"10.0.{i // 200}.{i % 200 + 1}", 8000 + i % 7, r, e) for i, (r, e) in enumerate(zip(ratios, enabled, strict=False))]


def random_ips(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for _ in range(count)]


ratios_st = st.lists(st.integers(1, 20), min_size=1, max_size=12)


@st.composite
def pools(draw: st.DrawFn) -> tuple[list[ServerConfig], list[bool]]:
    """Servers with random ratios and enabled flags, and a random up/down state for each."""
    ratios = draw(ratios_st)
    enabled = draw(st.lists(st.booleans(), min_size=len(ratios), max_size=len(ratios)))
    up = draw(st.lists(st.booleans(), min_size=len(ratios), max_size=len(ratios)))
    return make_servers(ratios, enabled), up


# -- round robin ------------------------------------------------------------------------------------


@given(ratios=ratios_st, periods=st.integers(1, 4))
def test_round_robin_is_exactly_proportional_to_ratios(ratios: list[int], periods: int) -> None:
    """k * sum(ratios) picks give each server exactly k * ratio picks."""
    servers = make_servers(ratios)
    balancer = Balancer(RR, servers)
    counts = collections.Counter(balancer.pick("1.1.1.1") for _ in range(periods * sum(ratios)))
    assert {s: periods * s.ratio for s in servers} == counts


@given(pool=pools(), periods=st.integers(1, 3))
def test_round_robin_is_proportional_among_available_servers(pool: tuple[list[ServerConfig], list[bool]], periods: int) -> None:
    """Down and disabled servers drop out and the rest keep their exact proportions."""
    servers, up = pool
    balancer = Balancer(RR, servers)
    for server, is_up in zip(servers, up, strict=False):
        balancer.set_up(server.key, is_up)
    available = [s for s, u in zip(servers, up, strict=False) if u and s.enabled]
    counts = collections.Counter(balancer.pick("1.1.1.1") for _ in range(periods * sum(s.ratio for s in available)))
    assert {s: periods * s.ratio for s in available} == counts


def test_round_robin_interleaves_heavy_servers() -> None:
    """5:1:1 spreads the heavy server's turns across the period instead of bursting them."""
    a, b, c = make_servers([5, 1, 1])
    balancer = Balancer(RR, [a, b, c])
    assert [a, b, a, a, c, a, a] == [balancer.pick("x") for _ in range(7)]


@given(ratios=ratios_st)
def test_round_robin_never_repeats_a_server_more_than_its_share_allows(ratios: list[int]) -> None:
    """In any window of a period, a server's picks stay within one of its proportional share."""
    servers = make_servers(ratios)
    balancer = Balancer(RR, servers)
    total = sum(ratios)
    sequence = [balancer.pick("x") for _ in range(total)]
    for server in servers:
        seen = 0
        for i, picked in enumerate(sequence, start=1):
            seen += picked == server
            assert abs(seen - Fraction(i * server.ratio, total)) < 1


# -- least connections ------------------------------------------------------------------------------


@given(
    ratios=st.lists(st.integers(1, 20), min_size=1, max_size=10),
    ops=st.lists(st.tuples(st.sampled_from(["open", "close", "pick"]), st.integers(0, 9)), max_size=80),
)
def test_least_connections_picks_lowest_open_per_ratio(ratios: list[int], ops: list[tuple[str, int]]) -> None:
    """Whatever the history, a pick has the lowest open/ratio of all servers."""
    servers = make_servers(ratios)
    balancer = Balancer(LC, servers)
    for op, index in ops:
        server = servers[index % len(servers)]
        if op == "open":
            balancer.opened(server.key)
        elif op == "close":
            balancer.closed(server.key)
        else:
            picked = balancer.pick("1.1.1.1")
            assert picked is not None
            load = {s: Fraction(balancer.open_connections(s.key), s.ratio) for s in servers}
            assert min(load.values()) == load[picked]
            balancer.opened(picked.key)


def test_least_connections_rotates_among_ties() -> None:
    """With every server idle, successive picks visit every server."""
    servers = make_servers([1, 3, 2, 1])
    balancer = Balancer(LC, servers)
    assert set(servers) == {balancer.pick("x") for _ in range(len(servers))}


def test_least_connections_fills_by_ratio() -> None:
    """Opening every picked connection loads servers in proportion to their ratios."""
    servers = make_servers([1, 4, 2])
    balancer = Balancer(LC, servers)
    for _ in range(70):
        picked = balancer.pick("x")
        assert picked is not None
        balancer.opened(picked.key)
    assert [10, 40, 20] == [balancer.open_connections(s.key) for s in servers]


def test_closed_never_goes_below_zero() -> None:
    """A stray close leaves the count at zero rather than negative."""
    (server,) = make_servers([1])
    balancer = Balancer(LC, [server])
    balancer.closed(server.key)
    assert 0 == balancer.open_connections(server.key)


# -- health and availability, every algorithm -------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=50)
@given(pool=pools(), seed=st.integers(0, 1000))
def test_down_and_disabled_servers_are_never_picked(algorithm: str, pool: tuple[list[ServerConfig], list[bool]], seed: int) -> None:
    """Picks come only from enabled, up servers; with none, pick() is None."""
    servers, up = pool
    balancer = Balancer(algorithm, servers)
    for server, is_up in zip(servers, up, strict=False):
        balancer.set_up(server.key, is_up)
    available = {s for s, u in zip(servers, up, strict=False) if u and s.enabled}
    picks = {balancer.pick(ip) for ip in random_ips(200, seed)}
    if available:
        assert picks <= available
    else:
        assert {None} == picks


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_server_comes_back_after_going_down(algorithm: str) -> None:
    """A server marked up again is picked again."""
    (server,) = make_servers([1])
    balancer = Balancer(algorithm, [server])
    balancer.set_up(server.key, False)
    assert (None, False) == (balancer.pick("1.2.3.4"), balancer.is_up(server.key))
    balancer.set_up(server.key, True)
    assert (server, True) == (balancer.pick("1.2.3.4"), balancer.is_up(server.key))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_pool_picks_none(algorithm: str) -> None:
    """A pool with no servers answers None rather than failing."""
    assert Balancer(algorithm, []).pick("1.2.3.4") is None


def test_unknown_keys_are_tolerated() -> None:
    """Reports about a server the config just removed change nothing."""
    balancer = Balancer(LC, make_servers([1]))
    balancer.set_up("192.0.2.1:80", False)
    balancer.opened("192.0.2.1:80")
    balancer.closed("192.0.2.1:80")
    assert (False, 0) == (balancer.is_up("192.0.2.1:80"), balancer.open_connections("192.0.2.1:80"))


def test_unknown_algorithm_is_refused() -> None:
    """An algorithm this SE does not implement is a ValueError naming it."""
    with pytest.raises(ValueError, match="LB_ALGORITHM_RANDOM"):
        Balancer("LB_ALGORITHM_RANDOM", [])


def test_duplicate_servers_count_once() -> None:
    """A second entry with the same ip:port is ignored."""
    server = ServerConfig("10.0.0.1", 80, 2)
    balancer = Balancer(RR, [server, ServerConfig("10.0.0.1", 80, 5)])
    assert ((server,), [server, server]) == (balancer.servers, [balancer.pick("x") for _ in range(2)])


# -- consistent hash --------------------------------------------------------------------------------


@settings(max_examples=30)
@given(ratios=st.lists(st.integers(1, 20), min_size=1, max_size=20), seed=st.integers(0, 1000))
def test_consistent_hash_is_sticky(ratios: list[int], seed: int) -> None:
    """The same client gets the same server every time while the server set is unchanged."""
    balancer = Balancer(HASH, make_servers(ratios))
    ips = random_ips(500, seed)
    first = {ip: balancer.pick(ip) for ip in ips}
    random.Random(seed).shuffle(ips)
    assert first == {ip: balancer.pick(ip) for ip in ips}


def test_consistent_hash_ignores_config_order() -> None:
    """Two SEs given the same servers in different orders map clients the same way."""
    servers = make_servers([1, 2, 3, 4, 5])
    a, b = Balancer(HASH, servers), Balancer(HASH, list(reversed(servers)))
    ips = random_ips(1000, 7)
    assert [a.pick(ip) for ip in ips] == [b.pick(ip) for ip in ips]


def _moves(before: Balancer, after: Balancer, removed: ServerConfig, ips: list[str]) -> tuple[float, float]:
    """(fraction of all clients that moved, fraction of the other servers' clients that moved)."""
    old = [before.pick(ip) for ip in ips]
    new = [after.pick(ip) for ip in ips]
    moved = sum(o != n for o, n in zip(old, new, strict=False))
    others = [(o, n) for o, n in zip(old, new, strict=False) if o != removed]
    return moved / len(ips), sum(o != n for o, n in others) / len(others)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 40), data=st.data())
def test_taking_one_of_n_servers_down_moves_about_one_nth_of_clients(n: int, data: st.DataObject) -> None:
    """Marking one of N servers down moves 0.5/N-2/N of 10 000 clients, nearly all of them its own."""
    servers = make_servers([1] * n)
    removed = data.draw(st.sampled_from(servers))
    balancer = Balancer(HASH, servers)
    ips = random_ips(10_000, n)
    before = [balancer.pick(ip) for ip in ips]
    balancer.set_up(removed.key, False)
    after = [balancer.pick(ip) for ip in ips]
    moved = sum(b != a for b, a in zip(before, after, strict=False)) / len(ips)
    others = [(b, a) for b, a in zip(before, after, strict=False) if b != removed]
    assert 0.5 / n <= moved <= 2 / n
    assert sum(b != a for b, a in others) / len(others) < 0.05
    balancer.set_up(removed.key, True)
    assert before == [balancer.pick(ip) for ip in ips]


@settings(max_examples=10, deadline=None)
@given(n=st.integers(3, 40), data=st.data())
def test_removing_one_of_n_servers_from_config_moves_about_one_nth(n: int, data: st.DataObject) -> None:
    """Dropping a server from the config (same table size) disturbs clients like taking it down."""
    servers = make_servers([1] * n)
    removed = data.draw(st.sampled_from(servers))
    before = Balancer(HASH, servers)
    after = before.updated([s for s in servers if s != removed])
    assert maglev_table_size(n) == maglev_table_size(n - 1)
    moved, others_moved = _moves(before, after, removed, random_ips(10_000, n))
    assert 0.5 / n <= moved <= 2 / n
    assert others_moved < 0.05


def test_consistent_hash_shares_follow_ratios() -> None:
    """A ratio-3 server gets about three times the clients of a ratio-1 server."""
    servers = make_servers([1, 3, 1, 5])
    balancer = Balancer(HASH, servers)
    counts = collections.Counter(balancer.pick(ip) for ip in random_ips(20_000, 3))
    total = sum(s.ratio for s in servers)
    for server in servers:
        assert counts[server] / 20_000 == pytest.approx(server.ratio / total, rel=0.1)


# -- config changes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_updated_keeps_health_and_counters_of_servers_that_stay(algorithm: str) -> None:
    """A config change keeps the state of servers that stay; new ones start up and idle."""
    a, b, c = make_servers([1, 1, 1])
    balancer = Balancer(algorithm, [a, b, c])
    balancer.set_up(a.key, False)
    balancer.opened(b.key)
    balancer.opened(b.key)
    d = ServerConfig("10.9.9.9", 80)
    b_reweighted = ServerConfig(b.ip, b.port, ratio=7)
    new = balancer.updated([a, b_reweighted, d])
    assert (False, True, True, False) == tuple(new.is_up(k) for k in (a.key, b.key, d.key, c.key))
    assert (2, 0) == (new.open_connections(b.key), new.open_connections(d.key))
    picked = set()
    for ip in random_ips(200, 1):
        server = new.pick(ip)
        assert server is not None
        picked.add(server)
        new.opened(server.key)
    assert {b_reweighted, d} == picked


def test_counters_are_shared_with_the_updated_balancer() -> None:
    """Closing on the old Balancer after a config change still lowers the new one's count."""
    (a,) = make_servers([1])
    old = Balancer(LC, [a])
    old.opened(a.key)
    new = old.updated([a, ServerConfig("10.9.9.9", 80)])
    old.closed(a.key)
    assert 0 == new.open_connections(a.key)


def test_updated_can_change_the_algorithm() -> None:
    """updated() with an algorithm switches it and keeps state."""
    servers = make_servers([1, 1])
    balancer = Balancer(RR, servers)
    balancer.set_up(servers[0].key, False)
    new = balancer.updated(servers, algorithm=HASH)
    assert (HASH, False) == (new.algorithm, new.is_up(servers[0].key))
