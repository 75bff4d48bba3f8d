"""Field types of the frame schema: validation, parsing and encoding.

A frame is a canonical CBOR array, and its fields use a small subset of CBOR:
unsigned integers, byte strings, text strings, booleans, null and arrays.
Each field type knows how to

* ``check`` a Python value before it is encoded (local misuse raises early),
* ``parse`` its canonical encoding from a buffer, strictly: any other major
  type, a non-shortest head, an indefinite length, a value out of range or a
  size over the bound raises :class:`ProtocolError`,
* and offer source snippets from which ``_codegen`` compiles straight-line
  encoders and decoders per frame kind (fields without an inline form fall back
  to ``check``/``parse`` and cbor2).

Python's ``bool`` is an ``int``; the checks use ``type(x) is int`` on purpose.
"""

from __future__ import annotations

from typing import Any, Final

from ..errors import ProtocolError

__all__ = [
    "Blob",
    "Boolean",
    "Field",
    "Optional",
    "Record",
    "Sequence",
    "Text",
    "UInt",
    "read_head",
]

Buffer = bytes | bytearray | memoryview

_MINIMUM: Final = {24: 24, 25: 1 << 8, 26: 1 << 16, 27: 1 << 32}
_WIDTH: Final = {24: 1, 25: 2, 26: 4, 27: 8}
_MAJOR_NAMES: Final = ("uint", "negint", "bytes", "text", "array", "map", "tag", "simple/float")


def read_head(data: Buffer, position: int, major: int) -> tuple[int, int]:
    """Parse a canonical CBOR head of ``major`` type at ``position``.

    Returns ``(argument, position after the head)``.

    Raises:
        ProtocolError: another major type, an indefinite or reserved length, a
            head longer than needed, or a truncated buffer.
    """
    initial = data[position]
    if initial >> 5 != major:
        raise ProtocolError(
            f"expected {_MAJOR_NAMES[major]}, got CBOR {_MAJOR_NAMES[initial >> 5]}"
        )
    info = initial & 31
    if info < 24:
        return info, position + 1
    width = _WIDTH.get(info)
    if width is None:
        raise ProtocolError("indefinite or reserved CBOR length")
    end = position + 1 + width
    if end > len(data):
        raise ProtocolError("truncated CBOR head")
    argument = int.from_bytes(data[position + 1 : end], "big")
    if argument < _MINIMUM[info]:
        raise ProtocolError("non-canonical CBOR head")
    return argument, end


def _fast_head(major: int, name: str) -> list[str]:
    """Inline form of :func:`read_head` into ``name``: heads of up to 3 bytes inline."""
    return [
        "b = data[p]",
        f"if b < {major << 5 | 24} and b >= {major << 5}:",
        f"    {name} = b - {major << 5}",
        "    p += 1",
        f"elif b == {major << 5 | 24}:",
        f"    {name} = data[p + 1]",
        "    p += 2",
        f"    if {name} < 24: raise ProtocolError('non-canonical CBOR head')",
        f"elif b == {major << 5 | 25}:",
        f"    {name} = data[p + 1] << 8 | data[p + 2]",
        "    p += 3",
        f"    if {name} < 256: raise ProtocolError('non-canonical CBOR head')",
        "else:",
        f"    {name}, p = _read_head(data, p, {major})",
    ]


class Field:
    """Base of the field types."""

    __slots__ = ()
    description = "value"

    def check(self, value: object) -> Any:
        """Validate a value for encoding; return it normalised or raise ProtocolError."""
        raise NotImplementedError

    def parse(self, data: Buffer, position: int) -> tuple[Any, int]:
        """Parse one value at ``position``; return it and the next position."""
        raise NotImplementedError

    def reject(self, value: object) -> ProtocolError:
        """The error for a value that is not a valid ``description``."""
        return ProtocolError(f"expected {self.description}, got {type(value).__name__}")

    def bad_size(self, size: int) -> ProtocolError:
        """The error for a value of the right type but a size out of bounds."""
        return ProtocolError(f"expected {self.description}, got size {size}")

    # Snippets for ``_codegen``: ``v`` is the value, ``f`` this field, ``data``
    # and ``p`` the input and position, ``parts`` the output list.

    def parse_source(self) -> list[str]:
        """Statements that parse ``v`` at ``p`` from ``data`` and advance ``p``."""
        return ["v, p = f.parse(data, p)"]

    def encode_source(self) -> list[str]:
        """Statements that validate ``v`` and append its canonical encoding to ``parts``."""
        return ["v = f.check(v)", "parts.append(_dumps(v))"]


class UInt(Field):
    """An unsigned integer below ``2**bits``."""

    __slots__ = ("bound", "description")

    def __init__(self, bits: int = 64) -> None:
        self.bound = 1 << bits
        self.description = f"uint{bits}"

    def check(self, value: object) -> int:
        if type(value) is not int or not 0 <= value < self.bound:
            raise self.reject(value)
        return value

    def parse(self, data: Buffer, position: int) -> tuple[int, int]:
        value, position = read_head(data, position, 0)
        if value >= self.bound:
            raise ProtocolError(f"{value} does not fit {self.description}")
        return value, position

    def parse_source(self) -> list[str]:
        return [*_fast_head(0, "v"), f"if v >= {self.bound}: raise f.bad_size(v)"]

    def encode_source(self) -> list[str]:
        return [
            f"if type(v) is not int or v < 0 or v >= {self.bound}: raise f.reject(v)",
            "parts.append(_SMALL_UINTS[v] if v < 256 else _head(0, v))",
        ]


