"""LAN discovery between hosts in network namespaces this test creates and removes.

Three hosts and a stranger (same network name, another key) hang off one
bridge, itself in a namespace of its own; nothing touches the machine's real
interfaces. Skipped, with the reason, where namespaces cannot be created.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from iris_trio.crypto import NetworkKey
from iris_trio.testing.processes import NodeProcess, leaves_match, wait_for

PREFIX = f"itr{os.getpid() % 100000}"
BRIDGE_NS = f"{PREFIX}br"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _can_create_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (the ip command) is not installed"
    probe = f"{PREFIX}probe"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create a network namespace here: {exc}"
    _ip("netns", "del", probe)
    return None


_REASON = _can_create_namespaces()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def host_ns(index: int) -> str:
    return f"{PREFIX}h{index}"


@pytest.fixture
def lan() -> Iterator[list[str]]:
    """Four hosts 10.77.0.1-4 on one bridge; everything removed afterwards by name."""
    created: list[str] = []
    try:
        _ip("netns", "add", BRIDGE_NS)
        created.append(BRIDGE_NS)
        _ip("-n", BRIDGE_NS, "link", "add", "br0", "type", "bridge")
        _ip("-n", BRIDGE_NS, "link", "set", "br0", "up")
        hosts = []
        for index in range(1, 5):
            name = host_ns(index)
            _ip("netns", "add", name)
            created.append(name)
            host_end, bridge_end = f"{PREFIX}v{index}a", f"{PREFIX}v{index}b"
            _ip("link", "add", host_end, "type", "veth", "peer", "name", bridge_end)
            _ip("link", "set", host_end, "netns", name)
            _ip("link", "set", bridge_end, "netns", BRIDGE_NS)
            _ip("-n", BRIDGE_NS, "link", "set", bridge_end, "master", "br0", "up")
            _ip("-n", name, "link", "set", host_end, "name", "eth0")
            _ip("-n", name, "addr", "add", f"10.77.0.{index}/24", "brd", "+", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
            hosts.append(name)
        yield hosts
    finally:
        for name in reversed(created):
            subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, timeout=10, check=False
            )


def _key_file(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text(base64.b64encode(NetworkKey.generate().secret).decode())
    return path


async def _start(host: str, index: int, key: Path) -> NodeProcess:
    process = await trio.lowlevel.open_process(
        [
            "ip",
            "netns",
            "exec",
            host,
            sys.executable,
            "-m",
            "iris_trio.cli",
            "node",
            "--net",
            "lan-test",
            "--key",
            str(key),
            "--discovery",
            "lan",
            "--listen",
            f"10.77.0.{index}:0",
            "--status-interval",
            "0.3",
        ],
        stdout=subprocess.PIPE,
    )
    return NodeProcess(process)


async def test_lan_discovery_cut_and_merge(lan: list[str], tmp_path: Path) -> None:
    key, other_key = _key_file(tmp_path, "net.key"), _key_file(tmp_path, "other.key")
    started: list[NodeProcess] = []
    async with trio.open_nursery() as nursery:
        try:
            for index in (1, 2, 3):
                started.append(await _start(lan[index - 1], index, key))
            started.append(await _start(lan[3], 4, other_key))  # the stranger
            for node in started:
                nursery.start_soon(node.read)
            nodes, stranger = started[:3], started[3]
            await wait_for(nodes, leaves_match, timeout=40)
            await trio.sleep(2)  # the stranger's beacons keep arriving meanwhile
            assert all(n.status["peers"] == 2 for n in nodes)
            assert stranger.status.get("peers", 0) == 0

            # Cut host 3's cable: the others drop it after the silence bound.
            _ip("-n", lan[2], "link", "set", "eth0", "down")
            await wait_for(nodes[:2], leaves_match, timeout=15)
            # Plug it back: discovery never stops, so the ring merges again.
            _ip("-n", lan[2], "link", "set", "eth0", "up")
            await wait_for(nodes, leaves_match, timeout=60)
            assert all(n.status["peers"] == 2 for n in nodes)
        finally:
            for node in started:  # by pid: only what this test started
                node.kill()
            with trio.move_on_after(5):
                for node in started:
                    await node.process.wait()
            nursery.cancel_scope.cancel()
