"""Faults, on the virtual clock: requests run at most once whatever leaves or dies."""

from __future__ import annotations

import collections
import functools
import itertools

import pytest
import trio
import trio.testing

import iris_trio
from iris_trio.overlay.ids import name_id, ring_distance
from iris_trio.testing import Cluster, open_cluster


def _root_of(cluster: Cluster, name: str) -> iris_trio.Node:
    tree = name_id("cluster", name)
    return min(cluster, key=lambda node: (ring_distance(node.driver.id, tree), node.driver.id))


def _a_cluster_rooted_away_from(cluster: Cluster, avoid: set[iris_trio.Node]) -> str:
    """A cluster name whose tree root is none of ``avoid``."""
    for number in itertools.count():
        name = f"work-{number}"
        if _root_of(cluster, name) not in avoid:
            return name
    raise AssertionError("unreachable")


@pytest.mark.parametrize("how", ["leaves", "dies"])
async def test_a_request_never_runs_twice_when_the_tree_root_goes(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The root of a cluster's tree (a plain node, not a member) leaving or dying
    while requests flow through it: each request runs at most once, and each
    requester gets its reply or a typed error at once (RequestLostError: it may
    have run), never a second run. Several roots go, one after the other."""
    runs: collections.Counter[bytes] = collections.Counter()

    async def handler(data: bytes) -> bytes:
        runs[data] += 1
        await trio.sleep(0.002)
        return data

    async with open_cluster(10) as cluster, trio.open_nursery() as nursery:
        members, requesters = list(cluster[:2]), list(cluster[2:4])
        keep = set(members) | set(requesters)
        name = _a_cluster_rooted_away_from(cluster, keep)
        for member in members:
            await nursery.start(member.serve, handler, name)
        outcomes: collections.Counter[str] = collections.Counter()
        stop = trio.Event()

        async def lane(node: iris_trio.Node, prefix: bytes) -> None:
            for sequence in itertools.count():
                if stop.is_set():
                    return
                data = prefix + b"%d" % sequence
                try:
                    assert await node.request(name, data, timeout=5) == data
                    outcomes["answered"] += 1
                except iris_trio.RequestLostError:
                    outcomes["lost"] += 1
                await trio.sleep(0.005)

        async with trio.open_nursery() as load:
            for index, node in enumerate(requesters):
                for lane_index in range(4):
                    load.start_soon(lane, node, b"%d.%d." % (index, lane_index))
            for _ in range(4):  # roots go one after the other
                await trio.sleep(1.0)
                root = _root_of(cluster, name)
                if root in keep:
                    break
                await (cluster.stop(root) if how == "leaves" else cluster.kill(root))
            await trio.sleep(1.0)
            stop.set()
        assert outcomes["answered"] > 500
        assert max(runs.values()) == 1, [data for data, count in runs.items() if count > 1]
        assert sum(runs.values()) <= outcomes["answered"] + outcomes["lost"]
        nursery.cancel_scope.cancel()


async def test_requests_held_by_a_member_that_dies_fail_at_once_or_go_elsewhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A member killed while it holds requests: those in its handlers fail at
    once with RequestLostError (they may have run), not after their 30 s
    timeout; those still queued behind them surely never started and go to
    another member. Nothing runs twice. Quick requests cost no notice."""
    ran: collections.Counter[bytes] = collections.Counter()
    started = trio.Event()

    async def slow(data: bytes) -> bytes:
        ran[data] += 1
        started.set()
        await trio.sleep(1000)
        return data

    async def quick(data: bytes) -> bytes:
        ran[data] += 1
        return data

    async with open_cluster(6) as cluster, trio.open_nursery() as nursery:
        doomed, survivor, requester = cluster[3], cluster[4], cluster[0]
        await nursery.start(functools.partial(doomed.serve, slow, "jobs", limit=2))
        failures: list[tuple[type[BaseException], float]] = []
        answers: list[bytes] = []

        async def ask(index: int) -> None:
            begun = trio.current_time()
            try:
                answers.append(await requester.request("jobs", b"%d" % index))
            except (iris_trio.RequestLostError, iris_trio.RequestTimeoutError) as exc:
                failures.append((type(exc), trio.current_time() - begun))

        async with trio.open_nursery() as asking:
            for index in range(5):  # two in handlers, three queued behind them
                asking.start_soon(ask, index)
            await started.wait()
            await trio.sleep(1.0)  # held for a while: the requester was told who holds them
            await nursery.start(functools.partial(survivor.serve, quick, "jobs"))
            killed_at = trio.current_time()
            await cluster.kill(doomed)
        assert [kind for kind, _ in failures] == [iris_trio.RequestLostError] * 2
        assert len(answers) == 3  # the queued ones, answered by the survivor
        assert trio.current_time() - killed_at < 1.0
        assert sorted(ran.values()) == [1] * 5  # each ran once: two slow, three quick
        assert requester._requester.resent == 3
        # Quick requests to another member: answered, no notices on the way.
        await nursery.start(survivor.serve, quick, "fast")
        notices = survivor._responder.notices_sent
        for index in range(50):
            assert await requester.request("fast", b"f%d" % index) == b"f%d" % index
        assert survivor._responder.notices_sent == notices
        nursery.cancel_scope.cancel()


async def test_a_queued_request_is_claimed_before_it_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request queued long enough for its requester to be told so is handed to
    the member's handler only after the requester agreed (GO), and it runs once:
    the requester's view (queued, then started) and the member's agree."""
    ran: collections.Counter[bytes] = collections.Counter()
    gate = trio.Event()

    async def gated(data: bytes) -> bytes:
        ran[data] += 1
        await gate.wait()
        return data

    async with open_cluster(4) as cluster, trio.open_nursery() as nursery:
        member, requester = cluster[2], cluster[0]
        await nursery.start(functools.partial(member.serve, gated, "gated", limit=1))
        answers: list[bytes] = []

        async def ask(index: int) -> None:
            answers.append(await requester.request("gated", b"%d" % index))

        async with trio.open_nursery() as asking:
            for index in range(4):
                asking.start_soon(ask, index)
            await trio.sleep(1.0)  # one runs, three queued (and noticed)
            gate.set()
        assert sorted(answers) == [b"0", b"1", b"2", b"3"]
        assert sorted(ran.values()) == [1] * 4
        assert requester._requester.resent == 0
        nursery.cancel_scope.cancel()


async def test_a_member_claims_its_queued_requests_one_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A receiver that asks for the next request claims that one only: the
    rest stay queued, and if the member dies they go to another member."""
    gate = trio.Event()
    ran: collections.Counter[bytes] = collections.Counter()

    async def first_quick_then_stuck(data: bytes) -> bytes:
        ran[data] += 1
        if len(ran) == 1:
            await gate.wait()
            return data
        await trio.sleep(1000)
        return data

    async def quick(data: bytes) -> bytes:
        ran[data] += 1
        return data

    async with open_cluster(5) as cluster, trio.open_nursery() as nursery:
        doomed, survivor, requester = cluster[2], cluster[3], cluster[0]
        member = functools.partial(doomed.serve, first_quick_then_stuck, "jobs", limit=1)
        await nursery.start(member)
        outcomes: list[str] = []

        async def ask(index: int) -> None:
            try:
                await requester.request("jobs", b"%d" % index)
                outcomes.append("reply")
            except iris_trio.RequestLostError:
                outcomes.append("lost")

        async with trio.open_nursery() as asking:
            for index in range(5):
                asking.start_soon(ask, index)
            await trio.sleep(1.0)  # one runs, four queued (and the requester told so)
            gate.set()  # the first ends: the member takes (and claims) one more
            await trio.sleep(1.0)
            await nursery.start(functools.partial(survivor.serve, quick, "jobs"))
            await cluster.kill(doomed)
        assert sorted(outcomes) == ["lost"] + ["reply"] * 4
        assert sorted(ran.values()) == [1] * 5
        assert requester._requester.resent == 3
        nursery.cancel_scope.cancel()


async def test_a_request_whose_claim_fails_goes_elsewhere_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A member that cannot reach the requester to claim a queued request drops
    it and says so (RETRY): the requester sends it to another member at once
    rather than waiting out its timeout."""
    gate = trio.Event()

    async def gated(data: bytes) -> bytes:
        await gate.wait()
        return data

    async with open_cluster(5) as cluster, trio.open_nursery() as nursery:
        member, other, requester = cluster[2], cluster[3], cluster[0]
        await nursery.start(functools.partial(member.serve, gated, "jobs", limit=1))
        answers: list[bytes] = []

        async def ask(index: int) -> None:
            answers.append(await requester.request("jobs", b"%d" % index, timeout=20))

        async with trio.open_nursery() as asking:
            for index in range(2):
                asking.start_soon(ask, index)
            await trio.sleep(1.0)  # one runs, one queued (the requester told so)
            await nursery.start(functools.partial(other.serve, gated, "jobs", limit=1))
            # The member loses its link to the requester (and cannot claim), but
            # the requester keeps waiting: its notices are kept by the link it had.
            requester._requester.peer_lost = lambda node: None  # type: ignore[method-assign]
            link = member.driver.peer_link(requester.driver.id)
            assert link is not None
            await link.aclose()
            begun = trio.current_time()
            gate.set()
        assert sorted(answers) == [b"0", b"1"]
        assert trio.current_time() - begun < 5  # not the 20 s timeout
        nursery.cancel_scope.cancel()
