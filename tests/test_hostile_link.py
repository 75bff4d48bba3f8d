"""A link judges its peer by what the peer sent, not by whether this side got
round to reading it: a long turn of our own (a node under load) is no silence
of the peer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from iris_trio.crypto import DEV_NETWORK, NodeIdentity
from iris_trio.transport import Link, LinkConfig, open_link
from iris_trio.transport.link import FrameHandler
from iris_trio.wire import Frame, Payload

STRICT = LinkConfig(keepalive_interval=1, idle_timeout=5)
TOLERANT = LinkConfig(keepalive_interval=1, idle_timeout=1000)


@asynccontextmanager
async def link_pair(
    configs: tuple[LinkConfig, LinkConfig], on_frame: FrameHandler
) -> AsyncIterator[tuple[Link, Link]]:
    """(sender, receiver): the receiver pushes frames to ``on_frame``."""
    ours, theirs = trio.testing.memory_stream_pair()
    links: list[Link] = []
    ready = trio.Event()

    async def receiver() -> None:
        async with open_link(
            theirs,
            initiator=False,
            identity=NodeIdentity.generate(),
            network=DEV_NETWORK,
            config=configs[1],
            on_frame=on_frame,
        ) as link:
            links.append(link)
            ready.set()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        async with open_link(
            ours,
            initiator=True,
            identity=NodeIdentity.generate(),
            network=DEV_NETWORK,
            config=configs[0],
        ) as sender:
            await ready.wait()
            yield sender, links[0]
            nursery.cancel_scope.cancel()


async def test_a_long_turn_of_our_own_is_not_silence_of_the_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Frame] = []
    arrived = trio.lowlevel.ParkingLot()

    def consume(_link: Link, frame: Frame) -> None:
        if frame == Payload(1, b"heavy"):
            # A synchronous turn four times the idle timeout long (a node busy
            # with unbounded work): the peer's keepalives wait unread meanwhile.
            autojump_clock.jump(4 * STRICT.idle_timeout)
        seen.append(frame)
        arrived.unpark_all()

    async with link_pair((TOLERANT, STRICT), consume) as (sender, receiver):
        await sender.send(Payload(1, b"heavy"))
        while len(seen) < 1:
            await arrived.park()
        await trio.sleep(STRICT.keepalive_interval * 3)  # keepalives flow again
        await sender.send(Payload(2, b"after"))
        while len(seen) < 2:
            await arrived.park()
        assert receiver.is_open, receiver.close_reason
        assert seen == [Payload(1, b"heavy"), Payload(2, b"after")]
        assert receiver.silent_for < STRICT.idle_timeout
