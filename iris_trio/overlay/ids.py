"""128-bit overlay ids: digits, prefixes and distances on the ring.

Ids are handled as Python ints inside the overlay (fast arithmetic) and as 16
big-endian bytes on the wire. Digits are 4 bits, most significant first, so an
id has 32 digits and the routing table 32 rows of 16 columns.
"""

from __future__ import annotations

import functools
from typing import Final

from nacl.encoding import RawEncoder
from nacl.hash import blake2b

__all__ = [
    "DIGITS",
    "DIGIT_BITS",
    "ID_BITS",
    "RING",
    "clockwise",
    "digit",
    "from_bytes",
    "name_id",
    "ring_distance",
    "shared_prefix",
    "short",
    "to_bytes",
]

ID_BITS: Final = 128
DIGIT_BITS: Final = 4
DIGITS: Final = ID_BITS // DIGIT_BITS
RING: Final = 1 << ID_BITS
_MASK: Final = (1 << DIGIT_BITS) - 1


def from_bytes(raw: bytes) -> int:
    """The id of 16 big-endian bytes."""
    if len(raw) != ID_BITS // 8:
        raise ValueError("an overlay id is 16 bytes")
    return int.from_bytes(raw, "big")


def to_bytes(node: int) -> bytes:
    """The 16 big-endian bytes of an id."""
    return node.to_bytes(ID_BITS // 8, "big")


def digit(node: int, row: int) -> int:
    """Digit ``row`` of ``node`` (0 is the most significant)."""
    return (node >> (ID_BITS - DIGIT_BITS * (row + 1))) & _MASK


def shared_prefix(a: int, b: int) -> int:
    """How many leading digits ``a`` and ``b`` share (32 when equal)."""
    difference = a ^ b
    if difference == 0:
        return DIGITS
    return (ID_BITS - difference.bit_length()) // DIGIT_BITS


def clockwise(a: int, b: int) -> int:
    """Distance from ``a`` to ``b`` going clockwise (increasing ids, wrapping)."""
    return (b - a) % RING


def ring_distance(a: int, b: int) -> int:
    """Shortest distance between ``a`` and ``b`` on the ring."""
    forward = (b - a) % RING
    return min(forward, RING - forward)


@functools.lru_cache(maxsize=4096)
def name_id(namespace: str, name: str) -> int:
    """The id of a cluster or topic name: BLAKE2b-128 of namespace, NUL, name."""
    data = namespace.encode("utf-8") + b"\x00" + name.encode("utf-8")
    return from_bytes(blake2b(data, digest_size=16, encoder=RawEncoder))


def short(node: int) -> str:
    """A short hex form of an id for logs."""
    return f"{node >> (ID_BITS - 32):08x}"
