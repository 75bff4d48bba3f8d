"""The Pastry routing table: row r holds nodes sharing r leading digits with us."""

from __future__ import annotations

from collections.abc import Iterator

from .ids import DIGIT_BITS, DIGITS, ID_BITS, digit, shared_prefix

__all__ = ["RoutingTable"]


class RoutingTable:
    """32 rows of 16 columns; the entry at (row, column) shares ``row`` digits
    with the owner and has ``column`` as its next digit."""

    __slots__ = ("_entries", "owner", "rows")

    def __init__(self, owner: int) -> None:
        self.owner = owner
        self.rows: list[list[int | None]] = [[None] * 16 for _ in range(DIGITS)]
        self._entries: set[int] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[int]:
        return iter(self._entries)

    def __contains__(self, node: object) -> bool:
        return node in self._entries

    def slot(self, node: int) -> tuple[int, int]:
        """The (row, column) where ``node`` belongs."""
        row = shared_prefix(self.owner, node)
        return row, digit(node, row)

    def _central(self, node: int, row: int) -> bool:
        """True if ``node`` lies in the middle half of its slot's id range."""
        width = ID_BITS - DIGIT_BITS * (row + 1)
        offset = node & ((1 << width) - 1)  # position within the slot's range
        return (1 << width) // 4 <= offset < 3 * ((1 << width) // 4)

    def _preference(self, node: int) -> int:
        """A per-owner pseudo-random rank (lower is preferred)."""
        return ((node ^ self.owner) * 0x9E3779B97F4A7C15) % (1 << 64)

    def would_admit(self, node: int) -> bool:
        """True if ``node`` belongs in its slot better than the current entry.

        Entries from the middle half of a slot's id range are preferred: their
        leaf sets cover most of that range, which saves a hop. Among those, each
        owner prefers by its own pseudo-random rank, so that load spreads over
        all central nodes instead of every node using the same few entries.
        """
        if node == self.owner:
            return False
        row, column = self.slot(node)
        current = self.rows[row][column]
        if current is None:
            return True
        if current == node:
            return False
        return self.prefers(node, current)

    def is_vacant(self, node: int) -> bool:
        """True if the slot ``node`` belongs in is empty."""
        if node == self.owner:
            return False
        row, column = self.slot(node)
        return self.rows[row][column] is None

    def prefers(self, node: int, other: int) -> bool:
        """True if ``node`` is a better entry than ``other`` for their common slot."""
        row = shared_prefix(self.owner, node)
        node_central, other_central = self._central(node, row), self._central(other, row)
        if node_central != other_central:
            return node_central
        return self._preference(node) < self._preference(other)

    def add(self, node: int) -> bool:
        """Put ``node`` in its slot if :meth:`would_admit` (replacing a worse
        entry); return True if added."""
        if not self.would_admit(node):
            return False
        row, column = self.slot(node)
        replaced = self.rows[row][column]
        if replaced is not None:
            self._entries.discard(replaced)
        self.rows[row][column] = node
        self._entries.add(node)
        return True

    def remove(self, node: int) -> bool:
        """Remove ``node``; return True if it was an entry."""
        if node not in self:
            return False
        row, column = self.slot(node)
        self.rows[row][column] = None
        self._entries.discard(node)
        return True

    def lookup(self, key: int) -> int | None:
        """The entry sharing one more digit with ``key`` than we do, if any."""
        row = shared_prefix(self.owner, key)
        if row >= DIGITS:
            return None
        return self.rows[row][digit(key, row)]

    def filled_rows(self) -> int:
        """Number of rows with at least one entry."""
        return sum(1 for row in self.rows if any(entry is not None for entry in row))
