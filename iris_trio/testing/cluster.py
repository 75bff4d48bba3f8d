"""Many nodes in one trio run over the in-memory transport: test your services.

:func:`open_cluster` starts n nodes on one hermetic network over a
:class:`~iris_trio.transport.memory.MemoryNetwork` and waits until they form
one overlay with exact leaf sets. No sockets and no real clock are involved,
so it runs under :class:`trio.testing.MockClock` with ``autojump_threshold=0``
(pytest-trio's ``autojump_clock`` fixture): minutes of heartbeats take seconds.
"""

from __future__ import annotations

import secrets
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, overload

import trio

from .._node import Node
from .._serve import serve_node
from .._util import open_unwrapped_nursery
from ..crypto.keys import Network, NetworkKey
from ..errors import ConfigError
from ..overlay.ids import short
from ..transport.memory import MemoryNetwork
from .processes import expected_leaves

__all__ = ["Cluster", "open_cluster"]

#: Virtual (or real) seconds a cluster may take to form before open_cluster gives up.
DEFAULT_CONVERGE_TIMEOUT = 120.0

#: The clusters on each memory network: together they are the overlay whose
#: true leaf sets every one of them checks against.
_clusters: weakref.WeakKeyDictionary[MemoryNetwork, list[Cluster]] = weakref.WeakKeyDictionary()


