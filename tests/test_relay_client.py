"""The anyio relay client: against an in-process relay and against real
``iris-trio node`` daemons, under trio and under asyncio."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

import iris_trio
from iris_trio.relay.client import Connection, RelayTunnel

from .relay_helpers import relay_node


async def upper(data: bytes) -> bytes:
    if data == b"fail":
        raise ValueError("asked to fail")
    if data == b"slow":
        await anyio.sleep(10)
    return data.upper()


async def reverse_tunnels(service: Connection) -> None:
    async def echo(tunnel: RelayTunnel) -> None:
        async with tunnel:
            async for message in tunnel:
                await tunnel.send(message[::-1])

    async with anyio.create_task_group() as tasks:
        async for tunnel in service.tunnels:
            tasks.start_soon(echo, tunnel)


async def four_patterns(port: int) -> None:
    """Every pattern through the relay, as a user of the client writes it (any backend)."""
    async with (
        iris_trio.register(port, "upper") as service,
        iris_trio.register(port, "upper") as second,
        iris_trio.connect(port) as client,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(service.serve, upper)
        tasks.start_soon(reverse_tunnels, service)
        # request/reply and its errors
        assert await client.request("upper", b"hello", timeout=5) == b"HELLO"
        second_handler = anyio.Event()

        async def on_second(data: bytes) -> bytes:
            second_handler.set()
            return await upper(data)

        tasks.start_soon(second.serve, on_second)
        with pytest.raises(iris_trio.RemoteError, match="asked to fail"):
            await client.request("upper", b"fail", timeout=5)
        with pytest.raises(iris_trio.NoRespondersError):
            await client.request("nobody", b"?", timeout=5)
        with pytest.raises(iris_trio.RequestTimeoutError):
            await client.request("upper", b"slow", timeout=0.3)
        with pytest.raises(TimeoutError):  # the builtin, for asyncio code
            await client.request("upper", b"slow", timeout=0.3)
        # broadcast: both members of the cluster
        await client.broadcast("upper", b"to all")
        assert await service.broadcasts.receive() == b"to all"
        assert await second.broadcasts.receive() == b"to all"
        # publish/subscribe
        async with client.subscribe("news") as news:
            await service.publish("news", b"first")
            await service.publish("news", b"second")
            assert [await news.receive(), await news.receive()] == [b"first", b"second"]
        # tunnels: both ways, message sizes 0 B .. 1 MiB, clean close
        async with client.tunnel("upper", timeout=5) as tunnel:
            for size in (0, 1, 65535, 65536, 65537, 1 << 20):
                message = os.urandom(size)
                await tunnel.send(message)
                assert await tunnel.receive() == message[::-1]
        tasks.cancel_scope.cancel()


async def test_every_pattern_through_an_in_process_relay() -> None:
    async with relay_node() as (_, relay):
        await four_patterns(relay.port)


async def two_services_share(port: int) -> None:
    counts: collections.Counter[str] = collections.Counter()

    def handler(name: str) -> Any:
        async def handle(data: bytes) -> bytes:
            counts[name] += 1
            await anyio.sleep(0.002)
            return data

        return handle

    async with (
        iris_trio.register(port, "shared") as one,
        iris_trio.register(port, "shared") as two,
        iris_trio.connect(port) as client,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(one.serve, handler("one"))
        tasks.start_soon(two.serve, handler("two"))

        async def lane(index: int) -> None:
            for i in range(50):
                data = b"%d-%d" % (index, i)
                assert await client.request("shared", data, timeout=10) == data

        async with anyio.create_task_group() as lanes:
            for index in range(8):
                lanes.start_soon(lane, index)
        tasks.cancel_scope.cancel()
    assert counts["one"] + counts["two"] == 400
    assert min(counts.values()) >= 100, counts  # each takes a fair part


async def a_hundred_parallel_clients(port: int) -> None:
    async with (
        iris_trio.register(port, "echo") as service,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(service.serve, upper)
        answered = 0

        async def client(index: int) -> None:
            nonlocal answered
            async with iris_trio.connect(port) as connection:
                for i in range(10):
                    data = b"c%d-%d" % (index, i)
                    assert await connection.request("echo", data, timeout=20) == data.upper()
                    answered += 1

        async with anyio.create_task_group() as clients:
            for index in range(100):
                clients.start_soon(client, index)
        tasks.cancel_scope.cancel()
    assert answered == 1000


async def test_a_tunnel_closed_by_the_service_ends_the_clients_stream() -> None:
    async with relay_node() as (_, relay):
        async with (
            iris_trio.register(relay.port, "closer") as service,
            iris_trio.connect(relay.port) as client,
            anyio.create_task_group() as tasks,
        ):

            async def serve_one() -> None:
                async with await service.tunnels.receive() as tunnel:
                    await tunnel.send(b"bye")

            tasks.start_soon(serve_one)
            async with client.tunnel("closer", timeout=5) as tunnel:
                assert await tunnel.receive() == b"bye"
                with pytest.raises(anyio.EndOfStream):
                    await tunnel.receive()
                with pytest.raises(anyio.BrokenResourceError):
                    await tunnel.send(b"too late")


async def test_the_clients_errors_are_typed() -> None:
    async with relay_node() as (_, relay), iris_trio.connect(relay.port) as client:
        with pytest.raises(TypeError):
            await client.request("x", "text", timeout=1)  # type: ignore[arg-type]
        with pytest.raises(iris_trio.MessageTooLargeError):
            await client.publish("x", b"x" * (iris_trio.MAX_MESSAGE_SIZE + 1))
        with pytest.raises(iris_trio.ConfigError):
            client.requests  # noqa: B018 - a plain client is not a service
        with pytest.raises(iris_trio.RequestTimeoutError):
            async with client.tunnel("nobody", timeout=0.5):
                pass
    with pytest.raises(iris_trio.ConfigError):
        iris_trio.register(1, "")
    with pytest.raises(OSError):
        async with iris_trio.connect(relay.port):
            pass


# ------------------------------------------------------------ real daemons


class Daemon:
    """An ``iris-trio node`` process and its ready line."""

    def __init__(self, *arguments: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "iris_trio.cli", "node", "--dev", "--port", "0", *arguments],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        assert ready, "the daemon did not get ready"
        self.ready: dict[str, Any] = json.loads(self.process.stdout.readline())
        assert self.ready["event"] == "ready"
        self.port: int = self.ready["relay_port"]

    def stop(self) -> int:
        """SIGTERM; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


