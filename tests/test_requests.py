"""Request/reply through nodes: load balancing, errors, deadlines.

On trio's virtual clock over the in-memory transport (open_cluster), except one
load test over real TCP that keeps the whole stack honest end to end.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import iris_trio
from iris_trio.testing import open_cluster

from .helpers_cluster import echo_from, tcp_nodes, wait_until

# ------------------------------------------------------- real TCP, end to end


async def test_requests_are_answered_once_and_spread_over_the_members() -> None:
    async with tcp_nodes(8) as group, trio.open_nursery() as servers:
        counts: collections.Counter[str] = collections.Counter()
        members = group[3:8]
        for index, node in enumerate(members):
            await servers.start(node.serve, echo_from(f"m{index}", counts), "echo")
        clients = group[:3]
        answers: dict[bytes, bytes] = {}

        async def client(node: iris_trio.Node, prefix: bytes) -> None:
            for sequence in range(400):
                question = prefix + b"%d" % sequence
                answers[question] = await node.request("echo", question, timeout=10)

        with trio.fail_after(60):
            async with trio.open_nursery() as load:
                for index, node in enumerate(clients):
                    for lane in range(4):  # several requests in flight per client
                        load.start_soon(client, node, b"c%d.%d." % (index, lane))
        assert len(answers) == 3 * 4 * 400
        for question, answer in answers.items():
            assert answer.split(b":", 1)[1] == question  # no cross-wired replies
        assert sum(counts.values()) == len(answers)  # exactly once
        share = len(answers) / len(members)
        assert len(counts) == len(members)
        for name, count in counts.items():
            assert abs(count - share) <= 0.25 * share, (name, counts)
        servers.cancel_scope.cancel()


# ------------------------------------------------------------ virtual clock


async def test_no_responders_is_raised_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(4) as group:
        start = trio.current_time()
        with pytest.raises(iris_trio.NoRespondersError):
            await group[0].request("nobody", b"hello?", timeout=10)
        assert trio.current_time() - start < 1


async def test_a_failing_handler_gives_remote_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def broken(data: bytes) -> bytes:
        raise ValueError("cannot compute " + data.decode())

    async with open_cluster(4) as group, trio.open_nursery() as servers:
        await servers.start(group[2].serve, broken, "calc")  # started: requests reach it
        with pytest.raises(iris_trio.RemoteError, match="cannot compute 2/0"):
            await group[0].request("calc", b"2/0", timeout=10)
        servers.cancel_scope.cancel()


async def test_the_deadline_travels_and_late_work_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen_remaining: list[float] = []
    finished: list[bytes] = []

    async def slow(data: bytes) -> bytes:
        seen_remaining.append(trio.current_effective_deadline() - trio.current_time())
        await trio.sleep(2)
        finished.append(data)
        return data

    async with open_cluster(4) as group, trio.open_nursery() as servers:
        await servers.start(group[2].serve, slow, "slow")
        with pytest.raises(trio.TooSlowError):
            await group[0].request("slow", b"late", timeout=0.5)
        assert len(seen_remaining) == 1 and 0 < seen_remaining[0] <= 0.5
        await trio.sleep(2.5)  # the handler would have finished by now
        assert finished == []  # the handler was cancelled at the deadline
        with trio.move_on_after(0.3) as scope:  # the caller's own scope works too
            await group[0].request("slow", b"cancelled")
        assert scope.cancelled_caught
        await trio.sleep(2.5)
        assert finished == []
        servers.cancel_scope.cancel()


async def test_one_worker_runs_each_handler_under_its_own_request_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: dict[bytes, float] = {}
    finished: list[bytes] = []

    async def handler(data: bytes) -> bytes:
        seen[data] = trio.current_effective_deadline() - trio.current_time()
        if data == b"slow":
            await trio.sleep(5)
        finished.append(data)
        return data

    async with open_cluster(3) as group, trio.open_nursery() as servers:
        # limit=1: one worker handles every request, one after the other.
        await servers.start(functools.partial(group[2].serve, handler, "one", limit=1))
        assert await group[0].request("one", b"quick", timeout=1) == b"quick"
        await trio.sleep(2)  # the idle worker outlives the last request's deadline
        with pytest.raises(trio.TooSlowError):
            await group[0].request("one", b"slow", timeout=0.5)
        await trio.sleep(1)
        assert await group[0].request("one", b"after", timeout=3) == b"after"
        assert finished == [b"quick", b"after"]  # the late one was cancelled
        assert 0 < seen[b"quick"] <= 1
        assert 0 < seen[b"slow"] <= 0.5
        assert 2 < seen[b"after"] <= 3
        servers.cancel_scope.cancel()


async def test_pull_model_and_the_deadline_of_queued_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_cluster(4) as group,
        trio.open_nursery() as nursery,
        group[3].requests("pull", limit=2) as incoming,
    ):
        result: list[bytes] = []
        answered = trio.Event()

        async def ask() -> None:
            result.append(await group[0].request("pull", b"ping", timeout=5))
            answered.set()

        nursery.start_soon(ask)
        request = await incoming.receive()
        assert request.data == b"ping" and not request.expired
        assert math.isfinite(request.deadline)
        await request.reply(b"pong")
        with pytest.raises(RuntimeError):
            await request.reply(b"twice")
        with trio.fail_after(5):
            await answered.wait()
        assert result == [b"pong"]

        # A request whose deadline passes while queued is dropped, never handed out.
        with pytest.raises(trio.TooSlowError):
            await group[0].request("pull", b"too late", timeout=0.3)
        await trio.sleep(0.1)  # the member's clock started when the request arrived
        with pytest.raises(trio.WouldBlock):
            incoming.receive_nowait()
        assert incoming.expired == 1


async def test_requests_queued_at_a_member_that_stops_go_to_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Queued requests were never handled, so they are sent again: none is lost
    and none is handled twice."""
    async with open_cluster(5) as group, trio.open_nursery() as outer:
        answers: list[bytes] = []

        async def ask() -> None:
            answers.append(await group[0].request("work", b"job", timeout=10))

        # The first member is the only one and does not read; leaving the block
        # stops it with five requests queued (then the askers' nursery waits).
        async with trio.open_nursery() as askers, group[3].requests("work") as incoming:
            for _ in range(5):
                askers.start_soon(ask)
            await wait_until(
                group, lambda: len(incoming) >= 5, what="five requests queued at the member"
            )
            assert len(incoming) == 5

            async def fast(data: bytes) -> bytes:
                return b"fast"

            await outer.start(group[4].serve, fast, "work")
        assert answers == [b"fast"] * 5
        assert group[3].statistics().requests_received == 5
        assert group[4].statistics().requests_received == 5
        outer.cancel_scope.cancel()


