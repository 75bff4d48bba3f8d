"""A slow, obviously-correct frame decoder built on cbor2: the oracle for the
compiled decoders (differential tests)."""

from __future__ import annotations

from typing import Any

import cbor2

from iris_trio.errors import ProtocolError
from iris_trio.wire.frames import WIRE_VERSION, Frame, registered_kinds


def _no_tags(*_: object) -> Any:
    raise ProtocolError("tag")


_TAGS = dict.fromkeys(range(0, 300), _no_tags) | {55799: _no_tags, 1004: _no_tags}


def reference_decode(data: bytes) -> Frame:
    """Decode like the codec should: strict CBOR, exact schema, canonical bytes only."""
    try:
        items = cbor2.loads(
            data, allow_indefinite=False, semantic_decoders=_TAGS, tag_hook=_no_tags, max_depth=8
        )
    except Exception as exc:
        raise ProtocolError(str(exc)) from None
    if type(items) is not list or len(items) < 2:
        raise ProtocolError("not an array")
    version, kind = items[0], items[1]
    if type(version) is not int or version != WIRE_VERSION or type(kind) is not int:
        raise ProtocolError("version/kind")
    cls = registered_kinds().get(kind)
    if cls is None or len(items) != len(cls.SCHEMA) + 2:
        raise ProtocolError("kind/count")
    values = [field.check(value) for field, value in zip(cls.SCHEMA, items[2:], strict=True)]
    # Canonical: cbor2's encoder writes the shortest form; the input must equal it.
    if cbor2.dumps(items) != data:
        raise ProtocolError("non-canonical or trailing bytes")
    return cls(*values)
