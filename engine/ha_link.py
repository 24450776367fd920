"""The pair link: messages between the SEs of one host, over a Unix socket, with file descriptors.

Each SE listens on ``{ha_dir}/{name}.sock`` (``AF_UNIX``/``SOCK_SEQPACKET``: one JSON object per
message, at most ``MAX_MESSAGE`` bytes, file descriptors attached to the message they belong to).
Either SE may dial the other; a link it accepted is anonymous until its first message names the
peer (``PairLinks.identify``), one it dialed knows its peer from the start.

``PairLinks`` is this SE's end: the listening socket and the open links by peer. What the messages
mean is ``engine.ha_coordinator``'s: it is handed each message (``on_message``), it is told when
the last link with a peer has ended (``on_ended``), and it is asked to check its clock before each
read (``before_read``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

__all__ = ["MAX_FDS", "MAX_MESSAGE", "SUN_PATH_MAX", "PairLink", "PairLinks", "close_all"]

MAX_MESSAGE = 65536
MAX_FDS = 16
SUN_PATH_MAX = 107
# A send of file descriptors refused for the descriptors, not the link (an LSM, a limit): the link stays.
_FDS_REFUSED = frozenset({errno.EPERM, errno.EACCES, errno.ETOOMANYREFS, errno.EMFILE, errno.ENFILE})


class PairLink:
    """One connection with a peer SE (either side may have dialed)."""

    def __init__(self, links: PairLinks, sock: socket.socket, *, peer: Optional[str] = None) -> None:
        self.links = links
        self.sock = sock
        self.peer = peer
        self.dialed = peer is not None
        self.heard = False
        self.closed = False
        self.fds_refused = False
        sock.setblocking(False)
        links.loop.add_reader(sock.fileno(), self._readable)

    def send(self, doc: dict[str, Any], fds: list[int] | tuple[int, ...] = (), *, droppable: bool = False) -> bool:
        if self.closed:
            return False
        data = json.dumps(doc, separators=(",", ":")).encode()
        try:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.send(data)
            return True
        except BlockingIOError:
            if droppable:
                return False
            self.links.end(self, "send buffer full")
            return False
        except OSError as exc:
            if fds and exc.errno in _FDS_REFUSED:
                if not self.fds_refused:  # said once per link: it may well refuse every one
                    self.fds_refused = True
                    self.links.log.warning("ha_fd_send_refused", peer=self.peer, error=str(exc))
                return False
            self.links.end(self, str(exc))
            return False

    def _readable(self) -> None:
        # An end of link right after our own freeze must be judged with the freeze known.
        self.links.before_read()
        while not self.closed:
            try:
                data, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.links.end(self, str(exc))
                return
            received = [socket.socket(fileno=fd) for fd in fds]
            if not data:
                close_all(received)
                self.links.end(self, "closed by peer")
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                close_all(received)
                self.links.end(self, "message too long")
                return
            try:
                doc = json.loads(data)
                if not isinstance(doc, dict):
                    raise ValueError("not an object")
            except ValueError:
                close_all(received)
                self.links.end(self, "not a JSON object")
                return
            self.heard = True
            self.links.on_message(self, doc, received)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.links.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()


class PairLinks:
    """This SE's end of its pair links: the Unix socket its peers dial, and the open links by peer."""

    def __init__(
        self,
        se_name: str,
        ha_dir: Path,
        *,
        log: Any,
        on_message: Callable[[PairLink, dict[str, Any], list[socket.socket]], None],
        on_ended: Callable[[PairLink, str], None],
        before_read: Callable[[], None],
    ) -> None:
        self.ha_dir = ha_dir
        self.path = ha_dir / f"{se_name}.sock"
        if len(os.fsencode(str(self.path))) > SUN_PATH_MAX:
            raise ValueError(f"HA socket path too long for a Unix socket ({SUN_PATH_MAX} bytes max): {self.path}")
        self.log = log
        self.on_message = on_message
        self.on_ended = on_ended
        self.before_read = before_read
        self._by_peer: dict[str, list[PairLink]] = {}
        self._anonymous: set[PairLink] = set()
        self._server: Optional[socket.socket] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Listen on ``path``, replacing a stale socket file; links can be dialed even when that fails."""
        self._loop = loop
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.ha_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            server.bind(str(self.path))
            server.listen(16)
            server.setblocking(False)
        except OSError as exc:
            # Serving goes on; peers cannot reach us, so a standby cannot hold our sockets (and its
            # own bind of a VIP we hold fails: the kernel still keeps one owner).
            server.close()
            self.log.error("ha_unavailable", path=str(self.path), error=str(exc))
        else:
            self._server = server
            loop.add_reader(server.fileno(), self._accept)
            self.log.info("ha_listening", path=str(self.path))

    def close(self) -> None:
        """Close every link and stop listening; the socket file goes too, unless another SE has replaced it."""
        for link in [*self._anonymous, *(lk for links in self._by_peer.values() for lk in links)]:
            link.close()
        self._anonymous.clear()
        self._by_peer.clear()
        if self._server is not None:
            self.loop.remove_reader(self._server.fileno())
            try:
                if os.stat(self.path).st_ino == os.fstat(self._server.fileno()).st_ino:
                    self.path.unlink()
            except OSError:
                pass
            self._server.close()
            self._server = None

    def dial(self, peer: str) -> Optional[PairLink]:
        """A new link to ``peer``; None when its socket refuses (nobody is listening there)."""
        path = self.ha_dir / f"{peer}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            return None
        link = PairLink(self, sock, peer=peer)
        self._by_peer.setdefault(peer, []).append(link)
        return link

    def identify(self, link: PairLink, peer: str) -> None:
        """An accepted link's first message named its ``peer``: from now on it is one of that peer's links."""
        link.peer = peer
        self._anonymous.discard(link)
        self._by_peer.setdefault(peer, []).append(link)

    def link_to(self, peer: str) -> Optional[PairLink]:
        """The newest link with ``peer``, if any."""
        links = self._by_peer.get(peer)
        return links[-1] if links else None

    def __contains__(self, peer: object) -> bool:
        """Whether this SE has a link with ``peer``."""
        return peer in self._by_peer

    def peers(self) -> list[str]:
        return list(self._by_peer)

    def each(self) -> Iterator[PairLink]:
        """Every link with a known peer; a peer's links are read when its turn comes (a send may end some)."""
        for links in list(self._by_peer.values()):
            yield from list(links)

    def drop(self, peer: str) -> None:
        """Close every link with ``peer`` (it is lost); ``on_ended`` is not called."""
        for link in self._by_peer.pop(peer, []):
            link.close()

    def end(self, link: PairLink, reason: str) -> None:
        """Close ``link``; when it was its peer's last, ``on_ended`` is told."""
        if link.closed:
            return
        link.close()
        self._anonymous.discard(link)
        peer = link.peer
        if peer is None:
            return
        links = self._by_peer.get(peer, [])
        if link in links:
            links.remove(link)
        if links:
            return
        self._by_peer.pop(peer, None)
        self.on_ended(link, reason)

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                conn, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("ha_accept_failed", error=str(exc))
                return
            self._anonymous.add(PairLink(self, conn))


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
