"""Embedded subscriptions and broadcast receivers are bounded in bytes: each by
its ``max_bytes=`` (default 16 MiB), all of a node together by its
``subscription_bytes=`` (default 256 MiB). Beyond, the oldest event goes and is
counted; a subscriber that reads loses nothing; closing releases the bytes.

On trio's virtual clock over the in-memory transport (open_cluster), except the
last test, which uses the relay over loopback TCP.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import iris_trio
from iris_trio.errors import ConfigError
from iris_trio.patterns.limits import DEFAULT_SUBSCRIPTION_BUDGET, DEFAULT_SUBSCRIPTION_BYTES
from iris_trio.testing import MemoryNetwork, open_cluster

from .helpers_cluster import Inbox, private_network, wait_tree, wait_until
from .relay_helpers import relay_node

KIB = 1024
MIB = 1024 * KIB


def event(sequence: int, size: int) -> bytes:
    """An event of ``size`` bytes that starts with its sequence number."""
    head = b"%06d:" % sequence
    return head + bytes(size - len(head))


async def test_a_subscriber_that_never_reads_holds_at_most_max_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    size, count = 256 * KIB, 40  # 10 MiB published
    async with open_cluster(3) as group:
        slow_node, publisher, fast_node = group
        reader = Inbox()
        async with (
            slow_node.subscribe("big", max_bytes=1 * MIB) as slow,
            fast_node.subscribe("big") as fast,
            trio.open_nursery() as readers,
        ):
            readers.start_soon(reader.drain, fast)
            await wait_tree(group, "topic", "big", {slow_node.driver.id, fast_node.driver.id})
            for sequence in range(count):
                await publisher.publish("big", event(sequence, size))
            await reader.wait_for(count)
            await wait_until(
                group,
                lambda: slow.statistics().delivered == count,
                what="every event handed to the slow subscriber",
            )
            # The reader lost nothing, in order.
            assert reader.items == [event(i, size) for i in range(count)]
            assert fast.statistics().dropped == 0
            # The subscriber that never reads holds 1 MiB: the newest 4 events.
            stats = slow.statistics()
            assert stats.buffered_bytes <= 1 * MIB
            assert (stats.buffered, stats.buffered_bytes, stats.dropped) == (4, 1 * MIB, 36)
            assert slow_node.statistics().events_dropped == 36
            assert slow_node.subscription_budget.used == 1 * MIB
            assert [slow.receive_nowait() for _ in range(4)] == [
                event(i, size) for i in range(36, 40)
            ]
            for _ in range(3):  # it holds 3 again
                await publisher.publish("big", event(99, size))
            await wait_until(
                group,
                lambda: slow_node.subscription_budget.used == 3 * size,
                what="three more events buffered",
            )
            readers.cancel_scope.cancel()
        # Closing releases its bytes from the node's budget.
        assert slow_node.subscription_budget.used == 0
        assert fast_node.subscription_budget.used == 0


async def test_the_node_budget_bounds_its_subscriptions_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    size, count = 64 * KIB, 48  # 3 MiB published to each of two topics
    async with open_cluster(2, subscription_bytes=1 * MIB) as group:
        node, publisher = group
        assert node.subscription_budget.max_bytes == 1 * MIB
        reader = Inbox()
        async with (
            node.subscribe("a") as never_read_a,
            node.subscribe("b") as never_read_b,
            node.subscribe("a") as read,
            trio.open_nursery() as readers,
        ):
            readers.start_soon(reader.drain, read)
            for sequence in range(count):
                await publisher.publish("a", event(sequence, size))
                await publisher.publish("b", event(sequence, size))
            await reader.wait_for(count)
            await wait_until(
                group,
                lambda: never_read_b.statistics().delivered == count,
                what="every event handed to the subscribers",
            )
            # Each subscription alone is far below its 16 MiB, yet together
            # they hold at most the node's 1 MiB; the reader lost nothing.
            assert reader.items == [event(i, size) for i in range(count)]
            assert read.statistics().dropped == 0
            assert node.subscription_budget.used <= 1 * MIB
            held = [never_read_a.statistics(), never_read_b.statistics()]
            assert sum(s.buffered_bytes for s in held) <= 1 * MIB
            for stats in held:
                assert stats.dropped > 0
                assert stats.delivered == stats.dropped + stats.buffered == count
            assert never_read_a.receive_nowait().startswith(b"%06d:" % (count - held[0].buffered))
            readers.cancel_scope.cancel()
        assert node.subscription_budget.used == 0


async def test_a_broadcast_receiver_is_bounded_in_bytes_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    size = 128 * KIB
    async with open_cluster(2) as group:
        member, sender = group
        async with member.broadcasts("crew", max_bytes=512 * KIB) as receiver:
            await wait_tree(group, "cluster", "crew", {member.driver.id})
            for sequence in range(20):
                await sender.broadcast("crew", event(sequence, size))
            await wait_until(
                group,
                lambda: receiver.statistics().delivered == 20,
                what="every broadcast handed to the receiver",
            )
            stats = receiver.statistics()
            assert (stats.buffered, stats.buffered_bytes, stats.dropped) == (4, 512 * KIB, 16)
            assert member.subscription_budget.used == 512 * KIB
            assert receiver.receive_nowait() == event(16, size)
        assert member.subscription_budget.used == 0


async def test_one_event_larger_than_max_bytes_is_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(2) as group:
        node, publisher = group
        async with node.subscribe("huge", max_bytes=1) as events:
            await wait_tree(group, "topic", "huge", {node.driver.id})
            await publisher.publish("huge", event(1, 1 * MIB))
            await publisher.publish("huge", event(2, 1 * MIB))
            await wait_until(
                group, lambda: events.statistics().delivered == 2, what="both events handed over"
            )
            assert (events.statistics().buffered, events.statistics().dropped) == (1, 1)
            assert await events.receive() == event(2, 1 * MIB)


async def test_the_defaults_and_bad_sizes(autojump_clock: trio.testing.MockClock) -> None:
    assert (DEFAULT_SUBSCRIPTION_BYTES, DEFAULT_SUBSCRIPTION_BUDGET) == (16 * MIB, 256 * MIB)
    async with open_cluster(1) as group:
        node = group[0]
        assert node.subscription_budget.max_bytes == 256 * MIB
        for bad in (0, -1):
            with pytest.raises(ConfigError, match="max_bytes"):
                async with node.subscribe("t", max_bytes=bad):
                    pass  # pragma: no cover - refused
            with pytest.raises(ConfigError, match="max_bytes"):
                async with node.broadcasts("c", max_bytes=bad):
                    pass  # pragma: no cover - refused
        for wrong in ("1MiB", 1.5, True):
            with pytest.raises(TypeError, match="max_bytes"):
                async with node.subscribe("t", max_bytes=wrong):  # type: ignore[arg-type]
                    pass  # pragma: no cover - refused
        assert node.topics == () and node.subscription_budget.used == 0
    with pytest.raises(ConfigError, match="subscription_bytes"):
        async with iris_trio.join(
            network=private_network("bytes"),
            transport=MemoryNetwork(),
            discovery="off",
            subscription_bytes=0,
        ):
            pass  # pragma: no cover - refused


async def test_relay_subscriptions_count_against_the_relay_not_the_node() -> None:
    """A relay client's subscription is bounded by the relay's limits; it takes
    nothing from the node's budget for its own subscriptions."""
    async with (
        relay_node() as (node, relay),
        iris_trio.connect(relay.port) as client,
        client.subscribe("relayed") as events,
    ):
        # White box: the queues a budget bounds (no public accessor lists them).
        members = node.subscription_budget._members
        await node.publish("relayed", b"x" * 1000)
        assert await events.receive() == b"x" * 1000
        assert not members  # the relay's subscription is under the relay's budgets
        async with node.subscribe("relayed") as own:
            assert members == {own}
            await node.publish("relayed", b"y" * 1000)
            assert await own.receive() == b"y" * 1000
            assert await events.receive() == b"y" * 1000
        assert not members and node.subscription_budget.used == 0
