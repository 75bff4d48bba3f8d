"""Faults on real node processes with seeds only (no discovery): a node started
before its seed, a node frozen and resumed, and a same-identity replacement of
a frozen node all end up in one ring."""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from iris_trio.testing.processes import NodeProcess, leaves_match, start_node, wait_for

from .helpers_cluster import private_network


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Processes:
    def __init__(self, directory: Path, nursery: trio.Nursery) -> None:
        network = private_network("faults")
        self.key_file = directory / "network.key"
        self.key_file.write_text(network.key.secret.hex())
        self.network = network.name
        self.seed = f"127.0.0.1:{_free_port()}"
        self.nodes: list[NodeProcess] = []
        self._nursery = nursery

    async def start(
        self, *, listen: str = "127.0.0.1:0", identity: Path | None = None
    ) -> NodeProcess:
        node = await start_node(
            *("--net", self.network, "--key", str(self.key_file)),
            *("--listen", listen, "--port", "0", "--discovery", "off", "--seed", self.seed),
            *(("--identity", str(identity)) if identity is not None else ()),
            *("--status-interval", "0.2"),
        )
        self.nodes.append(node)
        self._nursery.start_soon(node.read)
        return node


@asynccontextmanager
async def _processes(directory: Path) -> AsyncIterator[_Processes]:
    async with trio.open_nursery() as nursery:
        processes = _Processes(directory, nursery)
        try:
            yield processes
        finally:
            for node in processes.nodes:  # only the processes this test started, by pid
                if node.process.returncode is None:
                    node.process.send_signal(signal.SIGCONT)
                node.kill()
            with trio.move_on_after(5):
                for node in processes.nodes:
                    await node.process.wait()
            nursery.cancel_scope.cancel()


async def _joined(nodes: list[NodeProcess], timeout: float) -> None:
    for node in nodes:
        with trio.fail_after(timeout):
            await node.updated.wait()
    await wait_for(nodes, lambda ns: len({n.node_id for n in ns}) == len(ns), timeout)
    await wait_for(
        nodes,
        lambda ns: leaves_match(ns) and all(n.status.get("peers", 0) >= len(ns) - 1 for n in ns),
        timeout,
    )


async def test_a_node_started_before_its_seed_joins_once_the_seed_is_up(tmp_path: Path) -> None:
    async with _processes(tmp_path) as processes:
        early = await processes.start()
        await trio.sleep(3)  # its seed is not up yet: it is alone
        seed = await processes.start(listen=processes.seed)
        await _joined([early, seed], timeout=40)


async def test_a_frozen_node_and_its_replacement_find_their_way_back(tmp_path: Path) -> None:
    async with _processes(tmp_path) as processes:
        seed = await processes.start(listen=processes.seed)
        others = [await processes.start() for _ in range(3)]
        await _joined([seed, *others], timeout=40)

        # Frozen for 8 s (declared dead by the others meanwhile), then resumed.
        frozen = others[0]
        frozen.process.send_signal(signal.SIGSTOP)
        await trio.sleep(8)
        frozen.process.send_signal(signal.SIGCONT)
        await _joined([seed, *others], timeout=40)

        # A replacement with the same identity starts while the old process is
        # frozen: it takes the old one's place in the ring.
        identity = tmp_path / "identity"
        keeper = await processes.start(identity=identity)
        await _joined([seed, *others, keeper], timeout=40)
        keeper.process.send_signal(signal.SIGSTOP)
        replacement = await processes.start(identity=identity)
        await _joined([seed, *others, replacement], timeout=40)
        assert replacement.node_id == keeper.node_id