class Cluster(Sequence[Node]):
    """The running nodes of :func:`open_cluster`, oldest first (a ``Sequence[Node]``).

    Here a "cluster" is a group of test nodes on one in-memory network, not an
    iris cluster name (give those as ``cluster=`` to :meth:`add` or
    :func:`open_cluster`, or use :meth:`Node.join <iris_trio.Node.join>`).

    Attributes:
        memory: the memory network the nodes' links run on (see
            :meth:`MemoryNetwork.kill <iris_trio.transport.memory.MemoryNetwork.kill>`).
        network: the network (name and key) every node belongs to.

    Example::

        async with open_cluster(3) as nodes:
            member = await nodes.add(cluster="calc")  # a fourth node
            await nodes.kill(nodes[0])  # the oldest crashes
            await nodes.wait_converged()  # the others repaired their leaf sets
            assert len(nodes) == 3 and member in nodes
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        memory: MemoryNetwork,
        network: Network,
        options: dict[str, Any],
        timeout: float,
    ) -> None:
        self.memory = memory
        self.network = network
        self._nursery = nursery
        self._options = options
        self._timeout = timeout
        self._nodes: list[Node] = []
        self._scopes: dict[Node, trio.CancelScope] = {}
        self._ended: dict[Node, trio.Event] = {}

    def __repr__(self) -> str:
        return f"<Cluster of {len(self._nodes)} nodes on {self.memory!r}>"

    @overload
    def __getitem__(self, index: int) -> Node: ...
    @overload
    def __getitem__(self, index: slice) -> list[Node]: ...
    def __getitem__(self, index: int | slice) -> Node | list[Node]:
        return self._nodes[index]

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes))

    # --------------------------------------------------------------- nodes

    async def add(self, **node_options: Any) -> Node:
        """Start one more node, wait until it has joined and every leaf set is exact.

        ``node_options`` go to :func:`~iris_trio.serve_node` on top of the
        cluster's own (e.g. ``cluster="calc"``). A checkpoint.

        Cancellation: stops the wait only: the node started stays in the
        cluster (until :meth:`stop` or the end of :func:`open_cluster`).

        Raises:
            trio.TooSlowError: the overlay did not converge within the timeout.
        """
        node = await self._start(node_options)
        await node.wait_joined()
        await self.wait_converged()
        return node

    async def stop(self, node: Node) -> None:
        """Stop ``node`` (cancel it: it leaves the overlay gracefully) and wait
        until it has ended; it leaves this sequence. A checkpoint.

        Cancellation: the node has left the sequence and been told to stop
        before the wait: a cancelled ``stop()`` leaves it ending on its own.

        Raises:
            ValueError: ``node`` is not (or no longer) in this cluster.
        """
        self._nodes.remove(node)
        self._scopes.pop(node).cancel()
        await self._ended.pop(node).wait()

    async def kill(self, node: Node) -> None:
        """Crash ``node``: its links break at once (no goodbye reaches anyone),
        then its tasks are cancelled; it leaves this sequence. A checkpoint.

        The others notice from the broken links, as with a crashed process.

        Cancellation: as :meth:`stop`: the node is cut off and told to stop
        at once; only the wait for its end is cancelled.

        Raises:
            KeyError / ValueError: ``node`` is not running in this cluster.
        """
        self.memory.kill(node.address)
        await self.stop(node)

    async def _start(self, node_options: dict[str, Any]) -> Node:
        options = {**self._options, **node_options}
        if "seeds" not in options:
            seed = self._seed()
            options["seeds"] = [seed] if seed is not None else []
        scope = trio.CancelScope()
        ended = trio.Event()

        async def run(*, task_status: trio.TaskStatus[Node]) -> None:
            try:
                with scope:
                    await serve_node(transport=self.memory, task_status=task_status, **options)
            finally:
                ended.set()

        node: Node = await self._nursery.start(run)
        self._nodes.append(node)
        self._scopes[node] = scope
        self._ended[node] = ended
        return node

    def _seed(self) -> str | None:
        """The address of the oldest running node on the memory network."""
        for cluster in _clusters.get(self.memory, ()):
            if cluster._nodes:
                return cluster._nodes[0].address
        addresses = self.memory.addresses
        return addresses[0] if addresses else None

    # --------------------------------------------------------- convergence

    def leaf_problems(self) -> list[str]:
        """What is wrong with the nodes' leaf sets (empty once every one is exact).

        The truth is every running node of every :class:`Cluster` on this
        memory network.
        """
        everyone = [n for c in _clusters.get(self.memory, [self]) for n in c._nodes]
        ids = [n.driver.id for n in everyone]
        problems = []
        for node in self._nodes:
            driver = node.driver
            if driver.overlay is None:
                problems.append(f"{node.address}: not running")
                continue
            leaves = driver.overlay.leaves
            right, left = expected_leaves(driver.id, ids, driver.config.leaf_size)
            have = set(leaves.right) | set(leaves.left)
            want = set(right) | set(left)
            if (leaves.right, leaves.left) != (right, left):
                missing = " ".join(short(n) for n in want - have) or "-"
                extra = " ".join(short(n) for n in have - want) or "-"
                problems.append(
                    f"{short(driver.id)} at {node.address}: missing {missing}, extra {extra}"
                )
        return problems

    async def wait_converged(self, timeout: float | None = None) -> None:
        """Wait until every node has joined and its leaf set is exactly the true one.

        Wakes on the nodes' own state changes, not on a polling timer. A
        checkpoint.

        Cancellation: stops the wait only.

        Args:
            timeout: seconds (virtual under a mock clock) before giving up;
                default: the cluster's (see :func:`open_cluster`).

        Raises:
            trio.TooSlowError: not converged in time; the text names each wrong
                leaf set.
        """
        with trio.move_on_after(self._timeout if timeout is None else timeout):
            for node in self._nodes:
                await node.wait_joined()
            changed = trio.lowlevel.ParkingLot()
            async with trio.open_nursery() as watchers:
                for node in self._nodes:
                    watchers.start_soon(_watch, node, changed)
                while self.leaf_problems():
                    await changed.park()
                watchers.cancel_scope.cancel()
            return
        problems = self.leaf_problems() or ["(some node has not joined)"]
        raise trio.TooSlowError(
            f"{len(self._nodes)} nodes did not converge in time: " + "; ".join(problems)
        )


async def _watch(node: Node, changed: trio.lowlevel.ParkingLot) -> None:
    # The driver wakes its lot after every change of its state (every frame,
    # link and tick); the leaf sets can only change then.
    lot = node.driver._changed
    while True:
        await lot.park()
        changed.unpark_all()


@asynccontextmanager
async def open_cluster(
    n: int,
    *,
    memory: MemoryNetwork | None = None,
    network: str | Network | None = None,
    key: NetworkKey | bytes | None = None,
    timeout: float = DEFAULT_CONVERGE_TIMEOUT,
    **node_options: Any,
) -> AsyncIterator[Cluster]:
    """Run ``n`` nodes as one overlay over an in-memory network, for the body.

    Every node runs :func:`~iris_trio.serve_node` with the memory transport,
    discovery off and the first node as its seed, on one hermetic network: a
    fresh name and random key unless ``network`` is given. The body starts once
    every node has joined and every leaf set is exactly the true one. On exit
    every node leaves the overlay. Works under a real clock and under
    ``trio.testing.MockClock(autojump_threshold=0)``, where timers cost no
    wall time. Example::

        async def test_calc(autojump_clock):
            async with open_cluster(6) as nodes, trio.open_nursery() as nursery:
                for member in nodes[1:4]:
                    await nursery.start(member.serve, calc_handler, "calc")
                assert await nodes[0].request("calc", b"2+2") == b"4"
                await nodes.kill(nodes[1])  # a member crashes: requests go on
                assert await nodes[0].request("calc", b"1+1") == b"2"
                nursery.cancel_scope.cancel()

    Args:
        n: nodes to start (0 or more; :meth:`Cluster.add` starts more later).
        memory: the memory network to use (default: a new one). Clusters on
            one memory network form one overlay and share its network.
        network / key: the network all nodes belong to (a Network, or its name
            and key); default: a fresh name and random key, or the network of
            a cluster already on ``memory``.
        timeout: seconds to wait for joining and convergence (virtual under a
            mock clock), here and in :meth:`Cluster.add`.
        node_options: further :func:`~iris_trio.serve_node` arguments for every
            node (``config=``, ``cluster=``, ...).

    Yields:
        The :class:`Cluster`: a sequence of the running nodes, oldest first.

    Cancellation: leaving the body, by cancellation or otherwise, stops
    every node of the cluster (each leaves the overlay gracefully) and
    returns once all have ended; cancelled while the cluster forms, the nodes
    started so far are stopped the same way. Nothing is left running.

    Raises:
        trio.TooSlowError: the overlay did not converge within ``timeout``.
        ConfigError: a node option is invalid (e.g. discovery not "off"), or
            ``network`` was given without ``key`` or the other way round.
    """
    if n < 0:
        raise ValueError(f"n must be 0 or more, not {n}")
    memory = MemoryNetwork() if memory is None else memory
    others = _clusters.setdefault(memory, [])
    chosen = _network(network, key, others)
    options: dict[str, Any] = {"discovery": "off", **node_options, "network": chosen}
    async with open_unwrapped_nursery() as nursery:
        cluster = Cluster(nursery, memory, chosen, options, timeout)
        others.append(cluster)
        try:
            for _ in range(n):
                await cluster._start({})
            await cluster.wait_converged()
            yield cluster
        finally:
            others.remove(cluster)
            nursery.cancel_scope.cancel()


def _network(
    network: str | Network | None, key: NetworkKey | bytes | None, others: list[Cluster]
) -> Network:
    if isinstance(network, Network):
        if key is not None:
            raise ConfigError("give the key inside the Network or as key=, not both")
        return network
    if network is None and key is None:
        if others:
            return others[0].network
        return Network(f"test-cluster-{secrets.token_hex(4)}", NetworkKey.generate())
    if network is None or key is None:
        raise ConfigError("give both network= and key= (or a Network), or neither")
    return Network(network, key if isinstance(key, NetworkKey) else NetworkKey.from_bytes(key))
