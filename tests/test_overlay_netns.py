"""LAN discovery between hosts in network namespaces this test creates and removes.

Three hosts and a stranger (same network name, another key) hang off one
bridge, itself in a namespace of its own; nothing touches the machine's real
interfaces. Skipped, with the reason, where namespaces cannot be created.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from iris_trio.crypto import NetworkKey
from iris_trio.testing import netns
from iris_trio.testing.netns import why_not
from iris_trio.testing.processes import NodeProcess, leaves_match, wait_for

PREFIX = f"itr{os.getpid() % 100000}"


_REASON = why_not(PREFIX)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@pytest.fixture
def lan() -> Iterator[list[str]]:
    """Four hosts 10.77.0.1-4 on one bridge; everything removed afterwards by name."""
    with netns.lan(PREFIX, 4) as hosts:
        yield [host.namespace for host in hosts]


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
            netns.ip("-n", lan[2], "link", "set", "eth0", "down")
            await wait_for(nodes[:2], leaves_match, timeout=15)
            # Plug it back: discovery never stops, so the ring merges again.
            netns.ip("-n", lan[2], "link", "set", "eth0", "up")
            await wait_for(nodes, leaves_match, timeout=60)
            assert all(n.status["peers"] == 2 for n in nodes)
        finally:
            for node in started:  # by pid: only what this test started
                node.kill()
            with trio.move_on_after(5):
                for node in started:
                    await node.process.wait()
            nursery.cancel_scope.cancel()


@pytest.fixture
def six_hosts() -> Iterator[list[str]]:
    """Six hosts 10.77.0.1-6 on one bridge, and a second bridge to split them on."""
    with netns.lan(PREFIX, 6) as hosts:
        netns.ip("-n", f"{PREFIX}br", "link", "add", "br1", "type", "bridge")
        netns.ip("-n", f"{PREFIX}br", "link", "set", "br1", "up")
        yield [host.namespace for host in hosts]


def _move(hosts: range, bridge: str) -> None:
    """Plug the cables of ``hosts`` (1-based) into ``bridge``."""
    for index in hosts:
        netns.ip("-n", f"{PREFIX}br", "link", "set", f"{PREFIX}v{index}b", "master", bridge)


async def _start_seeded(host: str, index: int, key: Path) -> NodeProcess:
    listen = "10.77.0.1:4000" if index == 1 else f"10.77.0.{index}:0"
    process = await trio.lowlevel.open_process(
        [
            *("ip", "netns", "exec", host, sys.executable, "-m", "iris_trio.cli", "node"),
            *("--net", "split-test", "--key", str(key), "--discovery", "off"),
            *("--listen", listen, "--seed", "10.77.0.1:4000", "--port", "0"),
            *("--status-interval", "0.3"),
        ],
        stdout=subprocess.PIPE,
    )
    return NodeProcess(process)


@pytest.mark.slow
async def test_a_split_ring_of_seeded_hosts_merges_once_healed(
    six_hosts: list[str], tmp_path: Path
) -> None:
    """Seeds only (no discovery): hosts 4-6 are cut off from 1-3 (their seed's
    side) for 20 s, long enough for each side to declare the other dead and
    settle into a ring of its own; once healed, the two rings merge into one."""
    key = _key_file(tmp_path, "net.key")
    started: list[NodeProcess] = []
    async with trio.open_nursery() as nursery:
        try:
            for index in range(1, 7):
                started.append(await _start_seeded(six_hosts[index - 1], index, key))
                nursery.start_soon(started[-1].read)
            await wait_for(started, leaves_match, timeout=60)
            _move(range(4, 7), "br1")
            await trio.sleep(20)
            await wait_for(started[:3], leaves_match, timeout=20)
            await wait_for(started[3:], leaves_match, timeout=20)
            assert all(n.status["peers"] == 2 for n in started)  # two rings of three
            _move(range(4, 7), "br0")
            took = await wait_for(started, leaves_match, timeout=90)
            assert all(n.status["peers"] == 5 for n in started)
            print(f"merged {took:.1f} s after healing")
        finally:
            for node in started:  # by pid: only what this test started
                node.kill()
            with trio.move_on_after(5):
                for node in started:
                    await node.process.wait()
            nursery.cancel_scope.cancel()