@contextmanager
def daemon(*arguments: str) -> Iterator[Daemon]:
    started = Daemon(*arguments)
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_every_pattern_through_a_daemon(backend: str) -> None:
    with daemon("--discovery", "off") as node:
        anyio.run(four_patterns, node.port, backend=backend)
        assert node.stop() == 0


@pytest.mark.parametrize(
    ("scenario", "backend"),
    [(two_services_share, "trio"), (a_hundred_parallel_clients, "asyncio")],
)
def test_services_and_many_clients_through_a_daemon(scenario: Any, backend: str) -> None:
    with daemon("--discovery", "off") as node:
        anyio.run(scenario, node.port, backend=backend)
        assert node.stop() == 0


def test_a_client_of_one_daemon_reaches_a_service_attached_to_another() -> None:
    with (
        daemon("--discovery", "off") as first,
        daemon("--discovery", "off", "--seed", first.ready["address"]) as second,
    ):

        async def scenario() -> None:
            async with (
                iris_trio.register(second.port, "far") as service,
                iris_trio.connect(first.port) as client,
                anyio.create_task_group() as tasks,
            ):
                tasks.start_soon(service.serve, upper)
                with anyio.fail_after(20):
                    while True:  # until the two daemons' overlay has formed
                        try:
                            reply = await client.request("far", b"across", timeout=2)
                        except (iris_trio.NoRespondersError, iris_trio.RequestTimeoutError):
                            await anyio.sleep(0.1)
                            continue
                        break
                assert reply == b"ACROSS"
                for i in range(50):
                    assert await client.request("far", b"%d" % i, timeout=5) == b"%d" % i
                tasks.cancel_scope.cancel()

        anyio.run(scenario, backend="asyncio")


def test_stopping_a_daemon_closes_its_clients_with_a_reason_and_exits_zero() -> None:
    with daemon("--discovery", "off") as node:

        async def scenario() -> None:
            async with iris_trio.connect(node.port) as client:
                node.process.send_signal(signal.SIGTERM)
                with anyio.fail_after(10), pytest.raises(anyio.BrokenResourceError) as caught:
                    while True:  # answered until the node goes
                        with contextlib.suppress(iris_trio.NoRespondersError):
                            await client.request("nobody-here", b"?", timeout=1)
                        await anyio.sleep(0.05)
                assert "shutting down" in str(caught.value)

        with pytest.raises(iris_trio.NoRespondersError):
            anyio.run(_one_request, node.port, backend="trio")
        anyio.run(scenario, backend="trio")
        assert node.process.wait(20) == 0  # stopped by the one SIGTERM, gracefully


async def _one_request(port: int) -> None:
    async with iris_trio.connect(port) as client:
        await client.request("nobody-here", b"?", timeout=2)
