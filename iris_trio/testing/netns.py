"""Hosts in network namespaces on one bridge, for tests and benchmarks (root only).

Everything is created under a name prefix and removed afterwards by name; the
machine's real interfaces are never touched: the bridge lives in a namespace of
its own, and each host is a namespace with one veth end (``eth0``,
10.77.0.N/24) plugged into it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Host", "ip", "lan", "why_not"]


class Host:
    """One namespace host: its name (for ``ip netns exec``) and its address."""

    def __init__(self, namespace: str, address: str) -> None:
        self.namespace = namespace
        self.address = address

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this host."""
        return ["ip", "netns", "exec", self.namespace, *argv]


def ip(*args: str) -> None:
    """Run ``ip ARGS`` (raises on failure)."""
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def why_not(prefix: str) -> str | None:
    """Why namespaces cannot be created here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (the ip command) is not installed"
    probe = f"{prefix}probe"
    try:
        ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create a network namespace here: {exc}"
    ip("netns", "del", probe)
    return None


@contextmanager
def lan(prefix: str, count: int) -> Iterator[list[Host]]:
    """``count`` hosts 10.77.0.1.. on one bridge; all removed afterwards by name.

    ``prefix`` (a few letters and the caller's pid, say) names every namespace
    and interface created, so that only those are removed.
    """
    bridge = f"{prefix}br"
    created: list[str] = []
    try:
        ip("netns", "add", bridge)
        created.append(bridge)
        ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", bridge, "link", "set", "br0", "up")
        hosts = []
        for index in range(1, count + 1):
            name = f"{prefix}h{index}"
            ip("netns", "add", name)
            created.append(name)
            host_end, bridge_end = f"{prefix}v{index}a", f"{prefix}v{index}b"
            ip("link", "add", host_end, "type", "veth", "peer", "name", bridge_end)
            ip("link", "set", host_end, "netns", name)
            ip("link", "set", bridge_end, "netns", bridge)
            ip("-n", bridge, "link", "set", bridge_end, "master", "br0", "up")
            ip("-n", name, "link", "set", host_end, "name", "eth0")
            ip("-n", name, "addr", "add", f"10.77.0.{index}/24", "brd", "+", "dev", "eth0")
            ip("-n", name, "link", "set", "eth0", "up")
            ip("-n", name, "link", "set", "lo", "up")
            hosts.append(Host(name, f"10.77.0.{index}"))
        yield hosts
    finally:
        for name in reversed(created):
            subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, timeout=10, check=False
            )
