"""Compiles one encoder and one decoder per frame kind.

Frames are on every hot path, so instead of interpreting the schema per frame
the codec runs straight-line functions generated from it (the technique
``dataclasses`` and ``namedtuple`` use). Each field type contributes snippets
(see :class:`~iris_trio.wire.fields.Field`). Tests check the encoders against
``cbor2.dumps`` byte for byte, and the decoders against a strict cbor2-based
reference decoder on arbitrary input.
"""

from __future__ import annotations

import dataclasses
import struct
import types
from collections.abc import Callable
from typing import Any

import cbor2

from ..errors import MessageTooLargeError, ProtocolError
from .fields import Field, read_head

__all__ = ["Encoder", "compile_decoder", "compile_encoder", "head"]


def _too_large(frame: object, size: int, limit: int) -> MessageTooLargeError:
    return MessageTooLargeError(f"{type(frame).__name__} frame of {size} bytes exceeds {limit}")


_HEAD16 = struct.Struct(">BH").pack


def head(major: int, argument: int) -> bytes:
    """The canonical CBOR head of ``major`` type carrying ``argument``."""
    top = major << 5
    if argument < 24:
        return bytes([top | argument])
    if argument < 1 << 8:
        return bytes([top | 24, argument])
    if argument < 1 << 16:
        return _HEAD16(top | 25, argument)
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
        "_read_head": read_head,
        "_SMALL_UINTS": _SMALL_UINTS,
        "_SMALL_HEADS": _SMALL_HEADS,
    }
    for index, field in enumerate(schema):
        namespace[f"f{index}"] = field
    return namespace


def _compile(source: list[str], namespace: dict[str, Any], name: str) -> Any:
    exec("\n".join(source), namespace)  # source built from our own schema only
    return namespace[name]


Encoder = Callable[[Any, int, bool], bytes]


def compile_encoder(
    cls: type, version: int, kind: int, names: tuple[str, ...], schema: tuple[Field, ...]
) -> Encoder:
    """A function ``encode(frame, limit, framed)`` returning the encoded frame.

    With ``framed`` the 4-byte length prefix comes first. An invalid field value
    raises ProtocolError (the codec turns it into ValueError); a frame over
    ``limit`` bytes raises MessageTooLargeError.
    """
    header = head(4, len(names) + 2) + head(0, version) + head(0, kind)
    lines = ["def encode(frame, limit, framed):", f"    parts = [b'', {header!r}]"]
    for index, name in enumerate(names):
        lines += [f"    v = frame.{name}", f"    f = f{index}"]
        lines += [f"    {line}" for line in schema[index].encode_source()]
    lines += [
        "    size = sum(map(len, parts))",
        "    if size > limit: raise _too_large(frame, size, limit)",
        "    if framed: parts[0] = _U32(size)",
        "    return b''.join(parts)",
    ]
    namespace = _namespace(schema)
    namespace["_too_large"] = _too_large
    namespace["_U32"] = struct.Struct(">I").pack
    encoder: Encoder = _compile(lines, namespace, "encode")
    encoder.__qualname__ = f"{cls.__name__}.encode"
    return encoder


def _slot_setters(cls: type) -> list[Callable[[Any, Any], None]] | None:
    """The slot descriptors' setters of a slotted dataclass, field by field, or
    None when instances must be made by calling the class (no slots, an
    ``__init__`` or ``__new__`` of its own, or a ``__post_init__`` to run)."""
    if (
        not dataclasses.is_dataclass(cls)
        or hasattr(cls, "__post_init__")
        or not cls.__dataclass_params__.init  # type: ignore[attr-defined]  # an __init__ of its own
        or cls.__new__ is not object.__new__
    ):
        return None
    setters = []
    for field in dataclasses.fields(cls):
        slot = cls.__dict__.get(field.name)
        if not isinstance(slot, types.MemberDescriptorType):
            return None
        setters.append(slot.__set__)
    return setters


def compile_decoder(cls: type, schema: tuple[Field, ...]) -> Callable[[Any, int], Any]:
    """A function ``decode(data, p)`` parsing the fields from ``p`` to the end.

    The caller has checked the array head, version and kind, and catches
    IndexError (a truncated frame). Trailing bytes raise ProtocolError.
    """
    lines = ["def decode(data, p):"]
    for index, field in enumerate(schema):
        lines.append(f"    f = f{index}")
        lines += [f"    {line}" for line in field.parse_source()]
        lines.append(f"    a{index} = v")
    lines += [
        "    if p != len(data):",
        "        raise ProtocolError('trailing bytes after the frame')",
    ]
    namespace = _namespace(schema)
    namespace["cls"] = cls
    setters = _slot_setters(cls)
    if setters is None:
        lines.append(f"    return cls({', '.join(f'a{i}' for i in range(len(schema)))})")
    else:
        # The fields were checked just now: fill the slots without the frozen
        # dataclass __init__ (an object.__setattr__ per field, the dearer part
        # of decoding a small frame).
        lines.append("    o = _new(cls)")
        lines += [f"    _set{index}(o, a{index})" for index in range(len(schema))]
        lines.append("    return o")
        namespace["_new"] = object.__new__
        for index, setter in enumerate(setters):
            namespace[f"_set{index}"] = setter
    decoder: Callable[[Any, int], Any] = _compile(lines, namespace, "decode")
    decoder.__qualname__ = f"{cls.__name__}.decode"
    return decoder
