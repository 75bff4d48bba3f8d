"""Shared helpers of the pattern tests: waits on named conditions, the tree
oracle over running nodes, handlers, a private loopback discovery range, and
the few real-TCP nodes the end-to-end tests keep."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

import trio

import iris_trio
from iris_trio.crypto import Network, NetworkKey
from iris_trio.overlay.discovery import DiscoveryConfig
from iris_trio.overlay.ids import name_id, ring_distance
from iris_trio.overlay.trees import tree_problems

# ----------------------------------------------------------- named waits


async def wait_until(
    nodes: Iterable[iris_trio.Node],
    condition: Callable[[], bool],
    *,
    what: str,
    timeout: float = 30.0,
) -> None:
    """Wait until ``condition()`` holds, re-checking it whenever one of
    ``nodes`` changes state (every frame, link and tick of its driver).

    Raises:
        trio.TooSlowError: not within ``timeout`` seconds (virtual under the
            mock clock); the message names ``what`` was awaited.
    """
    if condition():
        await trio.lowlevel.checkpoint()
        return
    changed = trio.lowlevel.ParkingLot()

    async def watch(node: iris_trio.Node) -> None:
        # A driver wakes its lot after every change of its state; there is no
        # public wait for "anything changed" yet (open_cluster uses the same).
        lot = node.driver._changed
        while True:
            await lot.park()
            changed.unpark_all()

    with trio.move_on_after(timeout) as scope:
        async with trio.open_nursery() as watchers:
            for node in nodes:
                watchers.start_soon(watch, node)
            while not condition():
                await changed.park()
            watchers.cancel_scope.cancel()
    if scope.cancelled_caught:
        raise trio.TooSlowError(f"waited {timeout} s for {what}")


class Inbox:
    """Collects what a receive channel yields; tasks wait for a count of items."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self._grew = trio.Event()

    def append(self, item: bytes) -> None:
        self.items.append(item)
        self._grew.set()
        self._grew = trio.Event()

    async def drain(self, channel: trio.abc.ReceiveChannel[bytes]) -> None:
        """Append everything ``channel`` yields (run as a task)."""
        async for item in channel:
            self.append(item)

    async def wait_for(self, count: int, *, timeout: float = 30.0) -> None:
        """Wait until at least ``count`` items arrived.

        Raises:
            trio.TooSlowError: not within ``timeout`` seconds.
        """
        with trio.fail_after(timeout):
            while len(self.items) < count:
                await self._grew.wait()


# ------------------------------------------------------------ tree oracle


def tree_problems_among(
    nodes: Sequence[iris_trio.Node], namespace: str, name: str, members: set[int]
) -> list[str]:
    """What is wrong with the tree of ``name`` (a "cluster" or "topic") among
    ``nodes`` (every live node), whose members are ``members`` (node ids)."""
    tree = name_id(namespace, name)
    states = {}
    for node in nodes:
        trees = node.driver.trees
        if trees is not None and tree in trees.trees:
            states[node.driver.id] = trees.trees[tree]
    closest = min((n.driver.id for n in nodes), key=lambda n: (ring_distance(n, tree), n))
    return tree_problems(states, members, closest)


async def wait_tree(
    nodes: Sequence[iris_trio.Node],
    namespace: str,
    name: str,
    members: set[int],
    *,
    timeout: float = 30.0,
) -> None:
    """Wait until the tree of ``name`` is exactly right for ``members`` (see
    :func:`~iris_trio.overlay.trees.tree_problems`).

    Raises:
        trio.TooSlowError: not within ``timeout``; the message lists the problems.
    """
    try:
        await wait_until(
            nodes,
            lambda: not tree_problems_among(nodes, namespace, name, members),
            what=f"the {namespace} tree {name!r}",
            timeout=timeout,
        )
    except trio.TooSlowError as exc:
        problems = tree_problems_among(nodes, namespace, name, members)
        raise trio.TooSlowError(f"{exc}: {'; '.join(problems[:5])}") from None


# --------------------------------------------------------------- handlers


def echo_from(
    name: str, counts: collections.Counter[str], *, pause: float = 0.0
) -> Callable[[bytes], Awaitable[bytes]]:
    """A request handler that counts its calls under ``name``, works for
    ``pause`` seconds and answers ``name:data``."""

    async def handler(data: bytes) -> bytes:
        counts[name] += 1
        await trio.sleep(pause)
        return name.encode() + b":" + data

    return handler


async def echo_tunnel(tunnel: iris_trio.Tunnel) -> None:
    """Send every message of ``tunnel`` back until it ends."""
    with contextlib.suppress(trio.BrokenResourceError):  # the requester went away
        async with tunnel:
            async for message in tunnel:
                await tunnel.send(message)


async def serve_echo_tunnels(
    node: iris_trio.Node, cluster: str, task_status: trio.TaskStatus[None]
) -> None:
    """Take the tunnels of ``cluster`` on ``node`` and echo each (for ``nursery.start``)."""
    async with node.tunnels(cluster) as incoming, trio.open_nursery() as handlers:
        task_status.started()
        async for tunnel in incoming:
            handlers.start_soon(echo_tunnel, tunnel)


# ------------------------------------------------------ hermetic networks


def private_network(prefix: str) -> Network:
    """A network of the test's own: a fresh name and a random key."""
    return Network(f"{prefix}-{random.randrange(10**9)}", NetworkKey.generate())


def private_discovery(
    *, fast_interval: float | None = None, slow_interval: float | None = None
) -> DiscoveryConfig:
    """Loopback discovery on a range of 8 ports of the test's own, away from
    the dev network's (52480...) and the ephemeral ports, all free right now,
    so that nodes of a user's own ``iris-trio node --dev`` are never heard
    (``fast_interval`` / ``slow_interval``: the beacon periods, default as
    :class:`DiscoveryConfig`)."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 30000, 8)
        if _all_free(range(base, base + 8)):
            config = DiscoveryConfig(mode="loopback", loopback_port=base, loopback_ports=8)
            if fast_interval is not None:
                config = dataclasses.replace(config, fast_interval=fast_interval)
            if slow_interval is not None:
                config = dataclasses.replace(config, slow_interval=slow_interval)
            return config
    raise RuntimeError("no free range of 8 UDP ports on 127.0.0.1 between 20000 and 30000")


def _all_free(ports: range) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


# ------------------------------------------------ real TCP (end to end)


@asynccontextmanager
async def tcp_nodes(count: int) -> AsyncIterator[list[iris_trio.Node]]:
    """``count`` nodes over real TCP on 127.0.0.1, in real time, on a network of
    their own (discovery off: each joins through the first), converged."""
    network = private_network("tcp-nodes")
    async with trio.open_nursery() as nursery:
        started: list[iris_trio.Node] = []
        for _ in range(count):
            node = await nursery.start(_serve_tcp, network, [started[0].address] if started else [])
            started.append(node)
        for node in started:
            with trio.fail_after(20):
                await node.wait_converged(quiet=0.5)
        yield started
        nursery.cancel_scope.cancel()


async def _serve_tcp(
    network: Network, seeds: list[str], *, task_status: trio.TaskStatus[iris_trio.Node]
) -> None:
    await iris_trio.serve_node(
        network=network,
        listen="127.0.0.1:0",
        seeds=seeds,
        discovery="off",
        task_status=task_status,
    )
