"""Compiles one encoder and one decoder per frame kind.

Frames are on every hot path, so instead of looping over validators the codec
runs straight-line functions generated from the schema (the technique
``dataclasses`` and ``namedtuple`` use). Each field contributes snippets (see
:class:`~iris_trio.wire.fields.Field`); fields without an inline form fall back
to their generic ``check`` and ``cbor2``. A test checks that the output is
byte-identical to ``cbor2.dumps`` for every kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cbor2

from ..errors import ProtocolError
from .fields import Field, head_size

__all__ = ["compile_decoder", "compile_encoder", "head"]


def head(major: int, argument: int) -> bytes:
    """The canonical CBOR head of ``major`` type carrying ``argument``."""
    top = major << 5
    if argument < 24:
        return bytes([top | argument])
    if argument < 1 << 8:
        return bytes([top | 24, argument])
    if argument < 1 << 16:
        return bytes([top | 25]) + argument.to_bytes(2, "big")
    if argument < 1 << 32:
        return bytes([top | 26]) + argument.to_bytes(4, "big")
    return bytes([top | 27]) + argument.to_bytes(8, "big")


_SMALL_UINTS = tuple(head(0, n) for n in range(256))
_SMALL_HEADS = {major: tuple(head(major, n) for n in range(256)) for major in (2, 3)}


def _namespace(schema: tuple[Field, ...]) -> dict[str, Any]:
    namespace: dict[str, Any] = {
        "ProtocolError": ProtocolError,
        "_dumps": cbor2.dumps,
        "_head": head,
        "_SMALL_UINTS": _SMALL_UINTS,
        "_SMALL_HEADS": _SMALL_HEADS,
    }
    for index, field in enumerate(schema):
        namespace[f"f{index}"] = field
    return namespace


def _indent(lines: list[str], index: int) -> list[str]:
    # Each field's snippet uses the names v and f; bind them per field.
    return [f"    {line}" for line in [f"f = f{index}", *lines]]


def compile_encoder(
    cls: type, version: int, kind: int, names: tuple[str, ...], schema: tuple[Field, ...]
) -> Callable[[Any], list[bytes]]:
    """A function returning the encoded parts of a frame; ``parts[0]`` is left empty
    for the caller's length prefix. Raises ProtocolError for an invalid value."""
    header = head(4, len(names) + 2) + head(0, version) + head(0, kind)
    lines = ["def encode(frame):", f"    parts = [b'', {header!r}]"]
    for index, name in enumerate(names):
        lines.append(f"    v = frame.{name}")
        lines.extend(_indent(schema[index].encode_source(), index))
    lines.append("    return parts")
    namespace = _namespace(schema)
    exec("\n".join(lines), namespace)  # noqa: S102 - source built from our own schema
    encoder: Callable[[Any], list[bytes]] = namespace["encode"]
    encoder.__qualname__ = f"{cls.__name__}.encode"
    return encoder


def compile_decoder(
    cls: type, version: int, kind: int, schema: tuple[Field, ...]
) -> Callable[[list[Any], int], Any]:
    """A function ``decode(items, encoded_size)`` building the frame from cbor2's list."""
    count = len(schema) + 2
    fixed = head_size(count) + head_size(version) + head_size(kind)
    lines = [
        "def decode(items, encoded_size):",
        f"    if len(items) != {count}:",
        f"        raise ProtocolError(f'{cls.__name__} takes {len(schema)} fields,"
        " got {len(items) - 2}')",
        f"    size = {fixed}",
    ]
    for index in range(len(schema)):
        lines.append(f"    v = items[{index + 2}]")
        lines.extend(_indent(schema[index].decode_source(), index))
        lines.append(f"    a{index} = v")
    lines += [
        "    if size != encoded_size:",
        "        raise ProtocolError('trailing bytes or non-canonical encoding')",
        f"    return cls({', '.join(f'a{i}' for i in range(len(schema)))})",
    ]
    namespace = _namespace(schema)
    namespace["cls"] = cls
    exec("\n".join(lines), namespace)  # noqa: S102 - source built from our own schema
    decoder: Callable[[list[Any], int], Any] = namespace["decode"]
    decoder.__qualname__ = f"{cls.__name__}.decode"
    return decoder
