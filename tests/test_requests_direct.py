"""Requests sent straight to a member the requester knows (RequestDirect), on
the virtual clock: most requests skip the tree once members answered, and the
promises stay those of the tree: load shared by spare capacity, members that
appear are found, a member that stops serving or dies is left, at most once."""

from __future__ import annotations

import collections
import contextlib
import functools

import pytest
import trio
import trio.testing

import iris_trio
from iris_trio.patterns.requester import DIRECT_EXPLORE
from iris_trio.patterns.requests import IncomingRequests, Request, _HandlerPool
from iris_trio.testing import open_cluster

from .helpers_cluster import echo_from


async def _ask(node: iris_trio.Node, cluster: str, lanes: int, each: int) -> list[bytes]:
    answers: list[bytes] = []

    async def lane(number: int) -> None:
        for sequence in range(each):
            question = b"%d.%d" % (number, sequence)
            answer = await node.request(cluster, question, timeout=10)
            assert answer.split(b":", 1)[1] == question  # its own answer
            answers.append(answer)

    async with trio.open_nursery() as nursery:
        for number in range(lanes):
            nursery.start_soon(lane, number)
    return answers


async def test_most_requests_go_straight_to_members_and_the_load_is_still_shared(
    autojump_clock: trio.testing.MockClock,
) -> None:
    counts: collections.Counter[str] = collections.Counter()
    async with open_cluster(6) as group, trio.open_nursery() as servers:
        for index, node in enumerate(group[2:5]):
            await servers.start(node.serve, echo_from(f"m{index}", counts, pause=0.01), "work")
        client = group[0]
        answers = await _ask(client, "work", lanes=8, each=150)
        figures = client.statistics()
        assert len(answers) == sum(counts.values()) == 1200  # each exactly once
        # Once the members answered, all but one request in DIRECT_EXPLORE skip the tree.
        assert figures.requests_direct >= 1200 * (1 - 1 / DIRECT_EXPLORE) * 0.9
        share = 1200 / 3
        for count in counts.values():
            assert abs(count - share) <= 0.25 * share, counts
        servers.cancel_scope.cancel()


async def test_a_busier_member_gets_fewer_direct_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    counts: collections.Counter[str] = collections.Counter()
    async with open_cluster(4) as group, trio.open_nursery() as servers:
        slow = functools.partial(group[2].serve, echo_from("slow", counts, pause=0.2), limit=4)
        quick = functools.partial(group[3].serve, echo_from("quick", counts, pause=0.01), limit=4)
        await servers.start(slow, "work")
        await servers.start(quick, "work")
        await _ask(group[0], "work", lanes=6, each=100)
        assert counts["quick"] >= 3 * counts["slow"], counts
        assert group[0].statistics().requests_direct > 300
        servers.cancel_scope.cancel()


async def test_a_member_that_starts_later_is_found_and_shares_the_load(
    autojump_clock: trio.testing.MockClock,
) -> None:
    counts: collections.Counter[str] = collections.Counter()
    async with open_cluster(4) as group, trio.open_nursery() as servers:
        await servers.start(group[2].serve, echo_from("first", counts, pause=0.01), "work")
        await _ask(group[0], "work", lanes=4, each=50)  # it knows the first member well
        assert counts == {"first": 200}
        await servers.start(group[3].serve, echo_from("later", counts, pause=0.01), "work")
        counts.clear()
        await _ask(group[0], "work", lanes=4, each=200)
        assert counts["later"] >= 0.3 * 800, counts
        servers.cancel_scope.cancel()


