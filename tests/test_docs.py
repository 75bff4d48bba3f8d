"""The documentation cannot drift from the code.

The site is built with ``sphinx-build -W`` by ``./test`` (a missing example
file, a ``literalinclude`` of a function that is gone, or a reference to a
renamed iris_trio name fails the build). These tests check what the build
cannot see:

- every public name is in the API reference, with an example, and (if it
  is async or an async context manager, or a method the reference shows is)
  a ``Cancellation:`` note saying what cancelling it leaves behind;
- every Python block of the pages parses, names only what iris_trio has, and
  calls node methods only with keywords they take (the long examples are
  ``literalinclude``\\ d from ``examples/``, which test_examples.py runs);
- every ``iris-trio`` command line of the pages uses a command and flags the
  command has;
- every message the troubleshooting page quotes is still written by the code.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import inspect
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import iris_trio
import iris_trio.cli
import iris_trio.monitor
import iris_trio.relay
import iris_trio.relay.client
import iris_trio.testing

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PAGES = sorted([*DOCS.rglob("*.md"), ROOT / "README.md"])

_FENCE = re.compile(r"^(`{3,})\s*\{?(\w[\w-]*)\}?[^\n]*\n(.*?)^\1\s*$", re.M | re.S)


def blocks(language: str) -> Iterator[tuple[str, str]]:
    """(page: line, code) of every fenced block in ``language`` of the pages."""
    for page in PAGES:
        text = page.read_text()
        for match in _FENCE.finditer(text):
            if match.group(2) == language:
                line = text.count("\n", 0, match.start()) + 1
                yield f"{page.relative_to(ROOT)}:{line}", match.group(3)


# ------------------------------------------------------------------ reference


def _public_names() -> set[str]:
    names = set()
    for module in (iris_trio, iris_trio.testing, iris_trio.relay, iris_trio.monitor):
        for name, value in vars(module).items():
            if name.startswith("_") or inspect.ismodule(value) or name == "annotations":
                continue
            names.add(f"{module.__name__}.{name}")
    names |= {f"iris_trio.relay.client.{name}" for name in iris_trio.relay.client.__all__}
    return names


@dataclasses.dataclass
class _Block:
    """One directive of a reference page: what it adds to the object's docstring."""

    page: str
    text: str = ""  # its body (options, paragraphs, nested directives)
    members: list[str] | None = dataclasses.field(default_factory=list)  # None: all


_DIRECTIVE = re.compile(r"^(\s*)\.\. (auto\w+|py:\w+):: (\S+)\s*$")
_CURRENT = re.compile(r"^\.\. currentmodule:: (\S+)")
_MEMBERS = re.compile(r"^\s*:members:(.*)$")


@functools.cache
def _blocks() -> dict[str, _Block]:
    """The objects the reference's directives describe (full names), with the
    text each directive's body adds."""
    found: dict[str, _Block] = {}
    for page in sorted((DOCS / "reference").glob("*.rst")):
        module = ""
        block: _Block | None = None
        indent = 0
        for line in page.read_text().splitlines():
            if match := _CURRENT.match(line):
                module, block = match.group(1), None
            elif match := _DIRECTIVE.match(line):
                name = match.group(3)
                name = name if name.startswith("iris_trio") else f"{module}.{name}"
                block = found[name] = _Block(page.name)
                indent = len(match.group(1))
            elif block is not None and (not line.strip() or _indent(line) > indent):
                if members := _MEMBERS.match(line):
                    listed = [m.strip() for m in members.group(1).split(",") if m.strip()]
                    block.members = listed or None
                block.text += line + "\n"
            else:
                block = None
    return found


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _documented() -> set[str]:
    """The objects the reference's directives describe (full names)."""
    return set(_blocks())


def _resolve(name: str) -> object:
    module, _, attribute = name.rpartition(".")
    while module not in sys.modules:
        module, _, outer = module.rpartition(".")
        attribute = f"{outer}.{attribute}"
    value: object = sys.modules[module]
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


def test_every_public_name_is_in_the_reference() -> None:
    documented = _documented()
    objects = [_resolve(name) for name in documented]
    missing = [
        name
        for name in sorted(_public_names())
        if name not in documented and not any(_resolve(name) is value for value in objects)
    ]
    assert not missing, f"not in docs/reference/: {missing}"


