"""The relay's hot paths: the client's inbox wakes one receiver per item, the
client times out requests the node never answers with one task, both sides read
their sockets directly under trio without losing a packet, and the writer sends
a burst at once (what the socket does not take stays withdrawable)."""

from __future__ import annotations

import contextlib
import functools
import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
import trio
import trio.testing

import iris_trio
from iris_trio.relay import client as relay_client
from iris_trio.relay.backend import read_ready
from iris_trio.relay.codec import (
    MAGIC_RELAY,
    VERSION,
    ClientClose,
    ClientInit,
    NodeClose,
    NodeInit,
    PacketReader,
    ReplyDelivery,
    RequestDelivery,
    encode,
)
from iris_trio.relay.inbox import Inbox
from iris_trio.relay.writer import PacketWriter

from .relay_helpers import relay_node


class _Steps(trio.abc.Instrument):
    """Counts the steps each task takes."""

    def __init__(self) -> None:
        self.steps: dict[trio.lowlevel.Task, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] = self.steps.get(task, 0) + 1


async def test_an_item_wakes_one_of_the_waiting_receivers() -> None:
    inbox: Inbox[int] = Inbox()
    received: list[int] = []
    tasks: list[trio.lowlevel.Task] = []

    async def receive_one() -> None:
        tasks.append(trio.lowlevel.current_task())
        received.append(await inbox.receive())

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(receive_one)
        await trio.testing.wait_all_tasks_blocked()
        steps = _Steps()
        trio.lowlevel.add_instrument(steps)
        try:
            inbox.push(1)
            await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert received == [1]
        assert sum(1 for task in tasks if steps.steps.get(task)) == 1
        for item in range(2, 11):
            inbox.push(item)
    assert sorted(received) == list(range(1, 11))


async def test_a_receiver_cancelled_as_an_item_comes_passes_the_item_on() -> None:
    inbox: Inbox[str] = Inbox()
    first: list[str] = []
    second: list[str] = []

    async with trio.open_nursery() as nursery:
        first_scope = trio.CancelScope()

        async def take_first() -> None:
            with first_scope:
                first.append(await inbox.receive())

        async def take_second() -> None:
            second.append(await inbox.receive())

        nursery.start_soon(take_first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take_second)
        await trio.testing.wait_all_tasks_blocked()
        first_scope.cancel()  # the first receiver is cancelled, and before it
        inbox.push("item")  # runs, the item comes: its wakeup goes to it
    assert first_scope.cancelled_caught
    assert (first, second) == ([], ["item"])


async def test_closing_wakes_every_waiting_receiver() -> None:
    inbox: Inbox[int] = Inbox()
    ended = 0

    async def wait_for_the_end() -> None:
        nonlocal ended
        with pytest.raises(anyio.BrokenResourceError, match="gone"):
            await inbox.receive()
        ended += 1

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(wait_for_the_end)
        await trio.testing.wait_all_tasks_blocked()
        inbox.close("gone")
    assert ended == 5


@asynccontextmanager
async def _silent_node() -> AsyncIterator[int]:
    """A relay that accepts INIT and CLOSE and never answers a request; yields its port."""

    async def serve(stream: trio.SocketStream) -> None:
        reader = PacketReader("client")
        async for data in stream:
            for packet in reader.feed(bytes(data)):
                if isinstance(packet, ClientInit):
                    await stream.send_all(encode(NodeInit(MAGIC_RELAY, VERSION)))
                elif isinstance(packet, ClientClose):
                    await stream.send_all(encode(NodeClose("")))

    async with trio.open_nursery() as nursery:
        serve_tcp = functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1")
        listeners = await nursery.start(serve_tcp)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def test_a_request_the_node_never_answers_times_out_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay_client, "_GRACE", 0.05)
    async with _silent_node() as port, iris_trio.connect(port) as client:
        outcome: list[str] = []

        async def long_wait() -> None:
            try:
                await client.request("c", b"long", timeout=600)
            except trio.Cancelled:
                outcome.append("still waiting")
                raise

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_wait)
            await trio.testing.wait_all_tasks_blocked()
            # A shorter request after a longer one still ends at its own deadline.
            with trio.fail_after(60), pytest.raises(iris_trio.RequestTimeoutError):
                await client.request("c", b"short", timeout=0.01)
            nursery.cancel_scope.cancel()
        assert outcome == ["still waiting"]
        # Finished waits do not pile up in the expiry heap.
        for _ in range(3000):
            client._expire_at(math.inf, relay_client._Waiter(trio.Event()))
        assert len(client._expiries) <= 2 * len(client._pending) + 1025


