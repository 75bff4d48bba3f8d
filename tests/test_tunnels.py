"""Tunnels: ordered, reliable, flow-controlled channels to one member.

One tunnel end alone, then tunnels through nodes on trio's virtual clock over
the in-memory transport (open_cluster), and 100 MB over real TCP end to end.
"""

from __future__ import annotations

import hashlib
import random

import pytest
import trio
import trio.testing

import iris_trio
from iris_trio.errors import ProtocolError
from iris_trio.patterns.tunnel import Tunnel
from iris_trio.patterns.tunnel_frames import CHUNK_SIZE, TunnelAllow, TunnelClose, TunnelData
from iris_trio.testing import open_cluster
from iris_trio.wire.frames import Frame

from .helpers_cluster import serve_echo_tunnels, tcp_nodes, wait_until

# ----------------------------------------------------------- the end, alone


class RecordingPath:
    """A path that records what a tunnel end sends."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.is_open = True
        self.has_send_capacity = True

    async def wait_send_capacity(self) -> None:
        await trio.lowlevel.checkpoint()

    def send_nowait(self, frame: Frame) -> None:
        self.frames.append(frame)

    send_control_nowait = send_nowait


def lone_end(allowance: int = 1 << 20, window: int = 1 << 20) -> tuple[Tunnel, RecordingPath]:
    path = RecordingPath()
    tunnel = Tunnel(
        b"L" * 16,
        b"R" * 16,
        7,
        path=lambda: path,
        allowance=allowance,
        window=window,
        on_close=lambda _: None,
    )
    return tunnel, path


def data(sequence: int, size: int | None, piece: bytes) -> TunnelData:
    return TunnelData(b"L" * 16, sequence, size, piece)


async def test_a_large_message_is_cut_into_pieces_and_put_back_together() -> None:
    sender, path = lone_end()
    message = random.randbytes(3 * CHUNK_SIZE + 5)
    await sender.send(message)
    pieces = [f for f in path.frames if isinstance(f, TunnelData)]
    assert [len(p.data) for p in pieces] == [CHUNK_SIZE] * 3 + [5]
    assert [p.size for p in pieces] == [len(message), None, None, None]
    receiver, _ = lone_end()
    for piece in reversed(pieces):  # any order: sequence numbers put them back
        receiver.frame_received(data(piece.sequence, piece.size, piece.data))
    assert receiver.receive_nowait() == message


async def test_an_empty_message_is_a_message() -> None:
    receiver, _ = lone_end()
    receiver.frame_received(data(0, 0, b""))
    assert receiver.receive_nowait() == b""


async def test_a_new_message_discards_an_unfinished_one_and_returns_its_room() -> None:
    receiver, path = lone_end(window=8)
    receiver.frame_received(data(0, 10, b"abcd"))  # the sender gave this one up
    receiver.frame_received(data(1, 2, b"ok"))
    assert receiver.receive_nowait() == b"ok"
    returned = sum(f.allowance for f in path.frames if isinstance(f, TunnelAllow))
    assert returned == 6  # the 4 discarded bytes and the 2 read


async def test_the_sender_waits_for_allowance_and_then_finishes_its_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sender, _ = lone_end(allowance=10)
    await sender.send(b"x" * (CHUNK_SIZE + 1))  # started with room: sent whole
    assert sender.statistics().allowance < 0
    with trio.move_on_after(1) as waited:
        await sender.send(b"y")
    assert waited.cancelled_caught
    sender.frame_received(TunnelAllow(b"L" * 16, CHUNK_SIZE * 2))
    await sender.send(b"y")


@pytest.mark.parametrize(
    ("frames", "complaint"),
    [
        ([data(0, None, b"x")], "without a first piece"),
        ([data(0, 1, b"xy")], "longer than announced"),
        ([data(0, 1, b"x"), data(0, 1, b"x")], "twice"),
        ([data(0, 0, b""), TunnelClose(b"L" * 16, 1, ""), data(2, 1, b"x")], "after its close"),
        ([data(0, 4, b"abcd"), data(1, 1, b"x")], "beyond its tunnel allowance"),
    ],
)
async def test_a_far_end_that_breaks_the_protocol_is_refused(
    frames: list[TunnelData | TunnelClose], complaint: str
) -> None:
    receiver, _ = lone_end(window=4)
    with pytest.raises(ProtocolError, match=complaint):
        for frame in frames:
            receiver.frame_received(frame)


async def test_close_reasons_give_an_end_or_an_error() -> None:
    clean, _ = lone_end()
    clean.frame_received(data(0, 1, b"a"))
    clean.frame_received(TunnelClose(b"L" * 16, 1, ""))
    assert clean.receive_nowait() == b"a"  # what was sent is read first
    with pytest.raises(trio.EndOfChannel):
        clean.receive_nowait()
    with pytest.raises(trio.BrokenResourceError):
        await clean.send(b"late")
    failed, _ = lone_end()
    failed.frame_received(TunnelClose(b"L" * 16, 0, "crashed"))
    with pytest.raises(trio.BrokenResourceError, match="crashed"):
        failed.receive_nowait()


# ---------------------------------------------------------- through nodes


async def test_messages_of_every_size_go_and_come_back_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(4) as group, trio.open_nursery() as services:
        await services.start(serve_echo_tunnels, group[3], "echo")
        sizes = [0, 1, 100, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * 1024 * 1024]
        messages = [random.randbytes(size) for size in sizes]
        with trio.fail_after(20):
            async with group[0].tunnel("echo") as tunnel:
                for message in messages:
                    await tunnel.send(message)
                for message in messages:
                    assert await tunnel.receive() == message
        services.cancel_scope.cancel()


async def test_a_hundred_megabytes_of_random_sized_messages_arrive_whole_and_in_order() -> None:
    """Over real TCP: sockets, their buffers and the credit flow control together."""
    total = 100 * 1024 * 1024
    rng = random.Random(4)
    async with tcp_nodes(3) as group, trio.open_nursery() as nursery:
        done = trio.Event()
        received = hashlib.blake2b()
        sent = hashlib.blake2b()
        counts = {"sent": 0, "received": 0}

        async def sink(task_status: trio.TaskStatus[None]) -> None:
            async with group[2].tunnels("sink") as incoming:
                task_status.started()
                async with await incoming.receive() as tunnel:
                    async for message in tunnel:
                        received.update(len(message).to_bytes(4, "big") + message)
                        counts["received"] += 1
            done.set()

        await nursery.start(sink)
        with trio.fail_after(120):
            async with group[0].tunnel("sink") as tunnel:
                left = total
                while left > 0:
                    size = min(left, rng.randint(1, 1024 * 1024))
                    message = rng.randbytes(size)
                    sent.update(size.to_bytes(4, "big") + message)
                    await tunnel.send(message)
                    counts["sent"] += 1
                    left -= size
            await done.wait()
        assert counts["received"] == counts["sent"]
        assert received.digest() == sent.digest()


async def test_a_paused_reader_makes_the_writer_wait_with_bounded_memory(
    autojump_clock: trio.testing.MockClock,
) -> None:
    window = 256 * 1024
    message = b"m" * 10_000
    async with open_cluster(2) as group, trio.open_nursery() as nursery:
        taken: list[Tunnel] = []
        ready = trio.Event()

        async def member(task_status: trio.TaskStatus[None]) -> None:
            async with group[1].tunnels("slow", window=window) as incoming:
                task_status.started()
                taken.append(await incoming.receive())
                ready.set()
                await trio.sleep_forever()

        await nursery.start(member)
        async with group[0].tunnel("slow") as tunnel, trio.open_nursery() as writing:
            sent = 0

            async def writer() -> None:
                nonlocal sent
                while True:
                    await tunnel.send(message)
                    sent += 1

            writing.start_soon(writer)
            await ready.wait()
            await trio.sleep(10)  # the reader pauses for 10 s
            far = taken[0]
            assert far.statistics().buffered_bytes <= window + len(message)
            assert sent * len(message) <= window + 2 * len(message)
            link = group[0].driver.peer_link(group[1].driver.id)
            assert link is not None
            assert link.statistics().queued_bytes < window
            sent_while_paused = sent
            with trio.fail_after(10):
                for _ in range(sent_while_paused):
                    assert await far.receive() == message
            await wait_until(
                group,
                lambda: sent > sent_while_paused + 10,
                what="the writer to go on once room was made",
            )
            writing.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_a_far_end_that_dies_gives_both_directions_an_error(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    async with open_cluster(3) as cluster, trio.open_nursery() as nursery:
        member = cluster[2]
        await nursery.start(serve_echo_tunnels, member, "echo")
        with trio.fail_after(10):
            async with cluster[0].tunnel("echo") as tunnel:
                await tunnel.send(b"ping")
                assert await tunnel.receive() == b"ping"
                # The member's node crashes (its links break) or stops.
                await (cluster.kill if how == "kill" else cluster.stop)(member)
                with pytest.raises(trio.BrokenResourceError):
                    await tunnel.receive()
                with pytest.raises(trio.BrokenResourceError):
                    for _ in range(1000):
                        await tunnel.send(b"after")
        nursery.cancel_scope.cancel()


async def test_a_failing_member_handler_is_an_error_not_an_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as group, trio.open_nursery() as nursery:

        async def failing(task_status: trio.TaskStatus[None]) -> None:
            async with group[1].tunnels("fragile") as incoming:
                task_status.started()
                with pytest.raises(ValueError):
                    async with await incoming.receive() as tunnel:
                        await tunnel.receive()
                        raise ValueError("cannot cope")
                await trio.sleep_forever()

        await nursery.start(failing)
        with trio.fail_after(10):
            async with group[0].tunnel("fragile") as tunnel:
                await tunnel.send(b"hello")
                with pytest.raises(trio.BrokenResourceError, match="ValueError"):
                    await tunnel.receive()
        nursery.cancel_scope.cancel()


async def test_two_hundred_tunnels_at_once_all_complete(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(4) as group, trio.open_nursery() as services:
        await services.start(serve_echo_tunnels, group[2], "echo")
        await services.start(serve_echo_tunnels, group[3], "echo")
        finished = 0

        async def client(index: int) -> None:
            nonlocal finished
            node = group[index % 2]
            async with node.tunnel("echo", timeout=20) as tunnel:
                for round_ in range(5):
                    message = b"%d:%d" % (index, round_) * 100
                    await tunnel.send(message)
                    assert await tunnel.receive() == message
            finished += 1

        with trio.fail_after(60):
            async with trio.open_nursery() as clients:
                for index in range(200):
                    clients.start_soon(client, index)
        assert finished == 200
        accepted = [node.statistics().tunnels_accepted for node in group[2:]]
        assert sum(accepted) == 200 and all(accepted), accepted  # both members took some
        services.cancel_scope.cancel()


async def test_a_node_can_tunnel_to_its_own_cluster(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(2) as group, trio.open_nursery() as services:
        await services.start(serve_echo_tunnels, group[0], "self")
        with trio.fail_after(10):
            async with group[0].tunnel("self") as tunnel:
                for size in (1, CHUNK_SIZE * 2 + 3):
                    message = random.randbytes(size)
                    await tunnel.send(message)
                    assert await tunnel.receive() == message
        services.cancel_scope.cancel()


async def test_clean_close_on_either_side_ends_the_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(2) as group, trio.open_nursery() as nursery:
        results: list[str] = []
        verdict = trio.Event()

        async def member(task_status: trio.TaskStatus[None]) -> None:
            async with group[1].tunnels("ends") as incoming:
                task_status.started()
                async with await incoming.receive() as tunnel:
                    results.extend([m.decode() async for m in tunnel])  # until EndOfChannel
                    with pytest.raises(trio.BrokenResourceError):
                        await tunnel.send(b"too late")
                    results.append("end")
            verdict.set()

        await nursery.start(member)
        with trio.fail_after(10):
            async with group[0].tunnel("ends") as tunnel:
                await tunnel.send(b"a")
                await tunnel.send(b"b")
            await verdict.wait()
        assert results == ["a", "b", "end"]


async def test_opening_a_tunnel_to_nobody_fails_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(2) as group:
        start = trio.current_time()
        with pytest.raises(iris_trio.NoRespondersError):
            async with group[0].tunnel("nobody", timeout=10):
                pass
        assert trio.current_time() - start < 1


async def test_tunnels_carry_bytes_only(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(2) as group, trio.open_nursery() as services:
        await services.start(serve_echo_tunnels, group[1], "echo")
        with trio.fail_after(10):
            async with group[0].tunnel("echo") as tunnel:
                with pytest.raises(TypeError):
                    await tunnel.send("text")  # type: ignore[arg-type]
                await tunnel.send(b"still fine")
                assert await tunnel.receive() == b"still fine"
        services.cancel_scope.cancel()
