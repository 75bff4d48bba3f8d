"""``iris-trio request | reply | publish | subscribe | broadcast``: the four
patterns from the shell, through a node's relay port (like the ``nats`` tool).

Each connects to the node on this host (``--port``, ``IRIS_TRIO_PORT``, else
55555); a failure is one line on stderr and exit status 1 (2 for a bad
argument). ``reply`` and ``subscribe`` run until SIGINT or SIGTERM (exit 0) or
until ``--count`` is reached.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Final

import trio

from .._command import at_least
from ..patterns.limits import MAX_MESSAGE_SIZE
from ._common import (
    ToolParser,
    add_port,
    escape_controls,
    message_data,
    open_connection,
    positive_seconds,
    resolve_port,
    run_tool,
    until_stopped,
)

__all__ = ["main_broadcast", "main_publish", "main_reply", "main_request", "main_subscribe"]

_DATA_HELP: Final = "the message: its text is sent as UTF-8; '-' sends all of stdin"
_STDERR_LIMIT: Final = 4096
_READ_SIZE: Final = 65536


def _parser(name: str, description: str) -> ToolParser:
    parser = ToolParser(
        prog=f"iris-trio {name}",
        description=description,
        epilog="Exit status: 0 done (or stopped by Ctrl-C/SIGTERM), 1 failed (the message "
        "says why), 2 invalid arguments.",
    )
    add_port(parser)
    return parser


def _newline_ended(data: bytes) -> bytes:
    return data if data.endswith(b"\n") else data + b"\n"


# ------------------------------------------------------------------ request


async def _request(port: int, cluster: str, data: bytes, timeout: float, raw: bool) -> None:
    async with open_connection(port) as connection:
        reply = await connection.request(cluster, data, timeout=timeout)
    sys.stdout.buffer.write(reply if raw else _newline_ended(reply))
    sys.stdout.flush()


def main_request(argv: list[str]) -> int:
    """``iris-trio request CLUSTER DATA``: print one member's reply."""
    parser = _parser(
        "request",
        "Send DATA to one member of CLUSTER and print its reply (with a newline added\n"
        "unless it ends with one, or --raw).",
    )
    parser.add_argument("cluster", metavar="CLUSTER")
    parser.add_argument("data", metavar="DATA", help=_DATA_HELP)
    parser.add_argument(
        "--timeout",
        metavar="S",
        type=positive_seconds,
        default=10.0,
        help="seconds to wait for the reply (default 10)",
    )
    parser.add_argument("--raw", action="store_true", help="print the reply's bytes as they are")
    args = parser.parse_args(argv)
    return run_tool(
        parser.prog,
        _main_request,
        args,
        cluster=args.cluster,
    )


async def _main_request(args: argparse.Namespace) -> None:
    await _request(
        resolve_port(args), args.cluster, message_data(args.data), args.timeout, args.raw
    )


# ------------------------------------------------------------------ reply


class CommandError(Exception):
    """The reply command failed (the requester gets it as a RemoteError)."""


async def _read_bounded(stream: trio.abc.ReceiveStream, limit: int, into: bytearray) -> bool:
    """Read ``stream`` to its end into ``into``, keeping at most ``limit`` bytes;
    False if there was more."""
    whole = True
    async for chunk in stream:
        room = limit - len(into)
        if len(chunk) > room:
            whole = False
        into += chunk[: max(room, 0)]
    return whole


