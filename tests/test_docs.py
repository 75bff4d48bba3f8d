"""The documentation cannot drift from the code.

The site is built with ``sphinx-build -W`` by ``./test`` (a missing example
file, a ``literalinclude`` of a function that is gone, or a reference to a
renamed iris_trio name fails the build). These tests check what the build
cannot see:

- every public name is in the API reference;
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
    for module in (iris_trio, iris_trio.testing, iris_trio.relay):
        for name, value in vars(module).items():
            if name.startswith("_") or inspect.ismodule(value) or name == "annotations":
                continue
            names.add(f"{module.__name__}.{name}")
    names |= {f"iris_trio.relay.client.{name}" for name in iris_trio.relay.client.__all__}
    return names


def _documented() -> set[str]:
    """The objects the reference's directives describe (full names)."""
    directive = re.compile(r"^\s*\.\. (?:auto\w+|py:\w+):: (\S+)", re.M)
    current = re.compile(r"^\.\. currentmodule:: (\S+)", re.M)
    found = set()
    for page in (DOCS / "reference").glob("*.rst"):
        module = ""
        for line in page.read_text().splitlines():
            if match := current.match(line):
                module = match.group(1)
            elif match := directive.match(line):
                name = match.group(1)
                found.add(name if name.startswith("iris_trio") else f"{module}.{name}")
    return found


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