# ---------------------------------------------- examples and cancellation notes

#: An example: a literal block introduced by "Example::" (or "Examples ...::"),
#: or a file of examples/ included.
_EXAMPLE = re.compile(r"\bExamples?\b[^\n]*::[ \t]*$|\.\. literalinclude::", re.M)
#: What cancelling an async call (or leaving an ``async with`` by cancellation)
#: leaves behind is said in a paragraph that starts so.
_CANCELLATION = "Cancellation:"


def _block_of(name: str) -> _Block | None:
    """The reference directive that shows ``name`` (by name, or the same object)."""
    blocks = _blocks()
    if name in blocks:
        return blocks[name]
    value = _resolve(name)
    for documented, block in blocks.items():
        if _resolve(documented) is value:
            return block
    return None


def _rendered(name: str) -> str:
    """What the reference shows of ``name``: its docstring (for a class or a
    function: a constant's docstring would be its type's) and the directive's body."""
    value = _resolve(name)
    block = _block_of(name)
    shown = block.text if block is not None else ""
    if inspect.isclass(value) or inspect.isroutine(value):
        shown = (inspect.getdoc(value) or "") + "\n" + shown
    return shown


def _is_async(value: object) -> bool:
    """An async function, an async context manager function, or a function that
    returns an async context manager."""
    if isinstance(value, property) or not callable(value) or inspect.isclass(value):
        return False
    if inspect.iscoroutinefunction(value) or inspect.isasyncgenfunction(inspect.unwrap(value)):
        return True
    try:
        returned = str(inspect.signature(value).return_annotation)
    except (TypeError, ValueError):
        return False
    return "AsyncContextManager" in returned or "AsyncIterator" in returned


def _shown_members(name: str) -> list[str]:
    """The members the reference shows of the class ``name`` (``:members:``)."""
    value = _resolve(name)
    block = _block_of(name)
    if not inspect.isclass(value) or block is None:
        return []
    if block.members is None:  # all of them
        return [m for m in vars(value) if not m.startswith("_")]
    return block.members


def _checked_names() -> list[str]:
    """Every public name, and every other object the reference shows (not modules)."""
    names = _public_names() | {
        name for name in _documented() if not inspect.ismodule(_resolve(name))
    }
    return sorted(names)


CHECKED_NAMES = _checked_names()


@pytest.mark.parametrize("name", CHECKED_NAMES)
def test_every_name_has_an_example(name: str) -> None:
    assert _EXAMPLE.search(_rendered(name)), (
        f"{name}: no example in its docstring or its docs/reference/ entry "
        "(an 'Example::' literal block or a literalinclude of examples/)"
    )


@pytest.mark.parametrize("name", CHECKED_NAMES)
def test_async_names_say_what_cancellation_does(name: str) -> None:
    if _is_async(_resolve(name)):
        assert _CANCELLATION in _rendered(name), (
            f"{name} is async: its docs must say what cancelling it does ({_CANCELLATION!r})"
        )
    value = _resolve(name)
    shown = _rendered(name)
    paragraphs = [p for p in re.split(r"\n\s*\n", shown) if _CANCELLATION in p]
    silent = []
    for member in _shown_members(name):
        method = inspect.getattr_static(value, member, None)
        if isinstance(method, (staticmethod, classmethod)):
            method = method.__func__
        if method is None or not _is_async(method):
            continue
        # Said in the method's docstring, or in a note of the class that names it.
        named = re.compile(rf"\b{member}\b")
        if _CANCELLATION not in (inspect.getdoc(method) or "") and not any(
            named.search(p) for p in paragraphs
        ):
            silent.append(member)
    assert not silent, f"{name}: async methods that do not say what cancelling them does: {silent}"


# ------------------------------------------------------------- Python blocks

PYTHON_BLOCKS = list(blocks("python"))

#: Variables the snippets conventionally use, and what they stand for.
_RECEIVERS: dict[str, type] = {
    "node": iris_trio.Node,
    "client": iris_trio.relay.client.Connection,
    "service": iris_trio.relay.client.Connection,
    "nodes": iris_trio.testing.Cluster,
}