async def test_a_member_that_stops_serving_is_left_without_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its node stays (the link too): the direct requests it gets are answered
    "not serving, send again" and go through the tree, to the other member."""
    counts: collections.Counter[str] = collections.Counter()
    async with open_cluster(4) as group, trio.open_nursery() as servers:
        async with trio.open_nursery() as leaving:
            await leaving.start(group[2].serve, echo_from("a", counts, pause=0.01), "work")
            await servers.start(group[3].serve, echo_from("b", counts, pause=0.01), "work")
            await _ask(group[0], "work", lanes=4, each=50)
            assert counts["a"] > 0 and counts["b"] > 0
            leaving.cancel_scope.cancel()
        counts.clear()
        before = group[0].statistics().requests_direct
        answers = await _ask(group[0], "work", lanes=4, each=50)
        assert len(answers) == 200 and counts == {"b": 200}
        assert group[0].statistics().requests_direct - before > 150  # to b, directly
        servers.cancel_scope.cancel()


@pytest.mark.parametrize("pause", [0.2, 5.0])
async def test_a_member_that_dies_fails_its_direct_requests_at_once_and_never_twice(
    autojump_clock: trio.testing.MockClock, pause: float
) -> None:
    """Requests sent straight to a member are known to be in its hands: when
    it dies they fail at once (RequestLostError: they may have run), never
    after their timeout and never run a second time elsewhere."""
    runs: collections.Counter[bytes] = collections.Counter()

    def handler(name: str, hold: float):  # type: ignore[no-untyped-def]
        async def handle(data: bytes) -> bytes:
            runs[data] += 1
            await trio.sleep(hold)
            return name.encode() + b":" + data

        return handle

    async with open_cluster(4) as group, trio.open_nursery() as servers:
        doomed, other, client = group[2], group[3], group[0]
        await servers.start(doomed.serve, handler("doomed", pause), "work")
        await _ask(client, "work", lanes=1, each=3)  # the client knows the member now
        await servers.start(other.serve, handler("other", 1), "work")
        lost: list[float] = []
        answered: list[bytes] = []

        async def one(number: int) -> None:
            start = trio.current_time()
            try:
                answered.append(await client.request("work", b"q%d" % number, timeout=60))
            except iris_trio.RequestLostError:
                lost.append(trio.current_time() - start)

        before = client.statistics().requests_direct
        async with trio.open_nursery() as asking:
            for number in range(6):
                asking.start_soon(one, number)
            await trio.sleep(0.1)  # in the doomed member's hands, unanswered
            assert client.statistics().requests_direct > before
            await group.kill(doomed)
        assert lost and all(waited < 1 for waited in lost)  # at once, not at 60 s
        assert len(lost) + len(answered) == 6
        assert all(count == 1 for count in runs.values()), runs  # never twice
        servers.cancel_scope.cancel()


async def test_requests_arriving_while_serve_stops_do_not_crash_the_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """serve() stopping slowly (a handler's cleanup takes time) while requests
    keep coming: the node keeps running, each request runs at most once, and
    the requests the stopping member did not start go to the other member."""
    runs: collections.Counter[bytes] = collections.Counter()

    def handler(name: bytes):  # type: ignore[no-untyped-def]
        async def handle(data: bytes) -> bytes:
            runs[data] += 1
            if data.startswith(b"slow") and name == b"stopping":
                try:
                    await trio.sleep(5)
                finally:  # its cleanup takes time: serve() stops slowly
                    with trio.CancelScope(shield=True):
                        await trio.sleep(0.5)
            return name + b":" + data

        return handle

    async with open_cluster(4) as group, trio.open_nursery() as servers:
        member = group[2]
        await servers.start(group[3].serve, handler(b"other"), "work")
        await servers.start(member.serve, handler(b"spare"), "check")
        stop = trio.CancelScope()

        async def stopping(*, task_status: trio.TaskStatus[None]) -> None:
            with stop:
                await member.serve(handler(b"stopping"), "work", task_status=task_status)

        async def lane(number: int) -> None:
            for sequence in range(60):  # a steady flow, on after serve() stopped
                with contextlib.suppress(iris_trio.RemoteError, iris_trio.RequestLostError):
                    await group[0].request("work", b"%d.%d" % (number, sequence), timeout=10)
                await trio.sleep(0.02)

        async def slow(number: int) -> None:
            with trio.move_on_after(1), contextlib.suppress(iris_trio.RemoteError):
                await group[1].request("work", b"slow-%d" % number, timeout=10)

        await servers.start(stopping)
        async with trio.open_nursery() as lanes:
            for number in range(20):
                lanes.start_soon(lane, number)
            await trio.sleep(0.3)
            for number in range(8):  # some reach the stopping member
                lanes.start_soon(slow, number)
            await trio.sleep(0.3)
            stop.cancel()
        assert not member.closed
        assert await group[0].request("check", b"alive?", timeout=5) == b"spare:alive?"
        assert all(count == 1 for count in runs.values())
        servers.cancel_scope.cancel()


async def test_a_request_that_arrives_while_the_worker_pool_closes_stays_queued() -> None:
    """The way serve() ends its pool of workers: from the moment it stops,
    a request that arrives stays queued (the member gives it back as it
    closes) and the pool starts no worker. Starting one in the closing nursery
    raised "Nursery is closed to new arrivals" in the node's reader, and the
    node died (1 in 4 runs of ``iris-trio demo``, a member leaving under load)."""
    incoming = IncomingRequests(lambda: None, lambda _: None)
    cleaning = trio.Event()

    async def handler(data: bytes) -> bytes:
        try:
            await trio.sleep_forever()
        finally:
            cleaning.set()
            with trio.CancelScope(shield=True):
                await trio.sleep(0.05)  # the nursery is closed meanwhile
        return data

    async with trio.open_nursery() as outer:
        stop = trio.CancelScope()

        async def serve() -> None:
            with stop:
                async with trio.open_nursery() as tasks:
                    pool = _HandlerPool(handler, incoming, 4, tasks)
                    incoming.on_arrival = pool.wake
                    try:
                        await trio.sleep_forever()
                    finally:
                        incoming.on_arrival = None
                        pool.close()

        outer.start_soon(serve)
        await trio.sleep(0.01)
        assert incoming._push(Request(b"first", trio.current_time() + 10, b"1", 0, _ignore))
        await trio.sleep(0.01)
        stop.cancel()
        await cleaning.wait()
        assert incoming._push(Request(b"late", trio.current_time() + 10, b"2", 0, _ignore))
        pool_wake_after_close = _HandlerPool(handler, incoming, 4, outer)
        pool_wake_after_close.close()
        pool_wake_after_close.wake()  # a closed pool starts nothing
    assert len(incoming) == 1  # the late one waits (the member gives it back as it closes)


def _ignore(request: Request, status: int | None, data: bytes) -> None:
    pass


async def test_claimed_requests_each_get_a_worker_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two queued requests whose requesters were told "queued" are claimed by
    two workers; both GOs come in one turn: both start at once (the second
    waited in the claimed list for the first handler to end)."""
    claims: list[Request] = []
    incoming = IncomingRequests(lambda: None, lambda _: None, claim=lambda r, _: claims.append(r))
    started: dict[bytes, float] = {}

    async def handler(data: bytes) -> bytes:
        started[data] = trio.current_time()
        await trio.sleep(1)
        return data

    async with trio.open_nursery() as nursery:
        pool = _HandlerPool(handler, incoming, 8, nursery)
        incoming.on_arrival = pool.wake
        for name in (b"a", b"b"):
            request = Request(name, trio.current_time() + 10, name, 0, _ignore)
            request._queued_notice = True  # its requester was told: claim it first
            assert incoming._push(request)
        await trio.sleep(0.01)
        assert len(claims) == 2
        begin = trio.current_time()
        for request in claims:
            incoming._claimed(request, True)
        await trio.sleep(0.1)
        assert sorted(started) == [b"a", b"b"]
        assert all(when - begin < 0.05 for when in started.values()), started
        nursery.cancel_scope.cancel()


async def test_a_request_waiting_when_its_node_stops_fails_with_closed_resource(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as group, trio.open_nursery() as servers:

        async def never(data: bytes) -> bytes:
            await trio.sleep_forever()
            return data

        await servers.start(group[2].serve, never, "stuck")
        requester = group[1]
        failed: list[BaseException] = []

        async def ask() -> None:
            try:
                await requester.request("stuck", b"?", timeout=60)
            except trio.ClosedResourceError as exc:
                failed.append(exc)

        async with trio.open_nursery() as asking:
            asking.start_soon(ask)
            await trio.sleep(1)
            start = trio.current_time()
            await group.stop(requester)
        assert len(failed) == 1 and "stopped" in str(failed[0])
        assert trio.current_time() - start < 10  # not at its 60 s timeout
        servers.cancel_scope.cancel()
