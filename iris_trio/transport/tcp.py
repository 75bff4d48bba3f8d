"""Dialing links over TCP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ..crypto.identity import NodeIdentity
from ..crypto.keys import Network
from ..errors import HandshakeError
from .config import LinkConfig
from .link import FrameHandler, Link, open_link

__all__ = ["connect_tcp_link"]


@asynccontextmanager
async def connect_tcp_link(
    host: str,
    port: int,
    *,
    identity: NodeIdentity,
    network: Network,
    config: LinkConfig | None = None,
    listen: str = "",
    on_frame: FrameHandler | None = None,
) -> AsyncIterator[Link]:
    """Connect to ``host:port`` and run a secure link for the ``async with`` body.

    Raises:
        OSError: the connection could not be made.
        HandshakeError: the handshake failed or timed out; its text names the
            likely cause (e.g. another network key or name), and a failed
            handshake is logged as a WARNING (at most one per address every 30 s).
    """
    config = config or LinkConfig()
    with trio.move_on_after(config.handshake_timeout) as scope:
        stream = await trio.open_tcp_stream(host, port)
    if scope.cancelled_caught:
        raise HandshakeError(f"connecting to {host}:{port} timed out")
    async with open_link(
        stream,
        initiator=True,
        identity=identity,
        network=network,
        config=config,
        listen=listen,
        on_frame=on_frame,
    ) as link:
        yield link