@pytest.mark.parametrize(("where", "code"), PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_python_block(where: str, code: str) -> None:
    # Snippets may use ``await`` at the top level and "..." for the rest.
    tree = compile(code, where, "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    assert isinstance(tree, ast.Module)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            _check_iris_name(where, node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            _check_call(where, node, node.func)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def _check_iris_name(where: str, node: ast.Attribute) -> None:
    name = _dotted(node)
    if name is None or not name.startswith("iris_trio."):
        return
    value: object = iris_trio
    for part in name.split(".")[1:]:
        assert hasattr(value, part), f"{where}: iris_trio has no {name}"
        value = getattr(value, part)


def _target(func: ast.Attribute) -> object | None:
    """The iris_trio callable a snippet's ``receiver.method(...)`` names."""
    name = _dotted(func)
    if name is None:
        receiver = func.value
        if isinstance(receiver, ast.Subscript) and _dotted(receiver.value) == "nodes":
            assert hasattr(iris_trio.Node, func.attr), f"Node has no {func.attr}"
            method: object = getattr(iris_trio.Node, func.attr)
            return method
        return None
    head, _, method = name.rpartition(".")
    if head.startswith("iris_trio"):
        value: object = iris_trio
        for part in name.split(".")[1:]:
            value = getattr(value, part)
        return value
    if head in _RECEIVERS:
        kind = _RECEIVERS[head]
        assert hasattr(kind, method), f"{kind.__name__} has no {method}"
        found: object = getattr(kind, method)
        return found
    return None


def _check_call(where: str, call: ast.Call, func: ast.Attribute) -> None:
    target = _target(func)
    if target is None or not callable(target):
        return
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    for keyword in call.keywords:
        if keyword.arg is not None:
            assert keyword.arg in parameters, f"{where}: {func.attr}() takes no {keyword.arg}="


# ------------------------------------------------------------- command lines

_COMMAND = re.compile(r"^\s*(?:\$ )?(?:\S*/)?iris-trio\s+(.*)$")


def _command_lines() -> list[tuple[str, str]]:
    found = []
    for where, code in [*blocks("sh"), *blocks("text"), *blocks("bash")]:
        joined = code.replace("\\\n", " ")
        for line in joined.splitlines():
            match = _COMMAND.match(line)
            if match and not match.group(1).split()[0].endswith(":"):  # (not a message)
                found.append((where, match.group(1).split("#")[0].strip()))
    return found


@functools.cache
def _help(command: tuple[str, ...]) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.suppress(SystemExit):
        status = iris_trio.cli.main([*command, "--help"])
        assert not status, f"iris-trio {' '.join(command)} --help: exit status {status}"
    return output.getvalue()


COMMAND_LINES = _command_lines()


@pytest.mark.parametrize(("where", "line"), COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_command_line(where: str, line: str) -> None:
    words = line.split()
    command = tuple(words[:2]) if words[0] == "bench" else (words[0],)
    text = _help(command)
    for word in words[len(command) :]:
        if word == "--":
            break  # what follows is the command `reply` runs
        if word.startswith("--"):
            flag = word.split("=")[0]
            assert flag in text, f"{where}: iris-trio {' '.join(command)} has no {flag}"


# ------------------------------------------------------------ troubleshooting


def _strings_of_the_code() -> list[str]:
    """Every string constant of iris_trio, f-strings in their fixed pieces."""
    strings = []
    for path in (ROOT / "iris_trio").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.append(node.value)
    return strings


def test_troubleshooting_messages_exist() -> None:
    page = (DOCS / "troubleshooting.md").read_text()
    messages = re.findall(r"^### `(.+)`$", page, re.M)
    assert len(messages) > 30
    corpus = "\n".join(_strings_of_the_code())
    corpus = re.sub(r"%[sdr]", "\x00", corpus)
    for message in messages:
        for part in message.split("..."):
            piece = part.strip(" '\"`:;,.()")
            if len(piece) >= 8:
                assert piece in corpus, (
                    f"troubleshooting.md: {message!r}: {piece!r} not in the code"
                )
