"""Byte bounds of the bounded queue: per queue, and shared budgets across queues."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from iris_trio.patterns.queue import BoundedQueue, ByteBudget, Overflow


def queue(capacity: int = 1000) -> BoundedQueue[bytes]:
    return BoundedQueue(capacity, Overflow.DROP_OLDEST)


def test_a_queue_bounded_in_bytes_drops_its_oldest_and_counts() -> None:
    q = queue()
    q.limit_bytes(100, size=len)
    for i in range(10):
        q.push(bytes([i]) * 30)
    assert q.buffered_bytes == 90
    assert q.statistics().dropped == 7
    assert q.receive_nowait() == bytes([7]) * 30


def test_one_item_larger_than_the_bound_is_kept_alone() -> None:
    q = queue()
    q.limit_bytes(100, size=len)
    q.push(b"a" * 10)
    q.push(b"b" * 500)
    assert len(q) == 1 and q.buffered_bytes == 500


def test_a_full_budget_drops_from_its_fullest_queue_not_from_a_reader() -> None:
    node = ByteBudget(1000)
    hog, reader = queue(), queue()
    for q in (hog, reader):
        q.limit_bytes(800, size=len, budget=ByteBudget(800, parent=node))
    for _ in range(20):
        hog.push(b"h" * 100)  # never read
    for _ in range(50):
        reader.push(b"r" * 100)
        assert reader.receive_nowait() == b"r" * 100  # keeps up
    assert reader.statistics().dropped == 0
    assert hog.statistics().dropped > 0
    assert node.used <= 1000


def test_closing_a_queue_gives_its_bytes_back() -> None:
    node = ByteBudget(1000)
    q = queue()
    q.limit_bytes(None, size=len, budget=node)
    q.push(b"x" * 600)
    assert node.used == 600
    q.close_nowait()
    assert node.used == 0


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 300), st.booleans()),
        max_size=300,
    ),
    st.integers(0, 2**32),
)
def test_budgets_hold_under_any_sequence(steps: list[tuple[int, int, bool]], seed: int) -> None:
    """Whatever is pushed and received, every budget's count is the sum of its
    queues' bytes and stays within its bound (plus one item)."""
    rng = random.Random(seed)
    node = ByteBudget(1000)
    connections = [ByteBudget(600, parent=node) for _ in range(2)]
    queues = [queue(rng.randint(1, 20)) for _ in range(4)]
    for i, q in enumerate(queues):
        q.limit_bytes(400, size=len, budget=connections[i % 2])
    for index, size, receive in steps:
        q = queues[index]
        if receive and len(q):
            q.receive_nowait()
        else:
            q.push(b"x" * size)
        for c, budget in enumerate(connections):
            held = sum(x.buffered_bytes for i, x in enumerate(queues) if i % 2 == c)
            assert budget.used == held
            assert held <= budget.max_bytes + 300
        assert node.used == sum(x.buffered_bytes for x in queues) <= node.max_bytes + 300
