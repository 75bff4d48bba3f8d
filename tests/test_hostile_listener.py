"""Hostile input at the link listener: a flood of silent connections from many
source addresses must not lock peers out (real TCP on loopback)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from iris_trio.crypto import Network, NetworkKey, NodeIdentity
from iris_trio.crypto.noise import HandshakeState
from iris_trio.errors import HandshakeError
from iris_trio.transport import Link, LinkConfig, LinkListener, connect_tcp_link, serve_tcp_links
from iris_trio.transport.listener import address_prefix
from iris_trio.wire import Payload

#: Silent connections the flood keeps open from each of its source addresses.
_PER_HOST = 2


def hermetic_network() -> Network:
    return Network("test-" + secrets.token_hex(6), NetworkKey.generate())


async def echo(link: Link) -> None:
    async for frame in link:
        await link.send(frame)


@asynccontextmanager
async def tcp_server(network: Network, **kwargs: Any) -> AsyncIterator[tuple[LinkListener, int]]:
    async with trio.open_nursery() as nursery:
        listener: LinkListener = await nursery.start(
            lambda task_status: serve_tcp_links(
                echo,
                0,
                identity=NodeIdentity.generate(),
                network=network,
                task_status=task_status,
                **kwargs,
            )
        )
        yield listener, int(listener.listen.rsplit(":", 1)[1])
        nursery.cancel_scope.cancel()


async def silent_connections(port: int, host: str, opened: list[int]) -> None:
    """Keep ``_PER_HOST`` connections from ``host`` open and silent; reopen
    each one as soon as the listener closes it (until cancelled)."""

    async def one() -> None:
        while True:
            stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=host)
            opened[0] += 1
            try:
                while await stream.receive_some():
                    pass
            except trio.BrokenResourceError:
                pass
            finally:
                await stream.aclose()
            await trio.sleep(0.01)  # a closed one comes back at once, as a flood does

    async with trio.open_nursery() as nursery:
        for _ in range(_PER_HOST):
            nursery.start_soon(one)


async def wait_for_slots_taken(listener: LinkListener, count: int) -> None:
    """Until the flood holds ``count`` handshake slots (a named wait, not a sleep)."""
    with trio.fail_after(20):
        while listener.statistics().handshakes_in_progress < count:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def honest_handshake(port: int, network: Network) -> bool:
    try:
        async with connect_tcp_link(
            "127.0.0.1", port, identity=NodeIdentity.generate(), network=network
        ) as link:
            await link.send(Payload(1, b"hello"))
            return await link.receive() == Payload(1, b"hello")
    except (HandshakeError, OSError, trio.BrokenResourceError, trio.EndOfChannel):
        return False


async def test_honest_peers_get_in_during_a_flood_from_many_addresses() -> None:
    """80 source addresses in 8 prefixes keep 160 silent connections open (more
    than the 64 handshake slots); 40 honest handshakes made one after another
    all succeed."""
    network = hermetic_network()
    async with tcp_server(network) as (listener, port):
        opened = [0]
        async with trio.open_nursery() as flood:
            for i in range(80):
                flood.start_soon(
                    silent_connections, port, f"127.0.{1 + i // 10}.{2 + i % 10}", opened
                )
            await wait_for_slots_taken(listener, listener.max_handshakes)
            succeeded = 0
            for _ in range(40):
                succeeded += await honest_handshake(port, network)
            flood.cancel_scope.cancel()
        stats = listener.statistics()
    assert succeeded == 40
    assert stats.handshakes_completed == 40
    assert stats.evicted > 0  # the flood's oldest silent connections made room


async def test_a_flood_from_the_peers_own_address_does_not_lock_it_out() -> None:
    """The flood shares the honest peers' address (loopback peers all do)."""
    network = hermetic_network()
    async with tcp_server(network) as (listener, port):
        opened = [0]
        async with trio.open_nursery() as flood:
            for _ in range(8):  # 16 connections from 127.0.0.1, the per-address limit is 8
                flood.start_soon(silent_connections, port, "127.0.0.1", opened)
            await wait_for_slots_taken(listener, listener.max_handshakes_per_source)
            results = [await honest_handshake(port, network) for _ in range(10)]
            flood.cancel_scope.cancel()
    assert all(results)


async def test_handshakes_from_key_holders_are_never_evicted() -> None:
    """A connection whose first message proved the network key keeps its slot:
    with every slot held by such peers, a newcomer is refused instead."""
    network = hermetic_network()
    config = LinkConfig(handshake_timeout=5.0)
    async with tcp_server(network, config=config, max_handshakes=2) as (listener, port):
        held = trio.Event()

        async def stalled_key_holder() -> None:
            # Sends a valid first message and then never the third.
            identity = NodeIdentity.generate()
            state = HandshakeState(
                initiator=True,
                prologue=network.prologue(),
                psk=network.key.secret,
                static_private_key=identity.private_key,
                static_public_key=identity.public_key,
            )
            message = state.write_message(b"")
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(len(message).to_bytes(2, "big") + message)
            await stream.receive_some()  # the answer
            held.set()
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            for _ in range(2):
                held = trio.Event()
                nursery.start_soon(stalled_key_holder)
                with trio.fail_after(5):
                    await held.wait()
            stranger = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.fail_after(5):
                while listener.statistics().rejected_busy < 1:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            await stranger.aclose()
            stats = listener.statistics()
            nursery.cancel_scope.cancel()
    assert stats.evicted == 0
    assert stats.handshakes_in_progress == 2


@pytest.mark.parametrize(
    ("address", "prefix"),
    [
        ("10.1.2.3", "10.1.2.0/24"),
        ("127.0.5.9", "127.0.5.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.0/24"),
        ("::1", "::/64"),
        ("memory-node-3", "memory-node-3"),
    ],
)
def test_addresses_are_grouped_by_prefix(address: str, prefix: str) -> None:
    assert address_prefix(address) == prefix
