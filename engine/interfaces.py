"""An SE host's data interface: what it is, VIPs on it, and gratuitous ARP. A thin shell.

Addresses change over netlink (pyroute2), never by running ``ip``. A gratuitous ARP is one
broadcast ARP request whose sender and target are the VIP and whose sender MAC is the interface's,
sent from an AF_PACKET socket: a client's neighbour entry for the VIP moves to this MAC at once
(without it a client kept the old MAC for 29.5 s in our measurement). A standby
listens on its VIPs before it holds them (``IP_FREEBIND``), so it serves the moment it takes one.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "IP_FREEBIND",
    "Vnic",
    "add_address",
    "describe",
    "freebind_listener",
    "holds_address",
    "remove_address",
    "send_garp",
    "set_direct_return",
]

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
_ETH_P_ARP = 0x0806


@attrs.frozen
class Vnic:
    """A data interface as the SE reports it when it registers (the real product's ``vNIC``)."""

    if_name: str
    mac_address: str
    #: (address, prefix length) of every IPv4 address on it
    networks: tuple[tuple[str, int], ...]

    def to_report(self) -> dict[str, Any]:
        return {
            "if_name": self.if_name,
            "mac_address": self.mac_address,
            "vnic_networks": [{"ip": {"ip_addr": {"addr": addr, "type": "V4"}, "mask": mask}, "mode": "STATIC"} for addr, mask in self.networks],
        }


def _ipr() -> Any:
    from pyroute2 import IPRoute  # netlink, in the namespace the SE runs in

    return IPRoute()


def _index(ipr: Any, if_name: str) -> int:
    found = ipr.link_lookup(ifname=if_name)
    if not found:
        raise OSError(errno.ENODEV, f"no interface named {if_name!r}")
    return int(found[0])


def describe(if_name: str, *, exclude: frozenset[str] = frozenset()) -> Vnic:
    """The interface's MAC and IPv4 addresses (``exclude``: VIPs this SE holds, not the host's own)."""
    with _ipr() as ipr:
        index = _index(ipr, if_name)
        link = ipr.get_links(index)[0]
        mac = str(link.get_attr("IFLA_ADDRESS"))
        networks = tuple(
            (str(a.get_attr("IFA_ADDRESS")), int(a["prefixlen"]))
            for a in ipr.get_addr(index=index, family=socket.AF_INET)
            if str(a.get_attr("IFA_ADDRESS")) not in exclude
        )
    return Vnic(if_name, mac, networks)


def holds_address(if_name: str, addr: str) -> bool:
    with _ipr() as ipr:
        index = _index(ipr, if_name)
        return any(str(a.get_attr("IFA_ADDRESS")) == addr for a in ipr.get_addr(index=index, family=socket.AF_INET))


def add_address(if_name: str, addr: str, prefixlen: int = 32) -> bool:
    """Put ``addr`` on the interface; False when it was there already."""
    with _ipr() as ipr:
        try:
            ipr.addr("add", index=_index(ipr, if_name), address=addr, prefixlen=prefixlen)
        except Exception as exc:  # pyroute2's NetlinkError carries the errno in .code
            if getattr(exc, "code", None) == errno.EEXIST:
                return False
            raise
    return True


def remove_address(if_name: str, addr: str, prefixlen: int = 32) -> bool:
    """Take ``addr`` off the interface; False when it was not there."""
    with _ipr() as ipr:
        try:
            ipr.addr("del", index=_index(ipr, if_name), address=addr, prefixlen=prefixlen)
        except Exception as exc:
            if getattr(exc, "code", None) in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                return False
            raise
    return True


def garp_frame(mac: str, addr: str) -> bytes:
    """A broadcast ARP request announcing that ``addr`` is at ``mac`` (sender = target = ``addr``)."""
    own = bytes.fromhex(mac.replace(":", ""))
    ip = ipaddress.IPv4Address(addr).packed
    ethernet = b"\xff" * 6 + own + struct.pack("!H", _ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + own + ip + b"\x00" * 6 + ip
    return ethernet + arp


def send_garp(if_name: str, addr: str, mac: str, count: int = 1) -> None:
    """Announce ``addr`` on ``if_name`` (needs CAP_NET_RAW); never waits for an answer."""
    frame = garp_frame(mac, addr)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ARP)) as raw:
        raw.bind((if_name, 0))
        for _ in range(count):
            raw.send(frame)


def set_direct_return(if_name: str) -> None:
    """Answer ARP only for addresses on the interface asked about, and announce only those
    (``arp_ignore=1``, ``arp_announce=2``): a secondary holds the VIP on ``lo`` without answering ARP for it."""
    for scope in ("all", if_name):
        base = Path("/proc/sys/net/ipv4/conf") / scope
        (base / "arp_ignore").write_text("1\n")
        (base / "arp_announce").write_text("2\n")


def freebind_listener(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on ``host:port`` whether or not this host holds ``host`` yet."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