class Boolean(Field):
    """A CBOR true or false."""

    __slots__ = ()
    description = "bool"

    def check(self, value: object) -> bool:
        if type(value) is not bool:
            raise self.reject(value)
        return value

    def parse(self, data: Buffer, position: int) -> tuple[bool, int]:
        initial = data[position]
        if initial == 0xF5:
            return True, position + 1
        if initial == 0xF4:
            return False, position + 1
        raise ProtocolError(f"expected bool, got CBOR initial byte {initial:#04x}")

    def encode_source(self) -> list[str]:
        return ["v = f.check(v)", "parts.append(b'\\xf5' if v else b'\\xf4')"]


class Blob(Field):
    """A byte string of at most ``max_size`` bytes (or exactly ``exact`` bytes)."""

    __slots__ = ("description", "exact", "max_size")

    def __init__(self, max_size: int | None = None, *, exact: int | None = None) -> None:
        self.max_size = exact if exact is not None else max_size
        self.exact = exact
        self.description = f"bytes[{exact}]" if exact is not None else f"bytes<={max_size}"

    def _size_ok(self, size: int) -> bool:
        if self.exact is not None:
            return size == self.exact
        return self.max_size is None or size <= self.max_size

    def check(self, value: object) -> bytes:
        if type(value) is not bytes:
            raise self.reject(value)
        if not self._size_ok(len(value)):
            raise self.bad_size(len(value))
        return value

    def parse(self, data: Buffer, position: int) -> tuple[bytes, int]:
        size, position = read_head(data, position, 2)
        if not self._size_ok(size):
            raise self.bad_size(size)
        end = position + size
        if end > len(data):
            raise ProtocolError("truncated byte string")
        return bytes(data[position:end]), end

    def _size_source(self) -> list[str]:
        if self.exact is not None:
            return [f"if n != {self.exact}: raise f.bad_size(n)"]
        if self.max_size is not None:
            return [f"if n > {self.max_size}: raise f.bad_size(n)"]
        return []

    def parse_source(self) -> list[str]:
        return [
            *_fast_head(2, "n"),
            *self._size_source(),
            "end = p + n",
            "if end > len(data): raise ProtocolError('truncated byte string')",
            "v = bytes(data[p:end])",
            "p = end",
        ]

    def encode_source(self) -> list[str]:
        return [
            "if type(v) is not bytes: raise f.reject(v)",
            "n = len(v)",
            *self._size_source(),
            "parts.append(_SMALL_HEADS[2][n] if n < 256 else _head(2, n))",
            "parts.append(v)",
        ]


class Text(Field):
    """A UTF-8 text string of at most ``max_size`` encoded bytes."""

    __slots__ = ("description", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.description = f"text<={max_size}"

    def check(self, value: object) -> str:
        if type(value) is not str:
            raise self.reject(value)
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ProtocolError("text is not valid UTF-8") from None
        if size > self.max_size:
            raise self.bad_size(size)
        return value

    def parse(self, data: Buffer, position: int) -> tuple[str, int]:
        size, position = read_head(data, position, 3)
        if size > self.max_size:
            raise self.bad_size(size)
        end = position + size
        if end > len(data):
            raise ProtocolError("truncated text string")
        try:
            return str(data[position:end], "utf-8"), end
        except UnicodeDecodeError:
            raise ProtocolError("text is not valid UTF-8") from None

    def encode_source(self) -> list[str]:
        return [
            "v = f.check(v)",
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

    def check(self, value: object) -> Any:
        return None if value is None else self.inner.check(value)

    def parse(self, data: Buffer, position: int) -> tuple[Any, int]:
        if data[position] == 0xF6:
            return None, position + 1
        return self.inner.parse(data, position)


class Sequence(Field):
    """A CBOR array of at most ``max_items`` values of ``item``, as a tuple."""

    __slots__ = ("description", "item", "max_items")

    def __init__(self, item: Field, max_items: int) -> None:
        self.item = item
        self.max_items = max_items
        self.description = f"array<={max_items} of {item.description}"

    def check(self, value: object) -> tuple[Any, ...]:
        if type(value) is not list and type(value) is not tuple:
            raise self.reject(value)
        if len(value) > self.max_items:
            raise self.bad_size(len(value))
        return tuple(self.item.check(element) for element in value)

    def parse(self, data: Buffer, position: int) -> tuple[tuple[Any, ...], int]:
        count, position = read_head(data, position, 4)
        if count > self.max_items:
            raise self.bad_size(count)
        parse = self.item.parse
        items = []
        for _ in range(count):
            element, position = parse(data, position)
            items.append(element)
        return tuple(items), position


class Record(Field):
    """A fixed-length CBOR array of the given field types, as a tuple."""

    __slots__ = ("description", "fields")

    def __init__(self, *fields: Field) -> None:
        self.fields = fields
        self.description = "[" + ", ".join(field.description for field in fields) + "]"

    def check(self, value: object) -> tuple[Any, ...]:
        if type(value) is not list and type(value) is not tuple:
            raise self.reject(value)
        if len(value) != len(self.fields):
            raise self.bad_size(len(value))
        return tuple(field.check(item) for field, item in zip(self.fields, value, strict=True))

    def parse(self, data: Buffer, position: int) -> tuple[tuple[Any, ...], int]:
        count, position = read_head(data, position, 4)
        if count != len(self.fields):
            raise self.bad_size(count)
        items = []
        for field in self.fields:
            item, position = field.parse(data, position)
            items.append(item)
        return tuple(items), position
