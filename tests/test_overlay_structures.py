"""Ids, the leaf set and the routing table, against brute force."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from iris_trio.overlay.ids import (
    DIGITS,
    RING,
    clockwise,
    digit,
    from_bytes,
    name_id,
    ring_distance,
    shared_prefix,
    to_bytes,
)
from iris_trio.overlay.leafset import LeafSet
from iris_trio.overlay.routing_table import RoutingTable

ids = st.integers(min_value=0, max_value=RING - 1)


@given(ids, ids)
def test_prefix_and_digits_agree(a: int, b: int) -> None:
    shared = shared_prefix(a, b)
    assert all(digit(a, i) == digit(b, i) for i in range(shared))
    if shared < DIGITS:
        assert digit(a, shared) != digit(b, shared)
    assert from_bytes(to_bytes(a)) == a


@given(ids, ids)
def test_distances_on_the_ring(a: int, b: int) -> None:
    assert clockwise(a, b) + clockwise(b, a) in (0, RING)
    assert ring_distance(a, b) == ring_distance(b, a) <= RING // 2


def test_names_map_to_ids_by_namespace() -> None:
    assert name_id("cluster", "echo") == name_id("cluster", "echo")
    assert name_id("cluster", "echo") != name_id("topic", "echo")


@given(st.lists(ids, min_size=0, max_size=60, unique=True), ids, st.integers(1, 8))
def test_leaf_set_keeps_the_nearest_on_each_side(others: list[int], owner: int, size: int) -> None:
    others = [o for o in others if o != owner]
    leaves = LeafSet(owner, size)
    for node in random.Random(len(others)).sample(others, len(others)):
        leaves.add(node)
    assert leaves.right == sorted(others, key=lambda n: clockwise(owner, n))[:size]
    assert leaves.left == sorted(others, key=lambda n: clockwise(n, owner))[:size]
    for node in others[: len(others) // 2]:
        leaves.remove(node)
    rest = others[len(others) // 2 :]
    # Removal alone cannot know farther nodes: the leaf set is the nearest of what is left.
    assert set(leaves) <= set(rest)


def test_leaf_set_covers_the_range_between_its_extremes() -> None:
    owner = RING // 2
    leaves = LeafSet(owner, 2)
    for offset in (-20, -10, 10, 20):
        leaves.add(owner + offset)
    assert leaves.covers(owner + 15) and leaves.covers(owner - 20)
    assert not leaves.covers(owner + 21) and not leaves.covers(owner - 21)
    assert LeafSet(owner, 2).covers(0)  # an incomplete leaf set covers the whole ring
    small = LeafSet(0, 4)  # 6 nodes on the ring: both sides overlap
    for node in range(1, 6):
        small.add(node * (RING // 6))
    assert all(small.covers(key) for key in range(0, RING, RING // 97))


@given(st.lists(ids, max_size=200, unique=True), ids)
def test_routing_table_entries_share_exactly_their_row(nodes: list[int], owner: int) -> None:
    table = RoutingTable(owner)
    for node in nodes:
        table.add(node)
    for row_index, row in enumerate(table.rows):
        for column, entry in enumerate(row):
            if entry is not None:
                assert shared_prefix(owner, entry) == row_index
                assert digit(entry, row_index) == column
    assert len(table) == sum(1 for _ in table)
    for key in nodes[:20]:
        entry = table.lookup(key)
        if entry is not None:
            assert shared_prefix(entry, key) > shared_prefix(owner, key)


def test_routing_table_prefers_central_entries() -> None:
    owner = 0
    table = RoutingTable(owner)
    slot_width = RING // 16
    edge = 5 * slot_width + 1  # column 5, at the very start of its range
    centre = 5 * slot_width + slot_width // 2
    assert table.add(edge)
    assert table.would_admit(centre) and table.add(centre)
    assert table.rows[0][5] == centre and edge not in table
    assert not table.would_admit(edge)
