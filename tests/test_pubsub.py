"""Publish/subscribe and broadcast through nodes.

On trio's virtual clock over the in-memory transport (open_cluster), except a
publisher leaving over real TCP (what its links still hold must reach the
socket before the end record) and join()'s own defaults.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import iris_trio
from iris_trio.errors import MessageTooLargeError
from iris_trio.overlay.ids import name_id, ring_distance
from iris_trio.testing import MemoryNetwork, open_cluster

from .helpers_cluster import Inbox, private_network, wait_tree, wait_until
from .test_overlay_driver import FAST


async def _subscribe(
    node: iris_trio.Node,
    topic: str,
    *,
    capacity: int = 1024,
    task_status: trio.TaskStatus[iris_trio.Subscription],
) -> None:
    async with node.subscribe(topic, capacity=capacity) as subscription:
        task_status.started(subscription)
        await trio.sleep_forever()


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_every_subscriber_gets_every_event_in_order_once_even_after_failures(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    async with open_cluster(16) as cluster, trio.open_nursery() as readers:
        group = list(cluster)
        subscribers = group[::2]
        inboxes = [Inbox() for _ in subscribers]
        for node, inbox in zip(subscribers, inboxes, strict=True):
            subscription = await readers.start(_subscribe, node, "news")
            readers.start_soon(inbox.drain, subscription)
        await wait_tree(group, "topic", "news", {n.driver.id for n in subscribers})
        for sequence in range(100):  # two publishers, 100 events each
            await group[1].publish("news", b"a%03d" % sequence)
            await group[3].publish("news", b"b%03d" % sequence)
        for inbox in inboxes:
            await inbox.wait_for(200)
        await trio.sleep(1)  # a moment for any duplicate to show up
        for inbox in inboxes:
            events = inbox.items
            assert len(events) == len(set(events)) == 200  # no duplicates, none lost
            assert [e for e in events if e[:1] == b"a"] == [b"a%03d" % i for i in range(100)]
            assert [e for e in events if e[:1] == b"b"] == [b"b%03d" % i for i in range(100)]

        # A quarter of the nodes fail (crash, or leave), the tree's root among them.
        tree = name_id("topic", "news")
        root = min(
            range(len(group)),
            key=lambda i: (ring_distance(group[i].driver.id, tree), group[i].driver.id),
        )
        doomed = sorted({root, 5, 9, 13} - {1})
        for index in doomed:
            await (cluster.kill if how == "kill" else cluster.stop)(group[index])
        survivors = [n for i, n in enumerate(group) if i not in doomed]
        alive = [i for i, n in enumerate(subscribers) if n in survivors]
        await wait_tree(survivors, "topic", "news", {subscribers[i].driver.id for i in alive})
        for index in alive:
            inboxes[index].items.clear()
        for sequence in range(50):
            await group[1].publish("news", b"c%03d" % sequence)
        for index in alive:
            await inboxes[index].wait_for(50)
        await trio.sleep(1)
        for index in alive:
            assert inboxes[index].items == [b"c%03d" % i for i in range(50)]
        readers.cancel_scope.cancel()


async def test_unsubscribing_everyone_leaves_no_tree_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(8) as cluster:
        group = list(cluster)
        members: set[int] = set()
        async with trio.open_nursery() as holders:
            for node in group[:5]:
                await holders.start(_subscribe, node, "gone")
                members.add(node.driver.id)
            await wait_tree(group, "topic", "gone", members)
            holders.cancel_scope.cancel()
        await wait_tree(group, "topic", "gone", set())
        assert all(not n.driver.overlay or not n.driver.overlay.pinned for n in group)


async def test_a_slow_subscriber_loses_events_counted_and_nobody_else_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_cluster(4) as group,
        group[0].subscribe("ticks", capacity=10) as slow,
        group[2].subscribe("ticks") as fast,
    ):
        await wait_tree(group, "topic", "ticks", {group[0].driver.id, group[2].driver.id})
        for sequence in range(300):
            await group[1].publish("ticks", b"%d" % sequence)
        got: list[bytes] = []
        with trio.fail_after(15):
            while len(got) < 300:
                got.append(await fast.receive())
        assert got == [b"%d" % i for i in range(300)]
        await wait_until(
            group,
            lambda: slow.statistics().delivered >= 300,
            what="all 300 events handed to the slow subscriber",
        )
        stats = slow.statistics()
        assert (stats.delivered, stats.buffered, stats.dropped) == (300, 10, 290)
        assert [slow.receive_nowait() for _ in range(10)] == [b"%d" % i for i in range(290, 300)]


async def test_publish_refuses_bad_input(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(2) as group:
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


async def test_a_failing_node_task_is_one_internal_error(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iris_trio.overlay.trees import TreeNode

    def broken_tick(self: TreeNode, now: float) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(TreeNode, "tick", broken_tick)
    with pytest.raises(iris_trio.InternalError, match="a bug") as caught:
        async with iris_trio.join(discovery="off", transport=MemoryNetwork()):
            await trio.sleep(5)  # the first tick comes long before
    assert isinstance(caught.value.__cause__, KeyError)


async def test_broadcast_reaches_every_member_exactly_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(10) as cluster, trio.open_nursery() as holders:
        group = list(cluster)
        members = group[2:10]
        inboxes = [Inbox() for _ in members]

        async def member(
            node: iris_trio.Node, inbox: Inbox, *, task_status: trio.TaskStatus[None]
        ) -> None:
            async with node.join("chat"), node.broadcasts() as messages:
                task_status.started()
                await inbox.drain(messages)

        for node, inbox in zip(members, inboxes, strict=True):
            await holders.start(member, node, inbox)
        await wait_tree(group, "cluster", "chat", {n.driver.id for n in members})
        for sequence in range(50):
            await group[0].broadcast("chat", b"%d" % sequence)
        for inbox in inboxes:
            await inbox.wait_for(50)
        await trio.sleep(1)  # a moment for any duplicate to show up
        assert all(inbox.items == [b"%d" % i for i in range(50)] for inbox in inboxes)
        holders.cancel_scope.cancel()


# ------------------------------------------------------- real TCP, end to end


async def test_a_publisher_that_leaves_right_after_publishing_loses_nothing() -> None:
    """What is queued on a leaving node's links still goes out (the links'
    writers flush before the end record, even as the node is cancelled)."""
    count = 3000
    network = private_network("leaving-publisher")
    async with iris_trio.join(
        network=network, listen="127.0.0.1:0", discovery="off", config=FAST
    ) as subscriber_node:
        topic = "leaving"
        async with subscriber_node.subscribe(topic, capacity=count) as events:
            async with iris_trio.join(
                network=network,
                listen="127.0.0.1:0",
                seeds=[subscriber_node.address],
                discovery="off",
                config=FAST,
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
