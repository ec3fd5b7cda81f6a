"""A second host on this machine: a network namespace joined to the test's own by a veth pair.

The test's namespace is host A (its servers listen on A's end of the pair); host B is the new
namespace, which reaches A only over the pair: no loopback shortcut to A's servers, so a
process there sees exactly what a process on another machine sees, and cutting B's end of the
link (``ip link set … down``) is a network failure, not a kill. Needs root (CAP_NET_ADMIN) and
the ``ip`` tool; :func:`unavailable` says why not where they are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


@dataclass(frozen=True)
class Link:
    """Host B (a namespace) and the veth pair that is its only way to host A."""

    namespace: str
    a_device: str
    b_device: str
    a_address: str  # where host B reaches host A's servers
    b_address: str
    network: str  # the pair's subnet, CIDR

    @property
    def on_b(self) -> list[str]:
        """The prefix that runs a command on host B."""
        return ["ip", "netns", "exec", self.namespace]

    def cut(self) -> None:
        """Host B's link goes down: its packets to A go nowhere until :meth:`restore`."""
        _ip("-n", self.namespace, "link", "set", self.b_device, "down")

    def restore(self) -> None:
        _ip("-n", self.namespace, "link", "set", self.b_device, "up")

    def reachable_from_b(self, port: int) -> bool:
        probe = (
            "import socket,sys; s=socket.socket(); s.settimeout(2); "
            f"sys.exit(s.connect_ex(({self.a_address!r}, {port})))"
        )
        done = subprocess.run(
            [*self.on_b, "python3", "-c", probe], capture_output=True, timeout=30, check=False
        )
        return done.returncode == 0


def unavailable() -> str | None:
    """Why a second host cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN); run the suite as root"
    if shutil.which("ip") is None:
        return "no `ip` tool (Debian: apt-get install iproute2)"
    probe = f"ic-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed here: {made.stderr.strip() or made.returncode}"
    _ip("netns", "del", probe, check=False)
    return None


@contextmanager
def second_host() -> Iterator[Link]:
    """Host B for the block; removed (namespace and pair) after it, whatever happened."""
    tag = os.getpid() % 100_000
    subnet = f"10.{200 + tag % 50}.{tag % 250}"
    link = Link(
        namespace=f"ic-host-b-{tag}",
        a_device=f"icA{tag}",
        b_device=f"icB{tag}",
        a_address=f"{subnet}.1",
        b_address=f"{subnet}.2",
        network=f"{subnet}.0/24",
    )
    _ip("netns", "del", link.namespace, check=False)  # left by a killed run with this pid
    _ip("link", "del", link.a_device, check=False)
    try:
        _ip("netns", "add", link.namespace)
        _ip("link", "add", link.a_device, "type", "veth", "peer", "name", link.b_device)
        _ip("link", "set", link.b_device, "netns", link.namespace)
        _ip("addr", "add", f"{link.a_address}/24", "dev", link.a_device)
        _ip("link", "set", link.a_device, "up")
        _ip("-n", link.namespace, "addr", "add", f"{link.b_address}/24", "dev", link.b_device)
        _ip("-n", link.namespace, "link", "set", link.b_device, "up")
        _ip("-n", link.namespace, "link", "set", "lo", "up")
        yield link
    finally:
        _ip("netns", "del", link.namespace, check=False)  # takes B's end, and so the pair
        _ip("link", "del", link.a_device, check=False)
