"""The demo's lower layers: one secure link, and the overlay's ring and trees.

- A secure link: two nodes on the loopback-only dev network run the Noise
  handshake, then stream frames while a line per second shows throughput,
  records and round-trip time.
- The overlay: eight nodes join through a seed and form one ring; random keys
  are routed to the node closest to them; a tree forms for a topic; a node
  leaves and the ring repairs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import trio

from ..crypto.identity import NodeIdentity
from ..crypto.keys import DEV_NETWORK
from ..overlay.driver import OverlayDriver
from ..overlay.frames import Route
from ..overlay.ids import name_id, ring_distance, short
from ..overlay.port import IgnoredUpcalls
from ..overlay.trees import tree_problems
from ..testing.processes import expected_leaves
from ..transport.link import Link
from ..transport.listener import LinkListener, serve_tcp_links
from ..transport.tcp import connect_tcp_link
from ..wire.frames import Frame, Payload

_STREAM, _PING = 0, 1


async def link_stage(seconds: float, size: int) -> None:
    """Stream frames over one secure link, with a line per second."""
    server_id, client_id = NodeIdentity.generate(), NodeIdentity.generate()
    print(f"dev network {DEV_NETWORK.name!r} (published key: loopback use only)")
    print(f"node A {server_id.node_id.hex()}  listening")
    print(f"node B {client_id.node_id.hex()}  dialing")
    received = 0

    def on_frame(link: Link, frame: Frame) -> None:
        nonlocal received
        if isinstance(frame, Payload) and frame.channel == _PING:
            link.send_nowait(frame)  # echo for the round-trip measurement
        else:
            received += 1

    async def hold(link: Link) -> None:
        await link.wait_closed()

    async with trio.open_nursery() as nursery:
        listener: LinkListener = await nursery.start(
            lambda task_status: serve_tcp_links(
                hold,
                0,
                identity=server_id,
                network=DEV_NETWORK,
                on_frame=on_frame,
                task_status=task_status,
            )
        )
        host, port = listener.listen.rsplit(":", 1)
        async with connect_tcp_link(
            host, int(port), identity=client_id, network=DEV_NETWORK
        ) as link:
            print(
                f"handshake done: Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b, peer "
                f"{link.peer_id.hex()[:16]}..., transcript {link.handshake_hash.hex()[:16]}..."
            )
            frame = Payload(_STREAM, bytes(size))
            deadline = trio.current_time() + seconds
            last_count, last_time = 0, time.perf_counter()
            while trio.current_time() < deadline:
                second_end = trio.current_time() + 1
                while trio.current_time() < second_end:
                    for _ in range(256):
                        try:
                            link.send_nowait(frame)
                        except trio.WouldBlock:
                            await link.send(frame)
                    await trio.lowlevel.checkpoint()
                start = time.perf_counter()
                await link.send(Payload(_PING, b""))
                await link.receive()
                rtt_us = (time.perf_counter() - start) * 1e6
                now = time.perf_counter()
                rate = (received - last_count) / (now - last_time)
                last_count, last_time = received, now
                stats = link.statistics()
                print(
                    f"  {rate:>10,.0f} frames/s  {rate * size / 1e6:>7,.1f} MB/s  "
                    f"{stats.records_sent:>8,} records  rtt under load {rtt_us:>8,.0f} us"
                )
        nursery.cancel_scope.cancel()
    print(f"{received:,} frames of {size} bytes delivered, encrypted, in order.")


def _ring_right(drivers: list[OverlayDriver]) -> bool:
    ids = [d.id for d in drivers]
    for driver in drivers:
        assert driver.overlay is not None
        if (driver.overlay.leaves.right, driver.overlay.leaves.left) != expected_leaves(
            driver.id, ids
        ):
            return False
    return True


async def _until(condition: Callable[[], bool], timeout: float) -> float:
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - polls an outside view of all nodes
            await trio.sleep(0.02)
    return trio.current_time() - start


class _Arrivals(IgnoredUpcalls):
    """Where each routed message arrived, and in how many hops."""

    def __init__(self, delivered: dict[bytes, tuple[int, int]], node: int) -> None:
        self._delivered, self._node = delivered, node

    def routed(self, route: Route) -> None:
        self._delivered[route.message_id] = (self._node, route.hops)


async def overlay_stage(count: int) -> None:
    """Form a ring of ``count`` nodes, route keys, grow a tree, repair a leave."""
    print(f"\noverlay: {count} nodes join through a seed")
    delivered: dict[bytes, tuple[int, int]] = {}
    async with trio.open_nursery() as nursery:
        drivers: list[OverlayDriver] = []
        scopes: list[trio.CancelScope] = []
        for _ in range(count):
            identity = NodeIdentity.generate()
            driver = OverlayDriver(
                identity,
                DEV_NETWORK,
                seeds=[drivers[0].address] if drivers else [],
                upcalls=_Arrivals(delivered, int.from_bytes(identity.node_id, "big")),
            )
            scope = trio.CancelScope()
            scopes.append(scope)

            async def run(
                d: OverlayDriver = driver,
                c: trio.CancelScope = scope,
                *,
                task_status: trio.TaskStatus[OverlayDriver] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                with c:
                    await d.run(task_status=task_status)

            await nursery.start(run)
            drivers.append(driver)
        took = await _until(lambda: _ring_right(drivers), 30)
        print(f"  one ring, every leaf set right, {took:.2f} s after the last start")
        rng = random.Random()
        keys: dict[bytes, int] = {}
        for _ in range(1000):
            origin = rng.choice(drivers)
            key = rng.getrandbits(128)
            assert origin.overlay is not None
            keys[origin.overlay.route(trio.current_time(), key, b"")] = key
            origin._flush()
        await _until(lambda: len(delivered) >= len(keys), 10)
        ids = [d.id for d in drivers]
        right = sum(
            1
            for m, key in keys.items()
            if delivered[m][0] == min(ids, key=lambda n: (ring_distance(n, key), n))
        )
        hops = sum(delivered[m][1] for m in keys) / len(keys)
        print(f"  1000 random keys: {right} reached the closest node, {hops:.2f} hops on average")
        topic = name_id("topic", "demo")
        for driver in drivers[::2]:
            driver.join_tree(topic)

        def tree_right() -> bool:
            states = {
                d.id: d.trees.trees[topic]
                for d in drivers
                if d.trees is not None and _in_tree(d, topic)
            }
            closest = min(ids, key=lambda n: (ring_distance(n, topic), n))
            return not tree_problems(states, {d.id for d in drivers[::2]}, closest)

        took = await _until(tree_right, 10)
        print(
            f"  topic 'demo': {len(drivers[::2])} members, one tree rooted at the closest"
            f" node, {took:.2f} s"
        )
        leaver = drivers.pop(3)
        scopes.pop(3).cancel()
        took = await _until(lambda: _ring_right(drivers), 30)
        print(f"  node {short(leaver.id)} left: ring repaired in {took:.2f} s")
        nursery.cancel_scope.cancel()


def _in_tree(driver: OverlayDriver, tree: int) -> bool:
    """True if ``driver`` holds state for ``tree``."""
    return driver.trees is not None and tree in driver.trees.trees
