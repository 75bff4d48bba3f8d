"""The demo's main stage: several nodes, the four patterns, a live summary.

Six nodes join the loopback-only dev network through a seed (no discovery,
so other dev nodes on this host are left alone). Then, in turn: request/reply
to a cluster of three members with a line per second of figures, a member
stopping while requests flow, broadcast to a cluster of four, publish/
subscribe across three subscribers, and a tunnel copying 20 MB.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from .. import Node, NoRespondersError, RemoteError, Tunnel, serve_node

__all__ = ["patterns_stage"]


async def _node(
    seed: str | None, scope: trio.CancelScope, *, task_status: trio.TaskStatus[Node]
) -> None:
    with scope:
        await serve_node(seeds=[seed] if seed else [], discovery="off", task_status=task_status)


@contextlib.asynccontextmanager
async def _nodes(count: int) -> AsyncIterator[tuple[list[Node], list[trio.CancelScope]]]:
    async with trio.open_nursery() as nursery:
        nodes: list[Node] = []
        scopes: list[trio.CancelScope] = []
        for _ in range(count):
            scope = trio.CancelScope()
            seed = nodes[0].address if nodes else None
            nodes.append(await nursery.start(_node, seed, scope))
            scopes.append(scope)
        began = time.perf_counter()
        with trio.fail_after(30):
            for node in nodes:
                await node.wait_converged(quiet=0.5)
        print(
            f"{count} nodes on the dev network (loopback only), one ring in "
            f"{time.perf_counter() - began:.1f} s"
        )
        yield nodes, scopes
        nursery.cancel_scope.cancel()


def _calculator(name: str, counts: collections.Counter[str]) -> Callable[[bytes], Awaitable[bytes]]:
    async def handler(data: bytes) -> bytes:
        counts[name] += 1
        left, _, right = data.partition(b"+")
        return b"%d" % (int(left) + int(right))  # a bad request raises: RemoteError

    return handler


async def _serve_until(
    node: Node,
    handler: Callable[[bytes], Awaitable[bytes]],
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    with scope:
        await node.serve(handler, "calc", task_status=task_status)


async def _requests(nodes: list[Node], seconds: float) -> None:
    print("\nrequest/reply: cluster 'calc' of 3 members, 2 clients with 8 requests in flight each")
    counts: collections.Counter[str] = collections.Counter()
    names = {3: "calc-a", 4: "calc-b", 5: "calc-c"}
    async with trio.open_nursery() as members:
        leave = trio.CancelScope()
        for index, name in names.items():
            scope = leave if index == 5 else trio.CancelScope()
            await members.start(_serve_until, nodes[index], _calculator(name, counts), scope)
        outcome: collections.Counter[str] = collections.Counter()

        async def lane(node: Node, base: int) -> None:
            for step in range(1_000_000):
                a, b = base + step, step
                try:
                    reply = await node.request("calc", b"%d+%d" % (a, b), timeout=5)
                except (RemoteError, trio.TooSlowError):
                    outcome["failed"] += 1
                else:
                    outcome["answered" if reply == b"%d" % (a + b) else "wrong"] += 1

        async with trio.open_nursery() as load:
            for index in range(16):
                load.start_soon(lane, nodes[index % 2], index * 1_000_000)
            last = 0
            for second in range(1, int(seconds) + 3):
                await trio.sleep(1)
                total = sum(counts.values()) or 1
                shares = "  ".join(f"{n} {counts[n] / total:4.0%}" for n in names.values())
                print(f"  {second:>2} s  {outcome['answered'] - last:>6,} answered/s   {shares}")
                last = outcome["answered"]
                counts.clear()
                if second == int(seconds):
                    leave.cancel()
                    print("  calc-c leaves the cluster now, while requests flow")
            load.cancel_scope.cancel()
        print(
            f"  {outcome['answered']:,} answered in all, {outcome['wrong']} wrong, "
            f"{outcome['failed']} failed"
        )
        try:
            await nodes[0].request("calc", b"two+two", timeout=5)
        except RemoteError as error:
            print(f"  'two+two' -> RemoteError from the member's handler: {error}")
        try:
            await nodes[0].request("nobody", b"?", timeout=5)
        except NoRespondersError:
            print("  cluster 'nobody' -> NoRespondersError at once")
        members.cancel_scope.cancel()


async def _broadcast(nodes: list[Node]) -> None:
    print("\nbroadcast: cluster 'chat' of 4 members, 1,000 messages from one sender")
    heard: dict[int, list[bytes]] = {index: [] for index in range(1, 5)}
    async with trio.open_nursery() as nursery:

        async def member(index: int, *, task_status: trio.TaskStatus[None]) -> None:
            async with nodes[index].join("chat"), nodes[index].broadcasts() as messages:
                task_status.started()
                async for message in messages:
                    heard[index].append(message)

        for index in heard:
            await nursery.start(member, index)
        began = time.perf_counter()
        for number in range(1000):
            await nodes[0].broadcast("chat", b"message %d" % number)
        with trio.fail_after(10):
            while any(len(got) < 1000 for got in heard.values()):  # noqa: ASYNC110
                await trio.sleep(0.01)
        took = time.perf_counter() - began
        expected = [b"message %d" % n for n in range(1000)]
        exact = all(got == expected for got in heard.values())
        verdict = "all 1,000, in order, once each" if exact else "NOT all in order"
        print(f"  every member heard {verdict} ({took * 1000:.0f} ms)")
        nursery.cancel_scope.cancel()


async def _pubsub(nodes: list[Node]) -> None:
    count = 20_000
    print(f"\npublish/subscribe: topic 'ticks', 3 subscribers on 3 nodes, {count:,} events")
    async with trio.open_nursery() as nursery:
        got: dict[int, int] = {}

        async def subscriber(index: int, *, task_status: trio.TaskStatus[None]) -> None:
            got[index] = 0
            async with nodes[index].subscribe("ticks", capacity=count) as events:
                task_status.started()
                async for event in events:
                    if event != b"tick %d" % got[index]:
                        raise AssertionError(f"subscriber {index} got {event!r} out of order")
                    got[index] += 1

        for index in (1, 3, 4):
            await nursery.start(subscriber, index)
        began = time.perf_counter()
        for number in range(count):
            await nodes[2].publish("ticks", b"tick %d" % number)
        with trio.fail_after(30):
            while any(n < count for n in got.values()):  # noqa: ASYNC110
                await trio.sleep(0.01)
        took = time.perf_counter() - began
        print(
            f"  each subscriber got all {count:,} in order in {took:.2f} s "
            f"({3 * count / took:,.0f} deliveries/s, all six nodes in this one process)"
        )
        nursery.cancel_scope.cancel()


async def _store(tunnel: Tunnel) -> None:
    async with tunnel:
        digest = hashlib.blake2b()
        while piece := await tunnel.receive():
            digest.update(piece)
        await tunnel.send(digest.digest())


async def _tunnel(nodes: list[Node]) -> None:
    size = 20 * 1024 * 1024
    print(f"\ntunnel: {size // 2**20} MB of random bytes to a 'storage' member, in 256 KiB pieces")
    async with trio.open_nursery() as nursery:

        async def storage(*, task_status: trio.TaskStatus[None]) -> None:
            async with nodes[4].tunnels("storage") as incoming:
                task_status.started()
                async for tunnel in incoming:
                    nursery.start_soon(_store, tunnel)

        await nursery.start(storage)
        data = os.urandom(size)
        began = time.perf_counter()
        async with nodes[0].tunnel("storage", timeout=10) as tunnel:
            for offset in range(0, size, 256 * 1024):
                await tunnel.send(data[offset : offset + 256 * 1024])
            await tunnel.send(b"")
            digest = await tunnel.receive()
        took = time.perf_counter() - began
        verdict = "digests match" if digest == hashlib.blake2b(data).digest() else "DIGESTS DIFFER"
        print(f"  {size / took / 1e6:,.0f} MB/s, {verdict}")
        nursery.cancel_scope.cancel()


async def patterns_stage(seconds: float) -> None:
    """Run the main stage (see the module docstring)."""
    async with _nodes(6) as (nodes, _):
        await _requests(nodes, seconds)
        await _broadcast(nodes)
        await _pubsub(nodes)
        await _tunnel(nodes)
        figures = nodes[0].statistics()
        print(
            f"\nnode 1's counters: {figures.requests_sent:,} requests sent, "
            f"{figures.requests_answered:,} answered, {figures.requests_failed} failed; "
            f"{figures.broadcasts_sent:,} broadcasts; {figures.tunnels_opened} tunnel, "
            f"{figures.tunnel_bytes_sent:,} bytes through it; {figures.links} links"
        )