async def run_command(command: Sequence[str], data: bytes) -> bytes:
    """Run ``command`` with ``data`` on stdin; return its stdout.

    Raises:
        CommandError: it could not start, exited with a non-zero status, or
            wrote more than a message may hold.
    """
    try:
        process = await trio.lowlevel.open_process(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise CommandError(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    output, errors = bytearray(), bytearray()
    whole = True
    try:
        async with trio.open_nursery() as nursery:

            async def feed() -> None:
                assert process.stdin is not None
                async with process.stdin:
                    # A command that does not read all of it is within its rights.
                    with contextlib.suppress(trio.BrokenResourceError):
                        await process.stdin.send_all(data)

            async def drain_errors() -> None:
                assert process.stderr is not None
                await _read_bounded(process.stderr, _STDERR_LIMIT, errors)

            nursery.start_soon(feed)
            nursery.start_soon(drain_errors)
            whole = await _read_bounded(process.stdout, MAX_MESSAGE_SIZE, output)
            if not whole:
                process.kill()
        status = await process.wait()
    finally:
        if process.returncode is None:  # cancelled: the request's deadline passed
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    if not whole:
        raise CommandError(f"{command[0]} wrote more than a reply may hold (8 MiB)")
    if status != 0:
        lines = bytes(errors).decode("utf-8", "replace").strip().splitlines()
        detail = f": {lines[-1]}" if lines else ""
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        raise CommandError(f"{command[0]} {how}{detail}")
    return bytes(output)


async def _main_reply(args: argparse.Namespace) -> None:
    port = resolve_port(args)
    answered = 0
    command: list[str] = args.command

    async def handler(data: bytes) -> bytes:
        nonlocal answered
        reply = await run_command(command, data)
        answered += 1
        return reply

    async with open_connection(port, args.cluster) as service:
        print(
            f"iris-trio reply: a member of {args.cluster!r} through port {port}; "
            f"each request runs {' '.join(command)} (Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
        await until_stopped(lambda: service.serve(handler, limit=args.limit))
    print(f"iris-trio reply: answered {answered} requests", file=sys.stderr, flush=True)


def main_reply(argv: list[str]) -> int:
    """``iris-trio reply CLUSTER -- COMMAND ...``: answer requests with a command."""
    parser = _parser(
        "reply",
        "Be a member of CLUSTER and answer each request by running COMMAND: the request\n"
        "is its stdin, its stdout is the reply. A command that exits with a non-zero\n"
        "status (or outlives the request's deadline) fails that request: the requester\n"
        "gets a RemoteError with the last line of its stderr. Runs until Ctrl-C/SIGTERM.\n\n"
        "example: iris-trio reply upper -- tr a-z A-Z",
    )
    parser.add_argument("cluster", metavar="CLUSTER")
    parser.add_argument(
        "command", metavar="COMMAND", nargs="+", help="the command and its arguments, after --"
    )
    parser.add_argument(
        "--limit",
        metavar="N",
        type=at_least(1),
        default=os.cpu_count() or 1,
        help="commands running at once (default: the number of CPUs)",
    )
    args = parser.parse_args(argv)
    if shutil.which(args.command[0]) is None:
        print(
            f"{parser.prog}: command {args.command[0]!r} not found (not a file, nor on PATH)",
            file=sys.stderr,
        )
        return 1
    return run_tool(parser.prog, _main_reply, args, cluster=args.cluster)


# ------------------------------------------------------------ publish, broadcast


async def _main_send(args: argparse.Namespace, broadcast: bool) -> None:
    data = message_data(args.data)
    async with open_connection(resolve_port(args)) as connection:
        if broadcast:
            await connection.broadcast(args.name, data)
        else:
            await connection.publish(args.name, data)


def _send_main(argv: list[str], *, broadcast: bool) -> int:
    name, what = ("CLUSTER", "member of") if broadcast else ("TOPIC", "subscriber of")
    parser = _parser(
        "broadcast" if broadcast else "publish",
        f"Send DATA to every {what} {name} (best effort; nobody there: it goes nowhere).",
    )
    parser.add_argument("name", metavar=name)
    parser.add_argument("data", metavar="DATA", help=_DATA_HELP)
    args = parser.parse_args(argv)
    return run_tool(parser.prog, _main_send, args, broadcast)


def main_publish(argv: list[str]) -> int:
    """``iris-trio publish TOPIC DATA``."""
    return _send_main(argv, broadcast=False)


def main_broadcast(argv: list[str]) -> int:
    """``iris-trio broadcast CLUSTER DATA``."""
    return _send_main(argv, broadcast=True)


# ------------------------------------------------------------------ subscribe


def format_event(topic: str, data: bytes, style: str) -> bytes:
    """One line (newline included) showing an event in ``style``: ``text``
    (UTF-8, with control characters and undecodable bytes escaped, so that an
    event stays on one line and cannot drive the terminal), ``raw`` (its bytes
    as they are) or ``json`` (``{"topic", "size", "text" | "base64"}``)."""
    if style == "raw":
        return data + b"\n"
    if style == "json":
        record: dict[str, object] = {"topic": topic, "size": len(data)}
        try:
            record["text"] = data.decode("utf-8")
        except UnicodeDecodeError:
            record["base64"] = base64.b64encode(data).decode("ascii")
        return json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
    return escape_controls(data.decode("utf-8", "backslashreplace")).encode("utf-8") + b"\n"


async def _main_subscribe(args: argparse.Namespace) -> None:
    port = resolve_port(args)
    style = "raw" if args.raw else "json" if args.json else "text"
    async with open_connection(port) as connection, connection.subscribe(args.topic) as events:
        print(
            f"iris-trio subscribe: receiving {args.topic!r} through port {port} (Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )

        async def show() -> None:
            shown = 0
            while args.count is None or shown < args.count:
                data = await events.receive()
                sys.stdout.buffer.write(format_event(args.topic, data, style))
                sys.stdout.flush()
                shown += 1

        await until_stopped(show)


def main_subscribe(argv: list[str]) -> int:
    """``iris-trio subscribe TOPIC``: print its events, one per line."""
    parser = _parser(
        "subscribe",
        "Print the events published on TOPIC, one per line, until Ctrl-C/SIGTERM or --count.",
    )
    parser.add_argument("topic", metavar="TOPIC")
    parser.add_argument(
        "--count", metavar="N", type=at_least(1), help="stop after N events (default: never)"
    )
    style = parser.add_mutually_exclusive_group()
    style.add_argument(
        "--raw", action="store_true", help="each event's bytes as they are, then a newline"
    )
    style.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per event: {"topic", "size", "text"} ("base64" instead of '
        '"text" for bytes that are not UTF-8)',
    )
    args = parser.parse_args(argv)
    return run_tool(parser.prog, _main_subscribe, args)