async def test_a_burst_of_requests_through_the_relay_is_answered_in_full() -> None:
    async def echo(data: bytes) -> bytes:
        return data

    async with (
        relay_node() as (_, relay),
        iris_trio.register(relay.port, "echo") as service,
        iris_trio.connect(relay.port) as client,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(service.serve, echo)
        replies: dict[int, bytes] = {}

        async def ask(index: int) -> None:
            replies[index] = await client.request("echo", b"%d" % index, timeout=30)

        async with trio.open_nursery() as requests:
            for index in range(500):
                requests.start_soon(ask, index)
        assert replies == {index: b"%d" % index for index in range(500)}
        nursery.cancel_scope.cancel()


async def _unused_send_all(data: bytes) -> None:
    raise AssertionError("the writer task does not run in these tests")


async def test_a_burst_of_packets_is_written_without_waiting_for_the_writer_task() -> None:
    near, far = socket.socketpair()
    with near, far:
        near.setblocking(False)
        writer = PacketWriter(_unused_send_all, 1 << 20, fd=near.fileno())
        packets = [ReplyDelivery(index, False, True, reply=b"r") for index in range(1, 18)]
        for packet in packets:  # the first goes at once (quiet), the next 16 together
            writer.send_nowait(packet)
        assert writer.queued == 0
        far.setblocking(False)
        reader = PacketReader("node")
        assert reader.feed(far.recv(1 << 16)) == packets


async def test_a_burst_the_socket_takes_in_part_keeps_the_rest_withdrawable() -> None:
    near, far = socket.socketpair()
    with near, far:
        near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        near.setblocking(False)
        far.setblocking(False)
        writer = PacketWriter(_unused_send_all, 1 << 30, fd=near.fileno())
        writer.note_read()  # the first packet goes at once too
        tickets: dict[int, int] = {}
        for served in range(1, 401):
            packet = RequestDelivery(served, b"x" * 1000, 5000)
            tickets[served] = writer.send_withdrawable_nowait(packet)
        assert writer.queued  # the socket did not take it all
        withdrawn = writer.withdraw(tickets.values())
        assert withdrawn
        received = bytearray()
        while writer.queued:  # the rest goes as the far end reads
            with contextlib.suppress(BlockingIOError):
                received += far.recv(1 << 20)
            writer._write_queued_now()
        with contextlib.suppress(BlockingIOError):
            while chunk := far.recv(1 << 20):
                received += chunk
        delivered = PacketReader("node").feed(bytes(received))
        assert all(isinstance(packet, RequestDelivery) for packet in delivered)
        ids = [packet.id for packet in delivered if isinstance(packet, RequestDelivery)]
        kept = [served for served, ticket in tickets.items() if ticket not in withdrawn]
        assert ids == kept
        assert len(ids) + len(withdrawn) == 400


async def test_read_ready_waits_first_only_when_the_last_read_emptied_the_socket() -> None:
    left, right = trio.socket.socketpair()
    with left, right:
        await right.send(b"there already")
        data, waited = await read_ready(left.fileno(), 1024)
        assert (data, waited) == (b"there already", False)  # read at once

        async def send_later() -> None:
            await trio.testing.wait_all_tasks_blocked()
            await right.send(b"later")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_later)
            # Drained: it waits for data (no read that finds nothing first).
            data, waited = await read_ready(left.fileno(), 1024, drained=True)
        assert (data, waited) == (b"later", True)
        await right.send(b"more")
        await trio.testing.wait_all_tasks_blocked()
        data, waited = await read_ready(left.fileno(), 1024, drained=True)
        assert (data, waited) == (b"more", True)  # (data there: one turn, no more)
