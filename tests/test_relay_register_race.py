"""A service registering through the relay while its cluster's requests flow:
NODE_INIT is the first packet it gets (what arrived meanwhile waits for it and
is not refused), a client that leaves meanwhile is an ordinary disconnect, and
requests the relay took for a service but never wrote to it go to another
member when the service goes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

import iris_trio
from iris_trio.relay import Relay, RelayLimits
from iris_trio.relay.codec import NodeInit, RequestDelivery
from iris_trio.relay.connection import RelayConnection

from .relay_helpers import relay_node
from .test_relay_conformance import CLOSE, Raw, init, reply

SLOW_JOIN = 0.3


def slow_broadcasts_join(
    node: iris_trio.Node,
    monkeypatch: pytest.MonkeyPatch,
    meanwhile: Callable[[], None] = lambda: None,
) -> None:
    """Make a relay service's registration take SLOW_JOIN seconds after its
    request receiver is in place (as when the broadcast tree is slow to join);
    ``meanwhile`` runs at the end of that time."""
    broadcasts = node.broadcasts

    @asynccontextmanager
    async def slow(*args: object, **kwargs: object) -> AsyncIterator[object]:
        await trio.sleep(SLOW_JOIN)
        meanwhile()
        async with broadcasts(*args, **kwargs) as receiver:  # type: ignore[arg-type]
            yield receiver

    monkeypatch.setattr(node, "broadcasts", slow)


async def test_init_is_answered_first_and_a_request_sent_meanwhile_waits_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with relay_node() as (node, relay), trio.open_nursery() as nursery:
        slow_broadcasts_join(node, monkeypatch)
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            service = Raw(stream)
            await service.send(init("svc"))
            answers: list[bytes] = []

            async def ask() -> None:
                answers.append(await node.request("svc", b"q", timeout=5))

            await trio.sleep(SLOW_JOIN / 3)  # its requests are taken, it is not yet greeted
            nursery.start_soon(ask)
            assert await service.next() == NodeInit("iris-relay-magic", "v1.0-draft2")
            delivered = await service.expect(RequestDelivery)
            assert isinstance(delivered, RequestDelivery) and delivered.request == b"q"
            await service.send(reply(delivered.id, b"a"), CLOSE)
            await service.closed()
    assert answers == [b"a"]


async def test_a_service_that_leaves_before_its_init_is_answered_is_no_relay_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "iris_trio.relay")
    async with relay_node() as (node, relay), trio.open_nursery() as nursery:
        slow_broadcasts_join(node, monkeypatch)

        async def requester() -> None:
            while True:
                try:
                    await node.request("svc", b"q", timeout=5)
                except iris_trio.IrisError:
                    await trio.sleep(0.005)

        for _ in range(4):
            nursery.start_soon(requester)
        for _ in range(5):
            stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
            await stream.send_all(init("svc"))
            await trio.sleep(SLOW_JOIN / 3)
            await stream.aclose()  # gone while it registers, requests waiting for it
            await trio.sleep(SLOW_JOIN)
        with trio.fail_after(5):
            while relay.statistics().connections_open:  # noqa: ASYNC110 (counter only)
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[0].getMessage()
    assert relay.statistics().internal_errors == 0


async def test_writes_failing_while_a_service_registers_end_it_quietly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The client went, and the relay's writes to it failed (its writer closes,
    as when a write fails), while it registered: an ordinary disconnect, no
    ERROR with a traceback, no internal error."""
    caplog.set_level(logging.INFO, "iris_trio.relay")
    async with relay_node() as (node, relay):

        def writes_fail() -> None:
            for connection in relay.connections:
                connection._writer.close()

        slow_broadcasts_join(node, monkeypatch, writes_fail)
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            await stream.send_all(init("svc"))
            with trio.fail_after(5):
                while relay.statistics().connections_accepted == 0:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                while relay.statistics().connections_open:  # noqa: ASYNC110 (counter only)
                    await trio.sleep(0.01)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[0].getMessage()
    assert relay.statistics().internal_errors == 0
    assert any("left before its INIT was answered" in r.getMessage() for r in caplog.records)


def _connection_of(relay: Relay, cluster: str) -> RelayConnection:
    (connection,) = [c for c in relay.connections if c.cluster == cluster]
    return connection


async def test_requests_taken_for_a_service_but_never_written_to_it_go_to_another_member() -> None:
    size = 1 << 20
    limits = RelayLimits(queued_bytes=size // 4)
    async with relay_node(limits) as (node, relay), trio.open_nursery() as nursery:
        stuck_stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        stuck = Raw(stuck_stream)
        await stuck.send(init("svc"))
        await stuck.expect(NodeInit)  # then it reads nothing more
        outcomes: dict[int, str] = {}

        async def ask(index: int) -> None:
            try:
                answer = await node.request("svc", bytes([index]) * size, timeout=10)
            except iris_trio.RemoteError as exc:
                outcomes[index] = f"failed: {exc}"
            else:
                outcomes[index] = answer.decode()

        for index in range(12):
            nursery.start_soon(ask, index)
        connection = _connection_of(relay, "svc")
        with trio.fail_after(5):
            # A whole REQUEST waits in its send queue behind what its socket took.
            while connection.queued_bytes < size:  # noqa: ASYNC110 (counter only)
                await trio.sleep(0.01)
        taken = len(connection._served)  # requests it holds: written or queued

        async def other(data: bytes) -> bytes:
            return b"other"

        async with (
            iris_trio.register(relay.port, "svc") as member,
            trio.open_nursery() as serving,
        ):
            serving.start_soon(member.serve, other)
            await stuck_stream.aclose()  # gone, without CLOSE
            with trio.fail_after(8):
                while len(outcomes) < 12:  # noqa: ASYNC110 (results only)
                    await trio.sleep(0.01)
            serving.cancel_scope.cancel()
    failed = [text for text in outcomes.values() if text.startswith("failed")]
    # Only those written to its socket may have run there: they fail, never twice.
    assert all(text == "failed: the member stopped before answering" for text in failed)
    assert 1 <= len(failed) < taken, (taken, outcomes)
    assert sorted(outcomes.values()).count("other") == 12 - len(failed)
