"""Active/standby VIP handoff between the SEs of one host, by sharing the listening socket.

The decisions are in ``engine.ha`` (claims, takeover, clock checks); this is the socket side. The
SEs talk over pair links (``engine.ha_link``: a Unix socket per SE, JSON messages with file
descriptors attached); a shared pair's primary may relay connections (``engine.ha_relay``). The
data plane sees the coordinator as an ``engine.handoff.VipHandoff``, the coordinator sees it as
``engine.handoff.ServedListeners``.

A standby dials its active and says hello; the active answers with its claims and a dup of each
listening socket the standby lacks (``send_fds``). Both sides send a heartbeat every
``heartbeat_interval``. Messages:

- ``hello`` / ``claims``: ``{from, claims: {vs_uuid: [epoch, gen, owner]}, need: [[vip, port]], ask, reply, relay?}``
  (``relay``: ``[host, port]`` of the sender's relay intake, see below)
- ``fd``: one listening socket, ``{vs, vip, port, epoch}``
- ``conn``: one accepted client connection this SE must not serve, ``{vs, vip, port}``
- ``hb``: ``{open}`` (open client connections)

Duties, in order of importance:

1. An SE accepts on a managed VS only while its claim names it *and* it has confirmed that claim
   (asked its peer, or seen it die, or been told by it). The accept path checks this itself, with
   the clock read there: after a freeze (``engine.ha.clock_jumped``) nothing is confirmed any more,
   and a connection accepted meanwhile is kept unread, then served here or passed to the owner.
2. A standby takes over at once when its link to the active ends and the active's socket refuses
   a new connection (the process is gone), or when it heard nothing for ``peer_timeout`` (frozen).
3. Stopping to accept never closes the kernel socket (a dup is held), so connections arriving during
   a handoff wait in the backlog; established connections are never touched by a role change.

A shared pair (``HA_MODE_SHARED_PAIR``) works the same way, except that the owner (the primary)
passes a share of the new connections to its linked secondaries (``conn``), the least loaded first
by the open-connection counts they send on their heartbeats (``engine.ha_share``); they serve them
with the same VS.

Where passing the socket is impossible (``scaleout_mode="relay"``, or the send of the fd failed),
the primary relays the connection to the secondary's relay intake instead (``engine.ha_relay``);
a relay that cannot be opened leaves the connection to the primary, which serves it itself.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional

import structlog

from engine import ha
from engine.config import SliceConfig, VirtualServiceConfig
from engine.ha import Claim
from engine.ha_link import PairLink, PairLinks, close_all
from engine.ha_relay import Relays, hand_over
from engine.ha_share import ConnectionShares
from engine.handoff import ServedListeners
from engine.listener import Listener

__all__ = ["HaCoordinator"]

log = structlog.get_logger(__name__)

MAX_PENDING = 4096
PENDING_TTL = 3.0  # a refused connection waits this long for an owner to take it, then is closed


class HaCoordinator:
    """Which SE accepts on each active/standby VS, and the channel that moves the sockets."""

    def __init__(
        self,
        dataplane: ServedListeners,
        se_name: str,
        ha_dir: str | Path,
        *,
        peer_timeout: float = 0.5,
        heartbeat_interval: float = 0.1,
        tick_interval: float = 0.05,
        dial_deadline: float = 1.0,
        on_change: Optional[Callable[[], None]] = None,
        scaleout_mode: str = "auto",
    ) -> None:
        if not se_name:
            raise ValueError("an SE with an ha_dir needs its name")
        # scaleout_mode: how a shared pair's primary hands connections on ("auto": pass the socket,
        # relay when that fails; "relay": always relay through the primary).
        if scaleout_mode not in ha.SCALEOUT_MODES:
            raise ValueError(f"scaleout_mode must be one of {', '.join(ha.SCALEOUT_MODES)}, not {scaleout_mode!r}")
        self.dataplane = dataplane
        self.name = se_name
        self.log = log.bind(se=se_name)
        self.links = PairLinks(
            se_name, Path(ha_dir), log=self.log, on_message=self._message, on_ended=self._link_ended, before_read=self._check_clock
        )
        self.relays = Relays(log=self.log, take=self._take_relayed)
        self.shares = ConnectionShares(se_name, scaleout_mode)
        self.peer_timeout = peer_timeout
        self.heartbeat_interval = heartbeat_interval
        self.tick_interval = tick_interval
        self.dial_deadline = dial_deadline
        self.suspect_gap = ha.suspect_gap(peer_timeout, heartbeat_interval, tick_interval)
        self.on_change = on_change
        self.takeovers: dict[str, dict[str, Any]] = {}  # vs_uuid -> the last takeover this SE made
        self.refused = 0  # connections accepted while not confirmed as owner
        self.handed_off = 0  # of those, passed to the owner
        self.taken = 0  # connections a peer passed to us
        self.scaleout_mode = scaleout_mode
        self.errors: dict[str, str] = {}
        self._vs: dict[str, VirtualServiceConfig] = {}  # managed VSs of the applied slice
        self._claims: dict[str, Claim] = {}
        self._confirmed: dict[str, tuple[Claim, frozenset[str]]] = {}  # claim, peers that agreed or are gone
        self._last_heard: dict[str, float] = {}
        self._asked: dict[str, float] = {}
        self._dialing: dict[str, tuple[float, float, float]] = {}  # peer -> since, next attempt, backoff
        self._pending: list[tuple[str, tuple[str, int], socket.socket, float]] = []
        self._activating: set[str] = set()
        self._reconciling = False
        self._again = False
        self._last_tick = time.monotonic()
        self._last_heartbeat = 0.0
        self._ticker: Optional[asyncio.Task[None]] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on the Unix socket and start the ticker (idempotent; needs the running loop)."""
        if self._ticker is not None:
            return
        self._loop = asyncio.get_running_loop()
        self.links.start(self.loop)
        self.relays.start(self.loop)
        self._last_tick = time.monotonic()
        self._ticker = self.loop.create_task(self._tick_forever())

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        await self.relays.close()
        self.links.close()
        for _, _, sock, _ in self._pending:
            sock.close()
        self._pending = []

    # -- what the data plane asks --------------------------------------------------------------

    def manages(self, vs: VirtualServiceConfig) -> bool:
        return ha.managed(vs.placement, self.name)

    def attach(self, listener: Listener) -> None:
        listener.gate = self._admit
        listener.refused = self._refused

    def applied(self, config: SliceConfig) -> None:
        """Take a newly applied slice: its placements win over local claims with an older epoch."""
        self._check_clock()
        wanted = {vs.uuid: vs for vs in config.virtual_services if vs.enabled and self.manages(vs)}
        for uuid in [u for u in self._claims if u not in wanted]:
            self._claims.pop(uuid)
            self._confirmed.pop(uuid, None)
            self.takeovers.pop(uuid, None)
            self.errors.pop(uuid, None)
            self.shares.forget_vs(uuid)
            self.relays.relayed.pop(uuid, None)
        self._vs = wanted
        changed = []
        for uuid, vs in wanted.items():
            assert vs.placement is not None
            old = self._claims.get(uuid)
            new = ha.on_slice(old, vs.placement)
            if new != old:
                self._set_claim(uuid, new)
                changed.append(uuid)
        if changed:
            self.log.info("ha_slice_claims", claims={u: self._claims[u].to_wire() for u in changed})
            self._announce(changed)
        self._reconcile()

    def status(self) -> dict[str, dict[str, Any]]:
        """``{vs_uuid: {role, epoch, owner, accepting, holding, took_over_from?, at?, reason?, error?}}``.

        A shared pair adds ``distribution`` (``fd_passing``, ``relay`` or ``fd_passing+relay``: how
        connections moved so far, else how they would), and on the primary ``given`` (new connections
        per SE, itself included) and ``relayed`` (per secondary), on a secondary ``received`` (by way).
        """
        out: dict[str, dict[str, Any]] = {}
        for uuid, claim in self._claims.items():
            listeners = self.dataplane.listeners_of(uuid)
            shared = self._mode(uuid) == ha.SHARED_PAIR
            role = ha.role_of(claim, self.name)
            entry: dict[str, Any] = {
                "role": "secondary" if shared and role == "standby" else role,
                "epoch": claim.epoch,
                "owner": claim.owner,
                "accepting": bool(listeners) and all(lst.accepting for lst in listeners),
                "holding": bool(listeners) and all(lst.held is not None for lst in listeners),
            }
            took = self.takeovers.get(uuid)
            if took is not None and took["epoch"] == claim.epoch and claim.owner == self.name:
                entry.update(took_over_from=took["took_over_from"], at=took["at"], reason=took["reason"])
            if shared:
                entry.update(self.shares.status(uuid, role == "active", self.relays.relayed.get(uuid, {})))
            if uuid in self.errors:
                entry["error"] = self.errors[uuid]
            out[uuid] = entry
        return out

    # -- the accept path -----------------------------------------------------------------------

    def _may_accept(self, uuid: str) -> bool:
        claim = self._claims.get(uuid)
        if claim is None or claim.owner != self.name:
            return False
        confirmed = self._confirmed.get(uuid)
        return confirmed is not None and confirmed[0] == claim

    def _admit(self, listener: Listener) -> bool | str:
        """True: serve here; False: hold until confirmed; a peer's name: pass it to that peer (shared pair)."""
        # Runs before any timer after a freeze (I/O callbacks come first), so it reads the clock itself.
        self._check_clock()
        vs = listener.vs.config
        if not self.manages(vs):
            return True
        if not self._may_accept(vs.uuid):
            return False
        if self._mode(vs.uuid) == ha.SHARED_PAIR:
            target = self.shares.pick(vs.uuid, [peer for peer in self._peers(vs.uuid) if peer in self.links])
            return True if target == self.name else target
        return True

    def _refused(self, listener: Listener, sock: socket.socket, verdict: Any) -> None:
        if isinstance(verdict, str):
            self._give(listener, sock, verdict)
            return
        self.refused += 1
        if len(self._pending) >= MAX_PENDING:
            sock.close()
            return
        self._pending.append((listener.vs.config.uuid, listener.address, sock, time.monotonic()))
        self.loop.call_soon(self._reconcile)

    def _give(self, listener: Listener, sock: socket.socket, peer: str) -> None:
        """Shared pair: pass a new connection to secondary ``peer`` (its socket, else relayed), else serve it here."""
        uuid = listener.vs.config.uuid
        if self.scaleout_mode != "relay":
            link = self.links.link_to(peer)
            message = {"t": "conn", "vs": uuid, "vip": listener.address[0], "port": listener.address[1]}
            if link is not None and link.send(message, [sock.fileno()]):
                self.shares.passed(uuid, peer)
                sock.close()
                return
        # A failed send may have ended the link: a peer found gone meanwhile has no relay address.
        if not self.relays.knows(peer):
            listener.serve_accepted(sock)  # the secondary went away meanwhile
            return
        self.shares.relaying(peer)
        self.relays.relay(listener, sock, peer)

    def _take_relayed(self, transport: Any, uuid: str, client: tuple[str, int], rest: bytes) -> None:
        """A connection relayed to our intake for VS ``uuid``: serve the rest of its stream as a connection of the VS."""
        claim = self._claims.get(uuid)
        listeners = [lst for lst in self.dataplane.listeners_of(uuid) if not lst.draining]
        if claim is None or claim.owner == self.name or self._mode(uuid) != ha.SHARED_PAIR or not listeners:
            self.log.warning("ha_relay_refused", vs_uuid=uuid, reason="not a secondary of this VS")
            transport.close()
            return
        # Any listener of the VS serves it alike (they share its VsRuntime); the first one counts it.
        proto = listeners[0].serve_protocol()
        self.shares.received(uuid, "relay")
        hand_over(transport, proto, client, rest)

    # -- clock, peers, claims ------------------------------------------------------------------

    def _check_clock(self) -> None:
        now = time.monotonic()
        if ha.clock_jumped(self._last_tick, now, self.suspect_gap):
            gap = now - self._last_tick
            owned = [u for u, c in self._claims.items() if c.owner == self.name]
            self.log.warning("ha_clock_jumped", gap=round(gap, 3), doubting=owned)
            # Our own stall must not count against the peers; our claims must be confirmed again.
            for peer in self._last_heard:
                self._last_heard[peer] = now
            for peer in self._asked:
                self._asked[peer] = now
            for peer, (_, _, backoff) in self._dialing.items():
                self._dialing[peer] = (now, now, backoff)
            for uuid in owned:
                self._confirmed.pop(uuid, None)
            if owned:
                self.loop.call_soon(self._stop_unconfirmed)
        self._last_tick = now

    def _stop_unconfirmed(self) -> None:
        for uuid in self._claims:
            if not self._may_accept(uuid):
                for listener in self.dataplane.listeners_of(uuid):
                    listener.stop_accepting()
        self._reconcile()

    def _set_claim(self, uuid: str, claim: Claim, *, confirmed_by: frozenset[str] = frozenset()) -> None:
        old = self._claims.get(uuid)
        self._claims[uuid] = claim
        if claim.owner != self.name:
            # Fencing: stop first, before anything else can accept.
            for listener in self.dataplane.listeners_of(uuid):
                listener.stop_accepting()
            self._confirmed.pop(uuid, None)
        elif confirmed_by:
            self._confirmed[uuid] = (claim, confirmed_by)
        elif (confirmed := self._confirmed.get(uuid)) is not None and confirmed[0] != claim:
            # Still ours under a greater claim: a peer can only take it over by asking us first.
            if old is not None and old.owner == self.name and confirmed[0] == old:
                self._confirmed[uuid] = (claim, confirmed[1])
            else:
                self._confirmed.pop(uuid, None)
        if old is None or ha.role_of(old, self.name) != ha.role_of(claim, self.name):
            self._changed()

    def _mode(self, uuid: str) -> Optional[str]:
        vs = self._vs.get(uuid)
        return vs.placement.ha_mode if vs is not None and vs.placement is not None else None

    def _peers(self, uuid: str) -> tuple[str, ...]:
        vs = self._vs.get(uuid)
        return ha.peers_of(vs.placement, self.name) if vs is not None and vs.placement is not None else ()

    def _shared_with(self, peer: str) -> list[str]:
        return [u for u in self._claims if peer in self._peers(u)]

    def _consulted(self, peer: str) -> None:
        """``peer`` answered our claims (or is gone): our claims it shares are confirmed as far as it goes."""
        self._asked.pop(peer, None)
        for uuid in self._shared_with(peer):
            claim = self._claims[uuid]
            if claim.owner != self.name:
                continue
            old = self._confirmed.get(uuid)
            agreed = (old[1] if old is not None and old[0] == claim else frozenset()) | {peer}
            self._confirmed[uuid] = (claim, agreed)
        self._reconcile()

    def _peer_lost(self, peer: str, reason: str) -> None:
        self.links.drop(peer)
        self._last_heard.pop(peer, None)
        self._dialing.pop(peer, None)
        self.shares.forget_peer(peer)
        self.relays.forget(peer)
        members = {u: vs.placement.ses for u, vs in self._vs.items() if vs.placement is not None}
        taken = ha.after_peer_lost(self._claims, members, self.name, peer)
        self.log.warning("ha_peer_lost", peer=peer, reason=reason, taking_over=sorted(taken))
        for uuid, claim in taken.items():
            self._set_claim(uuid, claim, confirmed_by=frozenset(self._peers(uuid)))
            vs = self._vs[uuid]
            self.takeovers[uuid] = {
                "vs_uuid": uuid, "vs_name": vs.name, "epoch": claim.epoch, "took_over_from": peer,
                "at": time.time(), "reason": reason,
            }
            self.log.warning("ha_took_over", vs=vs.name, vs_uuid=uuid, epoch=claim.epoch, took_over_from=peer, reason=reason)
        if peer in self._asked:
            self._consulted(peer)
        if taken:
            self._announce(list(taken))
            self._changed()
        self._reconcile()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- the channel ---------------------------------------------------------------------------

    def _dial(self, peer: str) -> Optional[PairLink]:
        link = self.links.dial(peer)
        if link is None:
            return None
        self._last_heard[peer] = time.monotonic()
        self._dialing.pop(peer, None)
        self._asked[peer] = time.monotonic()
        link.send(self._claims_message(peer, "hello", ask=True))
        self.log.info("ha_dialed", peer=peer)
        return link

    def _claims_message(self, peer: str, kind: str, *, ask: bool = False, reply: bool = False) -> dict[str, Any]:
        shared = self._shared_with(peer)
        need = [list(lst.address) for u in shared for lst in self.dataplane.listeners_of(u) if lst.held is None]
        doc: dict[str, Any] = {
            "t": kind, "from": self.name, "ask": ask, "reply": reply, "need": need,
            "claims": {u: self._claims[u].to_wire() for u in shared},
        }
        self.relays.advertise(doc)
        return doc

    def _announce(self, uuids: list[str]) -> None:
        """Tell the linked peers about changed claims (the lattice converges: they answer only on change)."""
        for peer in {p for u in uuids for p in self._peers(u)}:
            link = self.links.link_to(peer)
            if link is not None:
                link.send(self._claims_message(peer, "claims"))

    def _link_ended(self, link: PairLink, reason: str) -> None:
        """The last link with ``link.peer`` ended."""
        peer = link.peer
        assert peer is not None
        if not link.heard:
            self._peer_lost(peer, "peer_exited")
            return
        # The peer closed it: either it died, or it gave up on us (we were frozen). A dead peer's
        # socket refuses at once; a live one answers a new hello.
        if self._dial(peer) is None:
            self._peer_lost(peer, "peer_exited")
        else:
            self.log.info("ha_link_reopened", peer=peer, reason=reason)

    def _message(self, link: PairLink, doc: dict[str, Any], fds: list[socket.socket]) -> None:
        self._check_clock()
        kind = doc.get("t")
        peer = link.peer
        if peer is None:
            sender = doc.get("from")
            if kind != "hello" or not isinstance(sender, str) or not sender or sender == self.name:
                close_all(fds)
                self.links.end(link, "no hello")
                return
            self.links.identify(link, sender)
            self._dialing.pop(sender, None)
            self.log.info("ha_peer_connected", peer=sender)
            peer = sender
        self._last_heard[peer] = time.monotonic()
        if kind in ("hello", "claims"):
            close_all(fds)
            self.relays.learn(peer, doc)
            self._merge_from(peer, doc.get("claims"))
            if doc.get("ask"):
                link.send(self._claims_message(peer, "claims", reply=True))
            self._send_sockets(link, peer, doc.get("need"))
            if doc.get("reply") and peer in self._asked:
                self._consulted(peer)
        elif kind == "fd":
            self._take_socket(peer, doc, fds)
        elif kind == "conn":
            self._take_connection(peer, doc, fds)
        elif kind == "hb":
            close_all(fds)
            open_conns = doc.get("open")
            if isinstance(open_conns, int):
                self.shares.heard(peer, open_conns)
        else:
            close_all(fds)

    def _merge_from(self, peer: str, wire: Any) -> None:
        if not isinstance(wire, dict):
            return
        changed = []
        for uuid, raw in wire.items():
            mine = self._claims.get(uuid)
            theirs = ha.claim_from_wire(raw)
            if mine is None or theirs is None or peer not in self._peers(uuid):
                continue
            new = ha.merge(mine, theirs)
            assert new is not None
            if new != mine:
                # A claim naming us, from the only other SE, means it stopped accepting: confirmed.
                agreed = frozenset(self._peers(uuid)) if new.owner == self.name and new == theirs else frozenset()
                self._set_claim(uuid, new, confirmed_by=agreed)
                changed.append(uuid)
        if changed:
            self.log.info("ha_claims_merged", peer=peer, claims={u: self._claims[u].to_wire() for u in changed})
            self._announce(changed)
            self._reconcile()

    def _send_sockets(self, link: PairLink, peer: str, need: Any) -> None:
        if not isinstance(need, list):
            return
        for item in need:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], int)):
                continue
            listener = self.dataplane.listener_at((item[0], item[1]))
            if listener is None or listener.held is None:
                continue
            uuid = listener.vs.config.uuid
            if peer not in self._peers(uuid):
                continue
            claim = self._claims[uuid]
            link.send({"t": "fd", "vs": uuid, "vip": item[0], "port": item[1], "epoch": claim.epoch}, [listener.held.fileno()])

    def _listener_for(self, peer: str, doc: dict[str, Any]) -> Optional[Listener]:
        vip, port, uuid = doc.get("vip"), doc.get("port"), doc.get("vs")
        if not isinstance(vip, str) or not isinstance(port, int):
            return None
        listener = self.dataplane.listener_at((vip, port))
        if listener is None or listener.vs.config.uuid != uuid or peer not in self._peers(uuid):
            return None
        return listener

    def _take_socket(self, peer: str, doc: dict[str, Any], fds: list[socket.socket]) -> None:
        listener = self._listener_for(peer, doc)
        if listener is None or len(fds) != 1:
            close_all(fds)
            return
        if listener.adopt(fds[0]):
            self.log.info("ha_socket_held", vs=listener.vs.config.name, address=f"{listener.address[0]}:{listener.address[1]}", peer=peer)
            self._reconcile()

    def _take_connection(self, peer: str, doc: dict[str, Any], fds: list[socket.socket]) -> None:
        listener = self._listener_for(peer, doc)
        if listener is None or len(fds) != 1:
            close_all(fds)
            return
        self.taken += 1
        self.shares.received(listener.vs.config.uuid, "fd_passing")
        listener.serve_accepted(fds[0])

    # -- the periodic and level-triggered part -------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            try:
                self._tick()
            except Exception:
                self.log.exception("ha_tick_failed")

    def _tick(self) -> None:
        self._check_clock()
        now = time.monotonic()
        for peer, asked_at in list(self._asked.items()):
            if ha.peer_silent(asked_at, now, self.peer_timeout):
                self.log.info("ha_peer_did_not_answer", peer=peer)
                self._consulted(peer)
        for peer, heard in list(self._last_heard.items()):
            if peer in self.links and ha.peer_silent(heard, now, self.peer_timeout):
                self._peer_lost(peer, "peer_timeout")
        if now - self._last_heartbeat >= self.heartbeat_interval:
            self._last_heartbeat = now
            self.shares.beat(self.dataplane.open_connections())
            beat = {"t": "hb", "open": self.shares.own_open}
            for link in self.links.each():
                link.send(beat, droppable=True)
        self._reconcile()

    def _reconcile(self) -> None:
        """Make sockets and links match the claims; re-entrant calls are folded into one more pass."""
        if self._loop is None:
            return
        if self._reconciling:
            self._again = True
            return
        self._reconciling = True
        try:
            for _ in range(8):
                self._again = False
                self._reconcile_once()
                if not self._again:
                    break
        finally:
            self._reconciling = False

    def _reconcile_once(self) -> None:
        now = time.monotonic()
        for uuid in list(self._claims):
            claim = self._claims.get(uuid)
            if claim is None:
                continue
            if claim.owner == self.name:
                if self._may_accept(uuid):
                    if uuid not in self._activating and any(not lst.accepting for lst in self.dataplane.listeners_of(uuid)):
                        self._activating.add(uuid)
                        self.loop.create_task(self._activate(uuid))
                    continue
                for peer in self._peers(uuid):
                    if peer in self._asked:
                        continue
                    link = self.links.link_to(peer)
                    if link is not None:
                        self._asked[peer] = now
                        link.send(self._claims_message(peer, "claims", ask=True))
                    elif self._dial(peer) is None:
                        self._consulted(peer)  # nobody there to ask
            else:
                self._keep_link(claim.owner, now)
        self._resolve_pending(now)

    def _keep_link(self, owner: str, now: float) -> None:
        """A standby stays linked to its active; an active it cannot reach for ``dial_deadline`` is lost."""
        if owner in self.links:
            return
        since, next_at, backoff = self._dialing.get(owner, (now, now, 0.05))
        if now < next_at:
            self._dialing[owner] = (since, next_at, backoff)
            return
        if self._dial(owner) is not None:
            return
        if now - since > self.dial_deadline:
            self._peer_lost(owner, "peer_unreachable")
            return
        self._dialing[owner] = (since, now + backoff, min(backoff * 2, 0.2))

    async def _activate(self, uuid: str) -> None:
        try:
            for listener in self.dataplane.listeners_of(uuid):
                if not self._may_accept(uuid):
                    return
                if listener.accepting or listener.draining:
                    continue
                try:
                    await listener.start_accepting(self.dataplane.backlog)
                except OSError as exc:
                    message = f"cannot bind {listener.address[0]}:{listener.address[1]}: {exc}"
                    if self.errors.get(uuid) != message:
                        self.log.warning("ha_activate_failed", vs_uuid=uuid, error=message)
                    self.errors[uuid] = message
                    return
                if not self._may_accept(uuid):
                    listener.stop_accepting()
                    return
            self.errors.pop(uuid, None)
            self.log.info("ha_accepting", vs_uuid=uuid, claim=self._claims[uuid].to_wire())
            # A standby that said hello before these sockets existed holds none yet: push them now.
            addresses = [list(lst.address) for lst in self.dataplane.listeners_of(uuid)]
            for peer in self._peers(uuid):
                link = self.links.link_to(peer)
                if link is not None:
                    self._send_sockets(link, peer, addresses)
            self._changed()
        finally:
            self._activating.discard(uuid)
        self._resolve_pending(time.monotonic())

    def _resolve_pending(self, now: float) -> None:
        """Connections refused while unconfirmed: serve them once confirmed, or pass them to the owner."""
        keep = []
        for uuid, address, sock, since in self._pending:
            claim = self._claims.get(uuid)
            listener = self.dataplane.listener_at(address)
            if claim is None or listener is None or listener.vs.config.uuid != uuid:
                sock.close()
            elif claim.owner == self.name and self._may_accept(uuid):
                listener.serve_accepted(sock)
            elif claim.owner != self.name and (link := self.links.link_to(claim.owner)) is not None:
                if link.send({"t": "conn", "vs": uuid, "vip": address[0], "port": address[1]}, [sock.fileno()]):
                    self.handed_off += 1
                sock.close()
            elif now - since > PENDING_TTL:
                sock.close()
            else:
                keep.append((uuid, address, sock, since))
        self._pending = keep
