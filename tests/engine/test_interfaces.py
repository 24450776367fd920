"""The SE host's data interface, for real: netlink addresses, a gratuitous ARP on the wire, a
listener bound before its address exists. Runs in a network namespace of its own (root)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from typing import Any, Iterator

import pytest

from engine.interfaces import describe, freebind_listener, garp_frame

NS = f"avif-{os.getpid()}"


def _can_make_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """A namespace holding a veth pair (eth0 <-> peer0), both up, eth0 at 10.99.77.2/24."""
    if not _can_make_namespaces():
        pytest.skip("needs root and iproute2 to make a network namespace")
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        for argv in (["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"],
                     ["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "peer0", "up"],
                     ["ip", "addr", "add", "10.99.77.2/24", "dev", "eth0"]):
            subprocess.run(["ip", "netns", "exec", NS, *argv], check=True)
        yield NS
    finally:
        subprocess.run(["ip", "netns", "delete", NS], check=False)


def in_netns(ns: str, code: str) -> Any:
    """Run ``code`` (which prints one JSON line) in the namespace with this project's modules."""
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=30, cwd=os.getcwd())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_describe_reports_mac_and_addresses_of_an_interface() -> None:
    vnic = describe("lo")
    assert vnic.if_name == "lo" and ("127.0.0.1", 8) in vnic.networks
    report = vnic.to_report()
    assert report["vnic_networks"][0]["ip"]["ip_addr"]["type"] == "V4"


def test_a_gratuitous_arp_frame_announces_the_vip_at_our_mac() -> None:
    frame = garp_frame("02:00:00:00:00:01", "10.99.0.100")
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == bytes.fromhex("020000000001") and frame[12:14] == b"\x08\x06"
    assert frame[20:22] == b"\x00\x01", "an ARP request"
    assert frame[28:32] == frame[38:42] == socket.inet_aton("10.99.0.100"), "sender and target are the VIP"


def test_a_listener_binds_an_address_this_host_does_not_hold_yet() -> None:
    sock = freebind_listener("10.255.255.77", 0)
    try:
        assert sock.getsockname()[0] == "10.255.255.77"
    finally:
        sock.close()


def test_addresses_come_and_go_over_netlink_and_the_garp_reaches_the_wire(netns: str) -> None:
    """add_address / remove_address change the interface (idempotently); send_garp puts exactly
    the announcement on the link (read at the veth's other end)."""
    result = in_netns(netns, """
        import json, socket
        from engine import interfaces as i
        out = {"added": i.add_address("eth0", "10.99.77.100"), "again": i.add_address("eth0", "10.99.77.100"),
               "holds": i.holds_address("eth0", "10.99.77.100")}
        vnic = i.describe("eth0", exclude=frozenset({"10.99.77.100"}))
        out["networks"] = vnic.networks
        sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
        sniffer.bind(("peer0", 0))
        sniffer.settimeout(5)
        i.send_garp("eth0", "10.99.77.100", vnic.mac_address)
        out["frame_ok"] = sniffer.recv(2048)[:42] == i.garp_frame(vnic.mac_address, "10.99.77.100")
        out["removed"] = i.remove_address("eth0", "10.99.77.100")
        out["gone"] = not i.holds_address("eth0", "10.99.77.100")
        out["removed_again"] = i.remove_address("eth0", "10.99.77.100")
        print(json.dumps(out))
    """)
    assert result == {"added": True, "again": False, "holds": True, "networks": [["10.99.77.2", 24]], "frame_ok": True,
                      "removed": True, "gone": True, "removed_again": False}
