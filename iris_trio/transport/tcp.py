"""Links over TCP: dialling, and :class:`TcpTransport`, the default transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ..crypto.identity import NodeIdentity
from ..crypto.keys import Network
from ..errors import HandshakeError
from .base import split_host_port
from .config import LinkConfig
from .link import FrameHandler, Link, open_link
from .listener import LinkHandler, LinkListener, serve_tcp_links

__all__ = ["TcpTransport", "connect_tcp_link"]


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


class TcpTransport:
    """Links over TCP sockets (the default :class:`~iris_trio.transport.base.Transport`).

    A thin shell over :func:`~iris_trio.transport.listener.serve_tcp_links` and
    :func:`connect_tcp_link`; addresses are TCP "host:port" endpoints. It holds
    no state: one instance serves any number of nodes.
    """

    def __repr__(self) -> str:
        return "TcpTransport()"

    async def serve(
        self,
        handler: LinkHandler,
        *,
        identity: NodeIdentity,
        network: Network,
        host: str,
        port: int,
        config: LinkConfig | None = None,
        on_frame: FrameHandler | None = None,
        task_status: trio.TaskStatus[LinkListener] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept links on TCP ``host:port`` until cancelled (see ``Transport.serve``)."""
        await serve_tcp_links(
            handler,
            port,
            identity=identity,
            network=network,
            host=host,
            config=config,
            on_frame=on_frame,
            task_status=task_status,
        )

    @asynccontextmanager
    async def connect(
        self,
        address: str,
        *,
        identity: NodeIdentity,
        network: Network,
        config: LinkConfig | None = None,
        listen: str = "",
        on_frame: FrameHandler | None = None,
    ) -> AsyncIterator[Link]:
        """Dial TCP ``address`` ("host:port") and run the link for the body.

        Raises:
            OSError / HandshakeError: as :func:`connect_tcp_link`.
            ValueError: ``address`` is not "host:port".
        """
        host, port = split_host_port(address)
        async with connect_tcp_link(
            host,
            port,
            identity=identity,
            network=network,
            config=config,
            listen=listen,
            on_frame=on_frame,
        ) as link:
            yield link
