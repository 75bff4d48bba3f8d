"""Two linked endpoints over trio's in-memory streams, for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from .._util import open_unwrapped_nursery
from ..crypto.identity import NodeIdentity
from ..crypto.keys import DEV_NETWORK, Network
from ..transport.config import LinkConfig
from ..transport.link import FrameHandler, Link, open_link

__all__ = ["memory_link_pair"]


@asynccontextmanager
async def memory_link_pair(
    *,
    network: Network = DEV_NETWORK,
    config: LinkConfig | None = None,
    identities: tuple[NodeIdentity, NodeIdentity] | None = None,
    on_frame: tuple[FrameHandler | None, FrameHandler | None] = (None, None),
) -> AsyncIterator[tuple[Link, Link]]:
    """Open two secure links joined by a ``trio.testing.memory_stream_pair``.

    Yields ``(initiator_link, responder_link)``; both close on exit. For tests
    of the link layer below the overlay (handshake, framing, flow control).
    Example::

        a, b = NodeIdentity.generate(), NodeIdentity.generate()
        async with memory_link_pair(identities=(a, b)) as (left, right):
            assert left.peer_id == b.node_id and right.peer_id == a.node_id

    Cancellation: cancelled during the handshakes, or the body left by
    cancellation (or any exception): both links close and their tasks end;
    nothing is left running.
    """
    left_stream, right_stream = trio.testing.memory_stream_pair()
    left_id, right_id = identities or (NodeIdentity.generate(), NodeIdentity.generate())
    links: dict[bool, Link] = {}
    release = trio.Event()
    both_ready = trio.Event()

    async def side(
        stream: trio.abc.Stream,
        initiator: bool,
        identity: NodeIdentity,
        handler: FrameHandler | None,
    ) -> None:
        async with open_link(
            stream,
            initiator=initiator,
            identity=identity,
            network=network,
            config=config,
            on_frame=handler,
        ) as link:
            links[initiator] = link
            if len(links) == 2:
                both_ready.set()
            await release.wait()

    async with open_unwrapped_nursery() as nursery:
        nursery.start_soon(side, left_stream, True, left_id, on_frame[0])
        nursery.start_soon(side, right_stream, False, right_id, on_frame[1])
        await both_ready.wait()
        try:
            yield links[True], links[False]
        finally:
            release.set()
