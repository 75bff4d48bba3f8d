"""Real node processes on 127.0.0.1: zero-configuration discovery and crash detection.

The processes join a network of the test's own (name and key), so a user's own
``iris-trio node --dev`` on this host is neither joined nor disturbed: its
beacons, on the shared loopback port range, are refused as a stranger's.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from iris_trio.testing.processes import NodeProcess, leaves_match, start_node, wait_for

from .helpers_cluster import private_network


@asynccontextmanager
async def node_processes(count: int, directory: Path) -> AsyncIterator[list[NodeProcess]]:
    """``count`` node processes on a network of their own, found by loopback discovery."""
    network = private_network("processes")
    key_file = directory / "network.key"
    key_file.write_text(network.key.secret.hex())
    nodes: list[NodeProcess] = []
    async with trio.open_nursery() as nursery:
        try:
            for _ in range(count):
                node = await start_node(
                    *("--net", network.name, "--key", str(key_file)),
                    *("--listen", "127.0.0.1:0", "--port", "0", "--discovery", "loopback"),
                    *("--status-interval", "0.2"),
                )
                nodes.append(node)
                nursery.start_soon(node.read)
            yield nodes
        finally:
            for node in nodes:  # only the processes this test started, by pid
                node.kill()
            with trio.move_on_after(5):
                for node in nodes:
                    await node.process.wait()
            nursery.cancel_scope.cancel()


async def test_five_processes_find_each_other_and_notice_a_kill(tmp_path: Path) -> None:
    async with node_processes(5, tmp_path) as nodes:
        await wait_for(nodes, leaves_match, timeout=30)
        victim = nodes.pop(2)
        victim.process.send_signal(signal.SIGKILL)
        took = await wait_for(nodes, leaves_match, timeout=10)
        # A killed process closes its connections: noticed at once, not after timeouts.
        assert took < 3.0, took  # well under the 4 s bound for silent peers
        assert all(n.status["peers_declared_dead"] == 0 for n in nodes)


async def test_sigterm_leaves_gracefully_with_status_zero(tmp_path: Path) -> None:
    async with node_processes(2, tmp_path) as nodes:
        await wait_for(nodes, leaves_match, timeout=30)
        nodes[0].process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await nodes[0].process.wait() == 0
