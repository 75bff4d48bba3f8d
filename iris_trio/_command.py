"""What the ``iris-trio`` subcommands share (cli, daemon, demo, bench): an
argument parser whose errors are two plain lines, checked argument types
(ports, host:port, intervals), and the handling of Ctrl-C."""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import trio

__all__ = [
    "BENCH_EPILOG",
    "INTERRUPTED",
    "CommandParser",
    "at_least",
    "byte_size",
    "connect_failure",
    "format_bytes",
    "host_port",
    "interrupted",
    "leaves",
    "plain",
    "port_number",
    "quiet_interrupt",
    "seconds",
    "until_stopped",
]

_T = TypeVar("_T")

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130

BENCH_EPILOG = "Ctrl-C stops the benchmark: exit status 130, no figures printed."


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are two lines on stderr (what is wrong,
    where to read more) and exit status 2, and whose descriptions and epilogs
    keep their line breaks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``message`` and a pointer to --help; exit with status 2."""
        message = message.removeprefix("argument ")
        self.exit(2, f"{self.prog}: {message}\n(see '{self.prog} --help')\n")


def plain(text: str | None) -> str:
    """``text`` (a docstring) without reST markup: ````x```` and ``:role:`x``` become x."""
    if not text:
        return ""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"\1", text).strip()


_PORT_RANGE = "a port is 0 to 65535 (0: any free port)"


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0: any free one)."""
    try:
        port = int(text.strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number; {_PORT_RANGE}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is out of range; {_PORT_RANGE}")
    return port


def host_port(text: str) -> str:
    """An argparse type: "host:port" or "[v6 host]:port" with a port of 0 to 65535.

    Returns the address as given (stripped of surrounding blanks).
    """
    address = text.strip()
    example = "e.g. 127.0.0.1:0, 0.0.0.0:4000 or [::1]:0"
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT ({example})")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare or "[" in bare or "]" in bare or (":" in bare and bare == host):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT ({example}; an IPv6 host goes in brackets)"
        )
    if any(c.isspace() for c in bare):
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT ({example})")
    try:
        number = int(port, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{port!r} in {text!r} is not a port number; {_PORT_RANGE}"
        ) from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(
            f"port {number} in {text!r} is out of range; {_PORT_RANGE}"
        )
    return address


def seconds(text: str) -> float:
    """An argparse type: a duration in seconds, 0 or more (finite)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: use 0 or a positive number of seconds")
    return value


#: The suffixes a size in bytes may carry (binary: 1 KiB is 1,024 bytes).
_UNITS = {"b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"\s*([0-9]+)\s*([a-z]*)\s*", re.IGNORECASE)


def byte_size(text: str) -> int:
    """An argparse type: a size in bytes, a whole number optionally followed by
    B, KiB, MiB, GiB or TiB (any case): ``65536``, ``64KiB``, ``16MiB``."""
    match = _SIZE.fullmatch(text)
    unit = _UNITS.get(match.group(2).lower() or "b") if match else None
    if match is None or unit is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size in bytes; give a whole number, or one with KiB, MiB "
            "or GiB (65536, 64KiB, 16MiB, 1GiB)"
        )
    return int(match.group(1)) * unit


def format_bytes(size: int) -> str:
    """``size`` as :func:`byte_size` reads it, in the largest unit that divides
    it: 4194304 is ``4MiB``, 1000 stays ``1000``."""
    for name, unit in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size and size % unit == 0:
            return f"{size // unit}{name}"
    return str(size)


def at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (and at most ``maximum``)."""

    def whole(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"{value} is out of range; use {bounds}")
        return value

    whole.__name__ = "number"
    return whole


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``: itself, or the leaves of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def connect_failure(exc: OSError) -> str:
    """Why connecting failed, in a few words ("connection refused"), from the
    error anyio or trio raise once every address was tried."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        inner = [leaf for leaf in leaves(cause) if isinstance(leaf, OSError)]
        exc = inner[0] if inner else exc
    elif isinstance(cause, OSError):
        exc = cause
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def interrupted(exc: BaseException) -> bool:
    """True if ``exc`` is, or an exception group holding, a KeyboardInterrupt."""
    return any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves(exc))


def quiet_interrupt(run: Callable[[], _T]) -> _T:
    """``run()``; a Ctrl-C exits with status 130 and no traceback (for child
    processes of the benchmarks, which get the terminal's SIGINT too)."""
    try:
        return run()
    except BaseException as exc:
        if interrupted(exc):
            raise SystemExit(INTERRUPTED) from None
        raise


async def until_stopped(body: Callable[[], Awaitable[object]]) -> bool:
    """Run ``body()`` until it returns or SIGINT/SIGTERM arrives (then cancel it).

    Returns True if a signal stopped it.
    """
    stopped = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal stopped
                async for _ in signals:
                    stopped = True
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await body()
            nursery.cancel_scope.cancel()
    return stopped
