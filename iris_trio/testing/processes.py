"""Run ``iris-trio node`` processes and watch their JSON status lines (tests, benchmarks)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ..overlay.ids import RING

__all__ = ["NodeProcess", "expected_leaves", "leaves_match", "start_node", "wait_for"]


class NodeProcess:
    """One node process and its latest status line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.node_id: int | None = None
        self.status: dict[str, Any] = {}
        self.updated = trio.Event()
        self.ready: dict[str, Any] = {}  # the "ready" line: relay_port, address, ...
        self.is_ready = trio.Event()
        self.stopped = trio.Event()

    async def read(self) -> None:
        """Follow the process's stdout (run as a task)."""
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                record = json.loads(line)
                self.node_id = int(record["node_id"], 16)
                if record["event"] == "ready":
                    self.ready = record
                    self.is_ready.set()
                elif record["event"] == "stopped":
                    self.stopped.set()
                elif record["event"] == "status":
                    self.status = record
                    self.updated.set()
                    self.updated = trio.Event()

    def kill(self) -> None:
        """SIGKILL this process (by its pid), if it still runs."""
        if self.process.returncode is None:
            self.process.kill()


async def start_node(*arguments: str, prefix: Sequence[str] = ()) -> NodeProcess:
    """Start ``[prefix...] python -m iris_trio.cli node ARGUMENTS``."""
    process = await trio.lowlevel.open_process(
        [*prefix, sys.executable, "-m", "iris_trio.cli", "node", *arguments],
        stdout=subprocess.PIPE,
    )
    return NodeProcess(process)


def expected_leaves(node: int, ids: Sequence[int], size: int = 8) -> tuple[list[int], list[int]]:
    """The true (right, left) leaf set of ``node`` among ``ids``."""
    others = [i for i in ids if i != node]
    right = sorted(others, key=lambda i: (i - node) % RING)[:size]
    left = sorted(others, key=lambda i: (node - i) % RING)[:size]
    return right, left


def leaves_match(nodes: Sequence[NodeProcess]) -> bool:
    """True when every node's last status shows exactly its true leaf set."""
    ids = [n.node_id for n in nodes]
    if any(i is None for i in ids) or any(not n.status for n in nodes):
        return False
    known = [i for i in ids if i is not None]
    for node in nodes:
        assert node.node_id is not None
        right, left = expected_leaves(node.node_id, known)
        have_right = [int(x, 16) for x in node.status["leaves_right"]]
        have_left = [int(x, 16) for x in node.status["leaves_left"]]
        if (have_right, have_left) != (right, left):
            return False
    return True


async def wait_for(
    nodes: Sequence[NodeProcess], condition: Callable[[Sequence[NodeProcess]], bool], timeout: float
) -> float:
    """Wait until ``condition(nodes)`` holds; return how long it took."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not condition(nodes):
            await nodes[0].updated.wait()
    return trio.current_time() - start
