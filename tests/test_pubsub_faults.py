"""Publish/subscribe under faults: a tree moving to a new root loses nothing,
events lost behind a partition are counted as missed, and one forged sequence
number does not silence a publisher."""

from __future__ import annotations

import trio
import trio.testing

import iris_trio
from iris_trio.crypto import NodeIdentity
from iris_trio.overlay.ids import from_bytes, name_id, ring_distance, to_bytes
from iris_trio.overlay.tree_frames import TreePublish
from iris_trio.testing import open_cluster
from iris_trio.wire.frames import FrameCodec

from .helpers_cluster import Inbox, wait_tree, wait_until

TOPIC = "ticks"
TREE = name_id("topic", TOPIC)


async def _subscribe(
    node: iris_trio.Node, topic: str, *, task_status: trio.TaskStatus[iris_trio.Subscription]
) -> None:
    # Room for a whole test's bursts: what is measured is the tree, not the buffer.
    async with node.subscribe(topic, capacity=100_000, max_bytes=64 * 2**20) as subscription:
        task_status.started(subscription)
        await trio.sleep_forever()


def _closer_identity(nodes: list[iris_trio.Node]) -> NodeIdentity:
    """An identity whose node would be the topic's root among ``nodes``."""
    best = min(ring_distance(node.driver.id, TREE) for node in nodes)
    while True:
        identity = NodeIdentity.generate()
        if ring_distance(from_bytes(identity.node_id), TREE) < best:
            return identity


async def _publish_steadily(
    node: iris_trio.Node, sent: list[bytes], stop: trio.Event, interval: float = 0.005
) -> None:
    while not stop.is_set():
        event = b"e%06d" % len(sent)
        sent.append(event)
        await node.publish(TOPIC, event)
        await trio.sleep(interval)


async def test_a_root_that_moves_to_a_joining_node_loses_no_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(4) as cluster, trio.open_nursery() as tasks:
        base = list(cluster)
        subscribers = base[1:]
        inboxes = [Inbox() for _ in subscribers]
        subscriptions = []
        for node, inbox in zip(subscribers, inboxes, strict=True):
            subscription = await tasks.start(_subscribe, node, TOPIC)
            subscriptions.append(subscription)
            tasks.start_soon(inbox.drain, subscription)
        await wait_tree(base, "topic", TOPIC, {n.driver.id for n in subscribers})
        sent: list[bytes] = []
        stop = trio.Event()
        tasks.start_soon(_publish_steadily, base[0], sent, stop)
        for _ in range(10):  # the root moves to a new node, then back when it leaves
            newcomer = await cluster.add(identity=_closer_identity(base))
            await trio.sleep(1.5)
            await cluster.stop(newcomer)
            await trio.sleep(1.5)
        stop.set()
        await trio.sleep(2)
        for inbox, subscription in zip(inboxes, subscriptions, strict=True):
            assert inbox.items == sent, (
                f"{len(set(sent) - set(inbox.items))} of {len(sent)} events lost"
            )
            assert subscription.statistics().missed == 0
        tasks.cancel_scope.cancel()


async def test_events_lost_behind_a_partition_are_counted_as_missed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(5) as cluster, trio.open_nursery() as tasks:
        publisher, cut_off = cluster[0], cluster[4]
        subscription = await tasks.start(_subscribe, cut_off, TOPIC)
        inbox = Inbox()
        tasks.start_soon(inbox.drain, subscription)
        await wait_tree(list(cluster), "topic", TOPIC, {cut_off.driver.id})
        sent: list[bytes] = []
        stop = trio.Event()
        tasks.start_soon(_publish_steadily, publisher, sent, stop, 0.01)
        await inbox.wait_for(50)
        cluster.memory.kill(cut_off.address)  # 6 s cut off from everyone
        await trio.sleep(6)
        cluster.memory.revive(cut_off.address)
        await wait_until(
            list(cluster),
            lambda: len(inbox.items) > 0 and inbox.items[-1] == sent[-1] and len(sent) > 900,
            what="the subscriber to be back",
        )
        stop.set()
        await trio.sleep(1)
        statistics = subscription.statistics()
        lost = len(sent) - len(inbox.items)
        assert lost > 300  # the outage's events
        assert statistics.missed == lost  # every one of them counted
        assert cut_off.statistics().events_missed == lost
        assert inbox.items == sorted(inbox.items)  # in order, no duplicates
        assert len(set(inbox.items)) == len(inbox.items)
        tasks.cancel_scope.cancel()


