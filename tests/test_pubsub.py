"""Publish/subscribe through join(): many nodes in one trio run, over real TCP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

import iris_trio
from iris_trio.errors import MessageTooLargeError
from iris_trio.overlay.ids import name_id, ring_distance
from iris_trio.overlay.trees import tree_problems

from .test_overlay_driver import FAST


@asynccontextmanager
async def nodes(count: int) -> AsyncIterator[tuple[list[iris_trio.Node], list[trio.CancelScope]]]:
    async with trio.open_nursery() as nursery:
        started: list[iris_trio.Node] = []
        scopes: list[trio.CancelScope] = []
        for _ in range(count):
            seeds = [started[0].address] if started else []
            scope = trio.CancelScope()

            async def run(
                seeds: list[str] = seeds,
                scope: trio.CancelScope = scope,
                *,
                task_status: trio.TaskStatus[iris_trio.Node] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                with scope:
                    await iris_trio.serve_node(
                        seeds=seeds, discovery="off", config=FAST, task_status=task_status
                    )

            started.append(await nursery.start(run))
            scopes.append(scope)
        for node in started:
            with trio.fail_after(20):
                await node.wait_converged(quiet=0.5)
        yield started, scopes
        nursery.cancel_scope.cancel()


def tree_state(group: list[iris_trio.Node], topic: str, members: set[int]) -> list[str]:
    tree = name_id("topic", topic)
    states = {}
    for node in group:
        trees = node.driver.trees
        if trees is not None and tree in trees.trees:
            states[node.driver.id] = trees.trees[tree]
    closest = min((n.driver.id for n in group), key=lambda n: (ring_distance(n, tree), n))
    return tree_problems(states, members, closest)


async def settle(group: list[iris_trio.Node], topic: str, members: set[int]) -> None:
    with trio.fail_after(15):
        while tree_state(group, topic, members):  # noqa: ASYNC110 - polls the oracle
            await trio.sleep(0.05)


async def collect_forever(subscription: iris_trio.Subscription, into: list[bytes]) -> None:
    async for event in subscription:
        into.append(event)


async def collect(subscription: iris_trio.Subscription, count: int, into: list[bytes]) -> None:
    with trio.fail_after(15):
        while len(into) < count:
            into.append(await subscription.receive())


async def test_every_subscriber_gets_every_event_in_order_once_even_after_failures() -> None:
    async with nodes(16) as (group, scopes), trio.open_nursery() as readers:
        subscribers = group[::2]
        received: dict[int, list[bytes]] = {i: [] for i in range(len(subscribers))}
        subscriptions = []
        for index, node in enumerate(subscribers):
            subscription = await readers.start(_subscribe, node, "news")
            subscriptions.append(subscription)
            readers.start_soon(collect_forever, subscription, received[index])
        members = {n.driver.id for n in subscribers}
        await settle(group, "news", members)
        for sequence in range(100):  # two publishers, 50 events each
            await group[1].publish("news", b"a%03d" % sequence)
            await group[3].publish("news", b"b%03d" % sequence)
        with trio.fail_after(15):
            while any(len(r) < 200 for r in received.values()):  # noqa: ASYNC110
                await trio.sleep(0.05)
        for events in received.values():
            assert sorted(events) == sorted({*events})  # no duplicates
            assert [e for e in events if e[:1] == b"a"] == [b"a%03d" % i for i in range(100)]
            assert [e for e in events if e[:1] == b"b"] == [b"b%03d" % i for i in range(100)]

        # Kill a quarter of the nodes, the tree's root among them.
        tree = name_id("topic", "news")
        root = min(
            range(len(group)),
            key=lambda i: (ring_distance(group[i].driver.id, tree), group[i].driver.id),
        )
        doomed = sorted({root, 5, 9, 13} - {1})
        for index in doomed:
            scopes[index].cancel()
        survivors = [n for i, n in enumerate(group) if i not in doomed]
        alive_subscribers = [i for i, n in enumerate(subscribers) if n in survivors]
        await settle(survivors, "news", {n.driver.id for n in subscribers if n in survivors})
        for index in alive_subscribers:
            received[index].clear()
        for sequence in range(50):
            await group[1].publish("news", b"c%03d" % sequence)
        with trio.fail_after(15):
            while any(len(received[i]) < 50 for i in alive_subscribers):  # noqa: ASYNC110
                await trio.sleep(0.05)
        for index in alive_subscribers:
            assert received[index] == [b"c%03d" % i for i in range(50)]
        readers.cancel_scope.cancel()


async def _subscribe(
    node: iris_trio.Node, topic: str, *, task_status: trio.TaskStatus[iris_trio.Subscription]
) -> None:
    async with node.subscribe(topic) as subscription:
        task_status.started(subscription)
        await trio.sleep_forever()


async def test_unsubscribing_everyone_leaves_no_tree_state() -> None:
    async with nodes(8) as (group, _):
        members: set[int] = set()
        async with trio.open_nursery() as holders:
            for node in group[:5]:
                await holders.start(_subscribe, node, "gone")
                members.add(node.driver.id)
            await settle(group, "gone", members)
            holders.cancel_scope.cancel()
        await settle(group, "gone", set())
        assert all(not n.driver.overlay or not n.driver.overlay.pinned for n in group)


async def test_a_slow_subscriber_loses_events_counted_and_nobody_else_does() -> None:
    async with (
        nodes(4) as (group, _),
        group[0].subscribe("ticks", capacity=10) as slow,
        group[2].subscribe("ticks") as fast,
    ):
        await settle(group, "ticks", {group[0].driver.id, group[2].driver.id})
        for sequence in range(300):
            await group[1].publish("ticks", b"%d" % sequence)
        got: list[bytes] = []
        await collect(fast, 300, got)
        assert got == [b"%d" % i for i in range(300)]
        with trio.fail_after(5):
            while slow.statistics().delivered < 300:  # noqa: ASYNC110
                await trio.sleep(0.02)
        stats = slow.statistics()
        assert (stats.buffered, stats.dropped) == (10, 290)
        assert [slow.receive_nowait() for _ in range(10)] == [b"%d" % i for i in range(290, 300)]


async def test_publish_refuses_bad_input() -> None:
    async with nodes(2) as (group, _):
        with pytest.raises(MessageTooLargeError):
            await group[0].publish("t", bytes(iris_trio.MAX_MESSAGE_SIZE + 1))
        with pytest.raises(TypeError):
            await group[0].publish("t", "text")  # type: ignore[arg-type]
        await group[0].publish("nobody-listens", b"fine")


async def test_join_on_the_dev_network_and_the_user_exception_leaves_unwrapped() -> None:
    class BoomError(Exception):
        pass

    with pytest.raises(BoomError):
        async with iris_trio.join("echo", discovery="off") as node:
            assert node.cluster == "echo"
            raise BoomError


async def test_a_failing_node_task_is_one_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from iris_trio.overlay.trees import TreeNode

    def broken_tick(self: TreeNode, now: float) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(TreeNode, "tick", broken_tick)
    with pytest.raises(iris_trio.InternalError, match="a bug") as caught:
        async with iris_trio.join(discovery="off"):
            await trio.sleep(5)
    assert isinstance(caught.value.__cause__, KeyError)


async def test_broadcast_reaches_every_member_exactly_once() -> None:
    async with nodes(10) as (group, _), trio.open_nursery() as holders:
        members = group[2:10]
        boxes: list[list[bytes]] = [[] for _ in members]

        async def member(
            node: iris_trio.Node, box: list[bytes], *, task_status: trio.TaskStatus[None]
        ) -> None:
            async with node.join("chat"), node.broadcasts() as messages:
                task_status.started()
                async for message in messages:
                    box.append(message)

        for node, box in zip(members, boxes, strict=True):
            await holders.start(member, node, box)
        tree = name_id("cluster", "chat")
        ids = {n.driver.id for n in members}
        closest = min((n.driver.id for n in group), key=lambda n: (ring_distance(n, tree), n))
        with trio.fail_after(15):
            while tree_problems(  # noqa: ASYNC110 - polls the oracle
                {
                    n.driver.id: n.driver.trees.trees[tree]
                    for n in group
                    if n.driver.trees and tree in n.driver.trees.trees
                },
                ids,
                closest,
            ):
                await trio.sleep(0.05)
        for sequence in range(50):
            await group[0].broadcast("chat", b"%d" % sequence)
        with trio.fail_after(15):
            while any(len(box) < 50 for box in boxes):  # noqa: ASYNC110
                await trio.sleep(0.05)
        await trio.sleep(0.2)
        assert all(box == [b"%d" % i for i in range(50)] for box in boxes)
        holders.cancel_scope.cancel()


async def test_a_publisher_that_leaves_right_after_publishing_loses_nothing() -> None:
    """What is queued on a leaving node's links still goes out (the links'
    writers flush before the end record, even as the node is cancelled)."""
    count = 3000
    async with iris_trio.join(discovery="off", config=FAST) as subscriber_node:
        topic = "leaving"
        async with subscriber_node.subscribe(topic, capacity=count) as events:
            async with iris_trio.join(
                discovery="off", seeds=[subscriber_node.address], config=FAST
            ) as publisher:
                await publisher.wait_joined()
                await subscriber_node.wait_converged(quiet=0.5)
                payload = bytes(1024)
                for _ in range(count):
                    await publisher.publish(topic, payload)
            # The publisher has left; everything it published must arrive.
            received = 0
            with trio.move_on_after(10):
                while received < count:
                    await events.receive()
                    received += 1
            assert received == count
