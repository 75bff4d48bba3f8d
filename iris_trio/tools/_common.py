"""What the shell tools share: a parser whose errors are one line, the relay
port option (``--port`` / ``IRIS_TRIO_PORT``), the connection to the node with
its failures said in words, and running a tool until it ends or is stopped."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, NoReturn

import anyio
import trio

from .._command import CommandParser, connect_failure, leaves, until_stopped
from ..errors import (
    ConfigError,
    HandshakeError,
    MessageTooLargeError,
    NoRespondersError,
    ProtocolError,
    RemoteError,
    RequestLostError,
    RequestTimeoutError,
)
from ..relay import DEFAULT_PORT
from ..relay.client import Connection, connect, register

__all__ = [
    "PORT_VARIABLE",
    "ToolError",
    "ToolParser",
    "add_port",
    "escape_controls",
    "message_data",
    "open_connection",
    "positive_seconds",
    "run_tool",
    "until_stopped",
]

#: The environment variable the relay port is read from (as ``iris-trio node``).
PORT_VARIABLE: Final = "IRIS_TRIO_PORT"
#: Seconds a node is given to answer the relay handshake.
HANDSHAKE_TIMEOUT: Final = 5.0

#: Exit statuses: a failure (the message says why), an invalid argument.
FAILED, INVALID = 1, 2


class ToolError(Exception):
    """A failure a tool reports in one line (and exits with ``status``)."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.status = status


class ToolParser(CommandParser):
    """A :class:`CommandParser` whose errors are one line: what is wrong, and
    where to read more."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` in one line and exit with status 2."""
        message = message.removeprefix("argument ")
        self.exit(INVALID, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def relay_port(text: str) -> int:
    """An argparse type: a node's relay port, 1 to 65535."""
    try:
        port = int(text.strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port number (a node's relay port is 1 to 65535)"
        ) from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{port} is out of range (a node's relay port is 1 to 65535)"
        )
    return port


def positive_seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: use a positive number of seconds")
    return value


def add_port(parser: argparse.ArgumentParser) -> None:
    """Add ``--port N`` (default: ``IRIS_TRIO_PORT``, else 55555)."""
    parser.add_argument(
        "--port",
        metavar="N",
        type=relay_port,
        help=f"the node's relay port on this host (default: {PORT_VARIABLE}, else {DEFAULT_PORT})",
    )


def resolve_port(args: argparse.Namespace) -> int:
    """The relay port: ``--port``, else ``IRIS_TRIO_PORT``, else 55555.

    Raises:
        ToolError: ``IRIS_TRIO_PORT`` holds no port number (status 2).
    """
    if args.port is not None:
        return int(args.port)
    text = os.environ.get(PORT_VARIABLE)
    if not text:
        return DEFAULT_PORT
    try:
        return relay_port(text)
    except argparse.ArgumentTypeError as exc:
        raise ToolError(f"{PORT_VARIABLE}: {exc}", INVALID) from None


def message_data(text: str) -> bytes:
    """The bytes of a DATA argument: its UTF-8, or all of stdin for ``-``."""
    if text == "-":
        return sys.stdin.buffer.read()
    return text.encode("utf-8", "surrogateescape")


_CONTROLS: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # a tab stays
_NAMED: Final = {"\n": "\\n", "\r": "\\r"}


def escape_controls(text: str) -> str:
    """``text`` with its control characters but tabs escaped (``\\n``,
    ``\\x1b``...), so that what a peer sent can neither break a line nor drive
    the terminal."""
    return _CONTROLS.sub(lambda m: _NAMED.get(m[0]) or f"\\x{ord(m[0]):02x}", text)


def _no_node(port: int, reason: str) -> ToolError:
    return ToolError(
        f"no node listens on port {port} ({reason}); start one with 'iris-trio node', "
        f"or give its relay port with --port or {PORT_VARIABLE}"
    )


@contextlib.asynccontextmanager
async def open_connection(port: int, cluster: str | None = None) -> AsyncIterator[Connection]:
    """Connect to the node's relay on ``port`` (as a member of ``cluster`` if given).

    Raises:
        ToolError: nothing listens there, or what listens is no node's relay.
    """
    entered = False
    try:
        # The deadline bounds the handshake only: it is lifted once connected.
        with trio.CancelScope(deadline=trio.current_time() + HANDSHAKE_TIMEOUT) as scope:
            async with connect(port) if cluster is None else register(port, cluster) as connection:
                entered = True
                scope.deadline = math.inf
                yield connection
    except OSError as exc:
        if entered:
            raise
        raise _no_node(port, connect_failure(exc)) from None
    except HandshakeError as exc:
        raise ToolError(f"the node on port {port} refused: {exc}") from None
    except ProtocolError as exc:
        if entered:
            raise
        raise ToolError(
            f"port {port} does not speak the Iris relay protocol ({exc}): is it the relay "
            "port of an 'iris-trio node'?"
        ) from None
    except (anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        if entered:
            raise
        raise ToolError(
            f"port {port} closed the connection at once ({exc or 'no reason given'}): "
            "is it the relay port of an 'iris-trio node'?"
        ) from None
    if scope.cancelled_caught and not entered:
        raise ToolError(
            f"port {port} did not answer as a node's relay within {HANDSHAKE_TIMEOUT:g} s "
            "(is it the relay port of an 'iris-trio node'?)"
        )


def explain(exc: BaseException, cluster: str | None = None) -> str | None:
    """The one-line message for a failure a tool expects, or None."""
    what = f"cluster {cluster!r}" if cluster else "the cluster"
    if isinstance(exc, ToolError):
        return str(exc)
    if isinstance(exc, NoRespondersError):
        return f"no member of {what} takes requests (no responders)"
    if isinstance(exc, RemoteError):
        return f"the member of {what} failed: {exc}"
    if isinstance(exc, RequestTimeoutError):
        return f"no reply from {what} in time"
    if isinstance(exc, RequestLostError):
        return f"the request was lost with the member of {what} that held it"
    if isinstance(exc, ConfigError | MessageTooLargeError):
        return str(exc)
    if isinstance(exc, anyio.BrokenResourceError):
        return f"the node closed the connection ({exc or 'no reason given'})"
    return None


def run_tool(
    prog: str, main: Callable[..., Awaitable[Any]], *args: Any, cluster: str | None = None
) -> int:
    """Run ``main(*args)`` under trio; an expected failure is one line on
    stderr and a non-zero exit status. Returns the exit status."""
    try:
        status = trio.run(main, *args)
    except BaseException as exc:
        for leaf in leaves(exc):
            if isinstance(leaf, SystemExit):  # rich stops so when stdout closes (`| head`)
                return leaf.code if isinstance(leaf.code, int) else FAILED
            message = explain(leaf, cluster)
            if message is not None:
                print(f"{prog}: {escape_controls(message)}", file=sys.stderr)
                return leaf.status if isinstance(leaf, ToolError) else FAILED
        raise
    return int(status or 0)
