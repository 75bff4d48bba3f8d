"""Real node processes on 127.0.0.1: zero-configuration discovery and crash detection."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from iris_trio.overlay.ids import RING


class NodeProcess:
    """One ``iris-trio node --dev`` process and its latest status line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.node_id: int | None = None
        self.status: dict[str, Any] = {}
        self.updated = trio.Event()

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                record = json.loads(line)
                self.node_id = int(record["node_id"], 16)
                if record["event"] == "status":
                    self.status = record
                    self.updated.set()
                    self.updated = trio.Event()


@asynccontextmanager
async def node_processes(count: int) -> AsyncIterator[list[NodeProcess]]:
    nodes: list[NodeProcess] = []
    async with trio.open_nursery() as nursery:
        try:
            for _ in range(count):
                process = await trio.lowlevel.open_process(
                    [
                        sys.executable,
                        "-m",
                        "iris_trio.cli",
                        "node",
                        "--dev",
                        "--discovery",
                        "loopback",
                        "--status-interval",
                        "0.2",
                    ],
                    stdout=subprocess.PIPE,
                )
                node = NodeProcess(process)
                nodes.append(node)
                nursery.start_soon(node.read)
            yield nodes
        finally:
            for node in nodes:  # only the processes this test started, by pid
                if node.process.returncode is None:
                    node.process.kill()
            with trio.move_on_after(5):
                for node in nodes:
                    await node.process.wait()
            nursery.cancel_scope.cancel()


def leaves_match(nodes: list[NodeProcess]) -> bool:
    ids = [n.node_id for n in nodes]
    if None in ids or any(not n.status for n in nodes):
        return False
    for node in nodes:
        assert node.node_id is not None
        others = [i for i in ids if i != node.node_id]
        right = sorted(others, key=lambda i: (i - node.node_id) % RING)[:8]  # type: ignore[operator]
        left = sorted(others, key=lambda i: (node.node_id - i) % RING)[:8]  # type: ignore[operator]
        have_right = [int(x, 16) for x in node.status["leaves_right"]]
        have_left = [int(x, 16) for x in node.status["leaves_left"]]
        if (have_right, have_left) != (right, left):
            return False
    return True


async def wait_for(nodes: list[NodeProcess], condition: Any, timeout: float) -> float:
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not condition(nodes):
            await nodes[0].updated.wait()
    return trio.current_time() - start


async def test_five_processes_find_each_other_and_notice_a_kill() -> None:
    async with node_processes(5) as nodes:
        await wait_for(nodes, leaves_match, timeout=30)
        victim = nodes.pop(2)
        victim.process.send_signal(signal.SIGKILL)
        took = await wait_for(nodes, leaves_match, timeout=10)
        # A killed process closes its connections: noticed at once, not after timeouts.
        assert took < 2.0, took
        assert all(n.status["peers_declared_dead"] == 0 for n in nodes)


async def test_sigterm_leaves_gracefully_with_status_zero() -> None:
    async with node_processes(2) as nodes:
        await wait_for(nodes, leaves_match, timeout=30)
        nodes[0].process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await nodes[0].process.wait() == 0
