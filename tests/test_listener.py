"""Links over real TCP on 127.0.0.1, and the listener's defences."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import nacl.bindings
import pytest
import trio

from iris_trio.crypto import DEV_NETWORK, Network, NetworkKey, NodeIdentity
from iris_trio.errors import HandshakeError
from iris_trio.transport import Link, LinkConfig, LinkListener, connect_tcp_link, serve_tcp_links
from iris_trio.wire import Payload


async def echo(link: Link) -> None:
    async for frame in link:
        await link.send(frame)


@asynccontextmanager
async def tcp_server(
    handler: Callable[[Link], Any] = echo, **kwargs: Any
) -> AsyncIterator[tuple[LinkListener, int]]:
    async with trio.open_nursery() as nursery:
        listener: LinkListener = await nursery.start(
            lambda task_status: serve_tcp_links(
                handler,
                0,
                identity=NodeIdentity.generate(),
                network=DEV_NETWORK,
                task_status=task_status,
                **kwargs,
            )
        )
        port = int(listener.listen.rsplit(":", 1)[1])
        yield listener, port
        nursery.cancel_scope.cancel()


async def test_link_over_tcp_round_trip() -> None:
    async with tcp_server() as (listener, port):
        async with connect_tcp_link(
            "127.0.0.1", port, identity=NodeIdentity.generate(), network=DEV_NETWORK
        ) as link:
            assert link.peer_hello.listen == listener.listen
            for i in range(200):
                await link.send(Payload(i, bytes(i * 10)))
            for i in range(200):
                frame = await link.receive()
                assert isinstance(frame, Payload) and frame.channel == i
        assert listener.statistics().handshakes_completed == 1


async def test_silent_connections_do_not_exhaust_the_listener() -> None:
    config = LinkConfig(handshake_timeout=1.0)
    async with tcp_server(config=config, max_handshakes_per_source=4) as (listener, port):
        silent = []
        for _ in range(40):
            silent.append(await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2"))
        await trio.sleep(0.2)
        with trio.fail_after(2):
            async with connect_tcp_link(
                "127.0.0.1", port, identity=NodeIdentity.generate(), network=DEV_NETWORK
            ) as link:
                await link.send(Payload(1, b"hi"))
                assert await link.receive() == Payload(1, b"hi")
        stats = listener.statistics()
        assert stats.rejected_busy + stats.evicted >= 30  # the oldest silent ones make room
        assert stats.handshakes_in_progress <= 4
        # The deadline frees the slots the silent connections held.
        with trio.fail_after(3):
            while listener.statistics().handshakes_in_progress:  # noqa: ASYNC110 (counter only)
                await trio.sleep(0.05)
        assert listener.statistics().handshakes_failed >= 4
        for stream in silent:
            await stream.aclose()


async def test_plaintext_to_the_port_is_refused_at_once() -> None:
    async with tcp_server() as (listener, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(1), contextlib.suppress(trio.BrokenResourceError):
            # far below the 3 s handshake deadline; a reset is as good as a close
            assert await stream.receive_some() == b""
        assert listener.statistics().handshakes_failed == 1
        await stream.aclose()


async def test_wrong_key_costs_the_listener_no_diffie_hellman(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = {"scalarmult": 0, "scalarmult_base": 0}
    real = nacl.bindings

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def crypto_scalarmult(self, *args: bytes) -> bytes:
            calls["scalarmult"] += 1
            return real.crypto_scalarmult(*args)

        def crypto_scalarmult_base(self, *args: bytes) -> bytes:
            calls["scalarmult_base"] += 1
            return real.crypto_scalarmult_base(*args)

    async with tcp_server() as (listener, port):
        intruder = NodeIdentity.generate()
        monkeypatch.setattr("iris_trio.crypto.noise.bindings", Counting())
        with pytest.raises(HandshakeError):
            async with connect_tcp_link(
                "127.0.0.1",
                port,
                identity=intruder,
                network=Network(DEV_NETWORK.name, NetworkKey.generate()),
            ):
                pass
        monkeypatch.undo()
        assert listener.statistics().handshakes_failed == 1
    # The intruder made its ephemeral key; the listener made no X25519 operation at all.
    assert calls == {"scalarmult": 0, "scalarmult_base": 1}
