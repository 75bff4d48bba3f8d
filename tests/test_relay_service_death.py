"""A relay service whose serving loop died stops being a member at once, and a
handler's failure (an exception, a result that is not bytes) is answered as a
typed fault while the service goes on serving."""

from __future__ import annotations

import logging

import anyio
import pytest
import trio

import iris_trio
from iris_trio.relay import Relay
from iris_trio.relay.client import Connection

from .relay_helpers import relay_node


class FatalError(BaseException):
    """Not an Exception: it ends the serving loop, as a crash in user code would."""


async def live(data: bytes) -> bytes:
    return b"live:" + data


async def wait_closed_gracefully(relay: Relay, count: int) -> None:
    """Until the relay has seen ``count`` clients close (it unregistered them)."""
    with trio.fail_after(5):
        while relay.statistics().closed_gracefully < count:  # noqa: ASYNC110 (counter only)
            await trio.sleep(0.01)


async def fifty_answered_by_the_live_service(client: Connection) -> None:
    answers: list[bytes] = []

    async def one(index: int) -> None:
        answers.append(await client.request("work", b"%d" % index, timeout=10))

    start = trio.current_time()
    with trio.fail_after(3):  # far below every request's 10 s timeout
        async with trio.open_nursery() as nursery:
            for index in range(50):
                nursery.start_soon(one, index)
    assert sorted(answers) == sorted(b"live:%d" % index for index in range(50))
    assert trio.current_time() - start < 3


async def test_a_cancelled_serve_loop_leaves_the_cluster() -> None:
    async with (
        relay_node() as (_, relay),
        # Registered first: while both are idle, requests go to it before the other.
        iris_trio.register(relay.port, "work") as dead,
        iris_trio.register(relay.port, "work") as alive,
        iris_trio.connect(relay.port) as client,
        trio.open_nursery() as nursery,
    ):
        handled = trio.Event()

        async def dying(data: bytes) -> bytes:
            handled.set()
            return b"dead:" + data

        dead_scope = trio.CancelScope()

        async def serve_until_cancelled() -> None:
            with dead_scope:
                await dead.serve(dying)

        nursery.start_soon(serve_until_cancelled)
        nursery.start_soon(alive.serve, live)
        assert await client.request("work", b"before", timeout=5) == b"dead:before"
        assert handled.is_set()
        # The serving task goes; the connection is still open in this test.
        dead_scope.cancel()
        await wait_closed_gracefully(relay, 1)
        await fifty_answered_by_the_live_service(client)
        # The service's connection tells why it is gone.
        with pytest.raises(anyio.BrokenResourceError, match="stopped serving"):
            await dead.request("work", b"x", timeout=1)
        assert relay.statistics().connections_open == 2
        nursery.cancel_scope.cancel()


async def test_a_serve_loop_ended_by_its_handler_leaves_the_cluster() -> None:
    async with (
        relay_node() as (_, relay),
        iris_trio.register(relay.port, "work") as dead,
        iris_trio.register(relay.port, "work") as alive,
        iris_trio.connect(relay.port) as client,
        trio.open_nursery() as nursery,
    ):
        died = trio.Event()

        async def fatal(data: bytes) -> bytes:
            raise FatalError("the handler broke the loop")

        async def serve_until_it_dies() -> None:
            try:
                await dead.serve(fatal)
            except* FatalError:
                died.set()

        nursery.start_soon(serve_until_it_dies)
        nursery.start_soon(alive.serve, live)
        with trio.fail_after(5):
            while not died.is_set():
                try:
                    # Answered by the live service, or failed at once (not after
                    # the 10 s timeout) by the one whose loop it ended.
                    assert await client.request("work", b"die", timeout=10) == b"live:die"
                except iris_trio.RemoteError as exc:
                    assert "stopped" in str(exc)
        await wait_closed_gracefully(relay, 1)
        await fifty_answered_by_the_live_service(client)
        nursery.cancel_scope.cancel()


async def test_requests_a_dead_service_held_are_failed_at_once() -> None:
    async with (
        relay_node() as (_, relay),
        iris_trio.register(relay.port, "work") as service,
        iris_trio.connect(relay.port) as client,
        trio.open_nursery() as nursery,
    ):
        began = trio.Event()

        async def stuck(data: bytes) -> bytes:
            began.set()
            await trio.sleep_forever()
            raise AssertionError("not reached")

        scope = trio.CancelScope()

        async def serve_one_at_a_time() -> None:
            with scope:
                await service.serve(stuck, limit=1)

        nursery.start_soon(serve_one_at_a_time)
        errors: list[str] = []

        async def one() -> None:
            with pytest.raises(iris_trio.RemoteError) as caught:
                await client.request("work", b"?", timeout=30)
            errors.append(str(caught.value))

        with trio.fail_after(5):  # far below the requests' 30 s timeout
            async with trio.open_nursery() as requests:
                for _ in range(3):
                    requests.start_soon(one)
                await began.wait()  # one in the handler, two waiting at the service
                while len(service.requests) < 2:  # noqa: ASYNC110 (counter only)
                    await trio.sleep(0.01)
                scope.cancel()
        assert sorted(errors) == [
            "the member stopped before answering",  # the node: it was being handled
            "the service stopped serving before handling the request",
            "the service stopped serving before handling the request",
        ]
        nursery.cancel_scope.cancel()


async def test_handler_failures_are_typed_faults_and_serving_goes_on() -> None:
    async def picky(data: bytes) -> bytes:
        if data == b"str":
            return "text"  # type: ignore[return-value]
        if data == b"none":
            return None  # type: ignore[return-value]
        if data == b"value":
            raise ValueError("bad input")
        if data == b"bare":
            raise KeyError
        return data.upper()

    async with (
        relay_node() as (node, relay),
        iris_trio.register(relay.port, "calc") as service,
        iris_trio.connect(relay.port) as client,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(service.serve, picky)
        expected = {
            b"str": ("TypeError", "the handler returned str, not bytes"),
            b"none": ("TypeError", "the handler returned NoneType, not bytes"),
            b"value": ("ValueError", "bad input"),
        }
        for data, (type_name, message) in expected.items():
            # From a relay client and from an embedded node alike.
            for request in (client.request, node.request):
                with pytest.raises(iris_trio.RemoteError) as caught:
                    await request("calc", data, timeout=5)
                assert caught.value.type_name == type_name
                assert caught.value.message == message
                assert str(caught.value) == f"{type_name}: {message}"
                assert await request("calc", b"next", timeout=5) == b"NEXT"
        with pytest.raises(iris_trio.RemoteError, match=r"^KeyError$"):
            await client.request("calc", b"bare", timeout=5)
        assert await client.request("calc", b"still", timeout=5) == b"STILL"
        nursery.cancel_scope.cancel()


async def test_connections_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="iris_trio.relay")
    async with relay_node() as (_, relay):
        async with iris_trio.register(relay.port, "calc"), iris_trio.connect(relay.port):
            pass
        await wait_closed_gracefully(relay, 2)
    lines = [r.getMessage() for r in caplog.records if r.name == "iris_trio.relay"]
    connected = [line for line in lines if line.startswith("relay client connected from ")]
    assert len(connected) == 2
    assert any(line.endswith(" (service of cluster 'calc')") for line in connected)
    assert any(line.endswith(" (client)") for line in connected)
    closed = [line for line in lines if " closed: " in line]
    assert len(closed) == 2
    assert all(line.endswith(": the client closed the connection") for line in closed)