async def test_one_forged_sequence_number_does_not_silence_the_real_publisher(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(5) as cluster, trio.open_nursery() as tasks:
        publisher, forger, subscriber = cluster[0], cluster[1], cluster[4]
        subscription = await tasks.start(_subscribe, subscriber, TOPIC)
        inbox = Inbox()
        tasks.start_soon(inbox.drain, subscription)
        await wait_tree(list(cluster), "topic", TOPIC, {subscriber.driver.id})
        await publisher.publish(TOPIC, b"first")
        await inbox.wait_for(1)
        # A key holder sends one event in the publisher's name, with its epoch
        # and a sequence number far ahead.
        trees = forger.driver.trees
        assert trees is not None
        real = publisher.driver.trees
        assert real is not None
        forged = TreePublish(
            to_bytes(TREE), to_bytes(publisher.driver.id), real.epoch, 1_000_000, (b"forged",)
        )
        trees.overlay.route(trio.current_time(), TREE, FrameCodec().encode(forged))
        forger.driver._flush()
        await inbox.wait_for(2)
        for number in range(50):
            await publisher.publish(TOPIC, b"real %d" % number)
        await inbox.wait_for(52)
        assert inbox.items == [b"first", b"forged", *(b"real %d" % n for n in range(50))]
        assert subscription.statistics().missed == 0
        tasks.cancel_scope.cancel()


async def test_publishers_go_at_the_pace_of_the_slowest_branch_that_keeps_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A subscriber's node behind a slow path (2 MB/s): the node that sends it
    the events would queue more than its link holds and drop; instead the
    publisher is asked to pause, and every subscriber gets every event."""
    async with open_cluster(6) as cluster, trio.open_nursery() as tasks:
        publisher, slow = cluster[0], cluster[5]
        subscribers = list(cluster[2:])
        inboxes = [Inbox() for _ in subscribers]
        for node, inbox in zip(subscribers, inboxes, strict=True):
            subscription = await tasks.start(_subscribe, node, TOPIC)
            tasks.start_soon(inbox.drain, subscription)
        await wait_tree(list(cluster), "topic", TOPIC, {n.driver.id for n in subscribers})
        cluster.memory.throttle(slow.address, 2_000_000)
        event = b"x" * 1000
        count = 40_000  # 40 MB: more than two link queues hold
        for number in range(count):
            await publisher.publish(TOPIC, b"%06d" % number + event)
        for inbox in inboxes:
            with trio.move_on_after(120):
                await inbox.wait_for(count, timeout=120)
            assert len(inbox.items) == count, f"{count - len(inbox.items)} events lost"
        assert sum(node.statistics().frames_dropped for node in cluster) == 0
        for inbox in inboxes:
            assert [item[:6] for item in inbox.items] == [b"%06d" % n for n in range(count)]
        tasks.cancel_scope.cancel()


def _a_leaf_off_the_path(nodes: list[iris_trio.Node], publisher: iris_trio.Node) -> iris_trio.Node:
    """A subscriber with no children in the tree, neither its root nor on the
    route from ``publisher`` to the root: slowing it slows nobody else's way."""
    by_id = {node.driver.id: node for node in nodes}
    path, cursor = {publisher.driver.id}, publisher
    while (hop := cursor.driver.overlay.next_hop(TREE)) is not None:  # type: ignore[union-attr]
        path.add(hop)
        cursor = by_id[hop]
    for node in nodes:
        trees = node.driver.trees
        state = trees.trees.get(TREE) if trees is not None else None
        leaf = state is not None and state.member and not state.children and not state.root
        if leaf and node.driver.id not in path:
            return node
    raise AssertionError("no such subscriber in this tree")


async def test_a_branch_that_does_not_keep_up_loses_its_own_events_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A subscriber's node behind a hopelessly slow path (50 kB/s): the publisher
    pauses for it a while, then goes on without it; the others get everything."""
    async with open_cluster(6) as cluster, trio.open_nursery() as tasks:
        publisher = cluster[0]
        subscribers = list(cluster[2:])
        inboxes = {node: Inbox() for node in subscribers}
        for node, inbox in inboxes.items():
            subscription = await tasks.start(_subscribe, node, TOPIC)
            tasks.start_soon(inbox.drain, subscription)
        await wait_tree(list(cluster), "topic", TOPIC, {n.driver.id for n in subscribers})
        slow = _a_leaf_off_the_path(list(cluster), publisher)
        cluster.memory.throttle(slow.address, 50_000)
        count = 40_000
        begun = trio.current_time()
        for number in range(count):
            await publisher.publish(TOPIC, b"%06d" % number + b"x" * 1000)
        assert trio.current_time() - begun < 60  # not at the slow branch's pace (800 s)
        for node, inbox in inboxes.items():
            if node is not slow:
                await inbox.wait_for(count, timeout=60)
                assert [item[:6] for item in inbox.items] == [b"%06d" % n for n in range(count)]
        assert sum(node.statistics().frames_dropped for node in cluster) > 0
        tasks.cancel_scope.cancel()