async def test_a_slow_member_gets_less(autojump_clock: trio.testing.MockClock) -> None:
    counts: collections.Counter[str] = collections.Counter()
    async with open_cluster(6) as group, trio.open_nursery() as servers:
        for index, node in enumerate(group[2:5]):
            await servers.start(node.serve, echo_from(f"fast{index}", counts, pause=0.002), "mixed")
        await servers.start(group[5].serve, echo_from("slow", counts, pause=0.1), "mixed")

        async def lane(node: iris_trio.Node) -> None:
            for _ in range(150):
                await node.request("mixed", b"x", timeout=10)

        with trio.fail_after(60):
            async with trio.open_nursery() as load:
                for node in group[:2]:
                    for _ in range(4):
                        load.start_soon(lane, node)
        assert counts.total() == 2 * 4 * 150
        fast_mean = (counts["fast0"] + counts["fast1"] + counts["fast2"]) / 3
        assert counts["slow"] < 0.6 * fast_mean, counts
        servers.cancel_scope.cancel()


async def test_members_joining_and_leaving_while_requests_flow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At least 99% answered within their deadline, and none handled twice."""
    handled: collections.Counter[bytes] = collections.Counter()

    async def handler(data: bytes) -> bytes:
        handled[data] += 1
        await trio.sleep(0.005)
        return data

    async with open_cluster(8) as group, trio.open_nursery() as servers:
        await servers.start(group[7].serve, handler, "churn")  # always there
        outcomes: collections.Counter[str] = collections.Counter()

        async def lane(node: iris_trio.Node, prefix: bytes) -> None:
            for sequence in range(300):
                question = prefix + b"%d" % sequence
                try:
                    answer = await node.request("churn", question, timeout=5)
                except (trio.TooSlowError, iris_trio.IrisError):
                    outcomes["failed"] += 1
                else:
                    assert answer == question
                    outcomes["answered"] += 1

        async def churn() -> None:
            for round_ in range(6):
                member = group[3 + round_ % 4]
                scope = trio.CancelScope()
                await servers.start(_serve_for, member, handler, scope)
                await trio.sleep(0.4)  # a member serves for 0.4 s...
                scope.cancel()  # ...and leaves with work in flight
                await trio.sleep(0.2)

        with trio.fail_after(90):
            async with trio.open_nursery() as load:
                load.start_soon(churn)
                for index, node in enumerate(group[:3]):
                    for lane_index in range(3):
                        load.start_soon(lane, node, b"%d.%d." % (index, lane_index))
        total = outcomes["answered"] + outcomes["failed"]
        assert total == 2700
        assert outcomes["answered"] >= 0.99 * total, outcomes
        assert max(handled.values()) == 1  # never handled twice
        servers.cancel_scope.cancel()


async def _serve_for(
    node: iris_trio.Node,
    handler: Callable[[bytes], Awaitable[bytes]],
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await node.serve(handler, "churn", task_status=task_status)


async def test_a_member_that_stops_mid_request_fails_it_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started = trio.Event()

    async def stuck(data: bytes) -> bytes:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with open_cluster(3) as group, trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        await nursery.start(_serve_for, group[2], stuck, scope)

        async def stop_when_started() -> None:
            await started.wait()
            scope.cancel()

        nursery.start_soon(stop_when_started)
        begun = trio.current_time()
        with pytest.raises(iris_trio.RemoteError, match="stopped before answering"):
            await group[0].request("churn", b"job", timeout=20)
        assert trio.current_time() - begun < 2  # not the 20 s timeout
