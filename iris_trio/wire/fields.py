"""Field validators of the frame schema.

Each validator checks one decoded CBOR value for type, range and size and
returns it (normalised: CBOR arrays become tuples) together with the size of
its canonical CBOR encoding. The decoder adds those sizes up and rejects a
frame whose length differs, which rejects trailing bytes and non-canonical
(padded) encodings in one comparison: every frame has exactly one encoding.

Python's ``bool`` is an ``int``; the checks use ``type(x) is int`` on purpose.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ..errors import ProtocolError

__all__ = [
    "Blob",
    "Boolean",
    "Field",
    "Optional",
    "Sequence",
    "Text",
    "UInt",
    "head_size",
]

_U8: Final = 1 << 8
_U16: Final = 1 << 16
_U32: Final = 1 << 32


#: ``head_size`` as an inline expression over a variable name, for compiled codecs.
_INLINE_HEAD_SIZE: Final = (
    "(1 if {0} < 24 else 2 if {0} < 256 else 3 if {0} < 65536 else 5 if {0} < 4294967296 else 9)"
)


def head_size(argument: int) -> int:
    """Size of the shortest CBOR head carrying ``argument`` (a length or a uint)."""
    if argument < 24:
        return 1
    if argument < _U8:
        return 2
    if argument < _U16:
        return 3
    if argument < _U32:
        return 5
    return 9


class Field:
    """Base of the field validators."""

    __slots__ = ()
    description = "value"

    def check(self, value: object) -> tuple[Any, int]:
        """Return ``(value, canonical_size)`` or raise :class:`ProtocolError`."""
        raise NotImplementedError

    def reject(self, value: object) -> ProtocolError:
        """The error for a value that is not a valid ``description``."""
        shown = type(value).__name__
        return ProtocolError(f"expected {self.description}, got {shown}")

    def bad_size(self, size: int) -> ProtocolError:
        """The error for a value of the right type but a size out of bounds."""
        return ProtocolError(f"expected {self.description}, got {size} bytes")

    # The frame codec compiles one encoder and one decoder per frame kind from
    # these snippets (see ``_codegen``). In them, ``v`` is the value, ``f`` this
    # field, ``size`` the running canonical size and ``parts`` the output list.
    # The generic versions call :meth:`check` and cbor2; simple fields inline.

    def decode_source(self) -> list[str]:
        """Statements that validate ``v`` (rebinding it) and add its size to ``size``."""
        return ["v, n = f.check(v)", "size += n"]

    def encode_source(self) -> list[str]:
        """Statements that validate ``v`` and append its canonical encoding to ``parts``."""
        return ["f.check(v)", "parts.append(_dumps(v))"]


class UInt(Field):
    """An unsigned integer below ``2**bits``."""

    __slots__ = ("bound", "description")

    def __init__(self, bits: int = 64) -> None:
        self.bound = 1 << bits
        self.description = f"uint{bits}"

    def check(self, value: object) -> tuple[int, int]:
        if type(value) is not int or not 0 <= value < self.bound:
            raise self.reject(value)
        return value, head_size(value)

    def decode_source(self) -> list[str]:
        return [
            f"if type(v) is not int or v < 0 or v >= {self.bound}: raise f.reject(v)",
            f"size += {_INLINE_HEAD_SIZE.format('v')}",
        ]

    def encode_source(self) -> list[str]:
        return [
            f"if type(v) is not int or v < 0 or v >= {self.bound}: raise f.reject(v)",
            "parts.append(_SMALL_UINTS[v] if v < 256 else _head(0, v))",
        ]


class Boolean(Field):
    """A CBOR true or false."""

    __slots__ = ()
    description = "bool"

    def check(self, value: object) -> tuple[bool, int]:
        if type(value) is not bool:
            raise self.reject(value)
        return value, 1

    def decode_source(self) -> list[str]:
        return ["if type(v) is not bool: raise f.reject(v)", "size += 1"]

    def encode_source(self) -> list[str]:
        return ["if type(v) is not bool: raise f.reject(v)",
                'parts.append(b"\\xf5" if v else b"\\xf4")']


class Blob(Field):
    """A byte string of at most ``max_size`` bytes (or exactly ``exact`` bytes)."""

    __slots__ = ("description", "exact", "max_size")

    def __init__(self, max_size: int | None = None, *, exact: int | None = None) -> None:
        self.max_size = exact if exact is not None else max_size
        self.exact = exact
        self.description = f"bytes[{exact}]" if exact is not None else f"bytes<={max_size}"

    def check(self, value: object) -> tuple[bytes, int]:
        if type(value) is not bytes:
            raise self.reject(value)
        size = len(value)
        if self.exact is not None:
            if size != self.exact:
                raise ProtocolError(f"expected {self.description}, got {size} bytes")
        elif self.max_size is not None and size > self.max_size:
            raise ProtocolError(f"byte string of {size} exceeds {self.max_size}")
        return value, head_size(size) + size

    def _length_check(self) -> list[str]:
        if self.exact is not None:
            return [f"if n != {self.exact}: raise f.bad_size(n)"]
        if self.max_size is not None:
            return [f"if n > {self.max_size}: raise f.bad_size(n)"]
        return []

    def decode_source(self) -> list[str]:
        return [
            "if type(v) is not bytes: raise f.reject(v)",
            "n = len(v)",
            *self._length_check(),
            f"size += n + {_INLINE_HEAD_SIZE.format('n')}",
        ]

    def encode_source(self) -> list[str]:
        return [
            "if type(v) is not bytes: raise f.reject(v)",
            "n = len(v)",
            *self._length_check(),
            "parts.append(_SMALL_HEADS[2][n] if n < 256 else _head(2, n))",
            "parts.append(v)",
        ]


class Text(Field):
    """A UTF-8 text string of at most ``max_size`` encoded bytes."""

    __slots__ = ("description", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.description = f"text<={max_size}"

    def check(self, value: object) -> tuple[str, int]:
        if type(value) is not str:
            raise self.reject(value)
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ProtocolError("text is not valid UTF-8") from None
        if size > self.max_size:
            raise ProtocolError(f"text of {size} bytes exceeds {self.max_size}")
        return value, head_size(size) + size

    def decode_source(self) -> list[str]:
        # cbor2 decodes text strictly, so a decoded str always encodes back.
        return [
            "if type(v) is not str: raise f.reject(v)",
            "n = len(v) if v.isascii() else len(v.encode('utf-8'))",
            f"if n > {self.max_size}: raise f.bad_size(n)",
            f"size += n + {_INLINE_HEAD_SIZE.format('n')}",
        ]

    def encode_source(self) -> list[str]:
        return [
            "f.check(v)",
            "b = v.encode('utf-8')",
            "n = len(b)",
            "parts.append(_SMALL_HEADS[3][n] if n < 256 else _head(3, n))",
            "parts.append(b)",
        ]


class Optional(Field):
    """Either CBOR null or a value of ``inner``."""

    __slots__ = ("description", "inner")

    def __init__(self, inner: Field) -> None:
        self.inner = inner
        self.description = f"null or {inner.description}"

    def check(self, value: object) -> tuple[Any, int]:
        if value is None:
            return None, 1
        return self.inner.check(value)


class Sequence(Field):
    """A CBOR array of at most ``max_items`` values of ``item``, decoded as a tuple."""

    __slots__ = ("description", "item", "max_items")

    def __init__(self, item: Field, max_items: int) -> None:
        self.item = item
        self.max_items = max_items
        self.description = f"array<={max_items} of {item.description}"

    def check(self, value: object) -> tuple[tuple[Any, ...], int]:
        if type(value) is not list and type(value) is not tuple:
            raise self.reject(value)
        if len(value) > self.max_items:
            raise ProtocolError(f"array of {len(value)} items exceeds {self.max_items}")
        check: Callable[[object], tuple[Any, int]] = self.item.check
        total = head_size(len(value))
        items = []
        for element in value:
            checked, size = check(element)
            items.append(checked)
            total += size
        return tuple(items), total
