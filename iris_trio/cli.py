"""The ``iris-trio`` command, and what its subcommands share: an argument parser
whose errors are two plain lines, checked argument types (ports, host:port,
intervals), and the handling of Ctrl-C and of unexpected errors.

Exit statuses: 0 done; 1 a failure (the message says what to do); 2 an invalid
argument or environment value; 130 interrupted (Ctrl-C) in ``demo`` and
``bench``. ``iris-trio node`` stops gracefully on SIGINT and SIGTERM and exits 0.
"""

from __future__ import annotations

import base64
import importlib
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from . import __version__
from ._command import (
    INTERRUPTED,
    CommandParser,
    host_port,
    interrupted,
    leaves,
    plain,
    port_number,
    quiet_interrupt,
)

__all__ = [
    "CommandParser",
    "console_main",
    "host_port",
    "interrupted",
    "leaves",
    "main",
    "plain",
    "port_number",
    "quiet_interrupt",
]

_T = TypeVar("_T")


#: Set to 1 to print the traceback of an unexpected error.
TRACEBACK_VARIABLE = "IRIS_TRIO_TRACEBACK"

_BENCHMARKS: dict[str, str] = {
    "link": "iris_trio.bench.link",
    "overlay": "iris_trio.bench.overlay",
    "pubsub": "iris_trio.bench.patterns:main_pubsub",
    "request": "iris_trio.bench.patterns:main_request",
    "broadcast": "iris_trio.bench.patterns:main_broadcast",
    "tunnel": "iris_trio.bench.patterns:main_tunnel",
    "relay": "iris_trio.bench.relay",
    "peers": "iris_trio.bench.peers",
    "report": "iris_trio.bench.report",
}

_BENCH_HELP = """\
usage: iris-trio bench SCENARIO [options] [--json]

Run one benchmark. With --json the last line printed is one JSON object of the
figures. 'iris-trio bench SCENARIO --help' explains a scenario's options.

scenarios:
  link       frames/s through one secure link between two processes, beside raw TCP
  overlay    the overlay in the simulator (--nodes N), or 16 real processes (--real)
  pubsub     publish/subscribe between two node processes
  request    request latency and throughput against one member process
  broadcast  broadcast to member processes
  tunnel     tunnel messages/s and MB/s to one member process
  relay      the original Iris binding benchmarks through one node's relay
  peers      the same workloads on iris_trio, NATS and ZeroMQ (needs the bench extra)
  report     tables and charts of the recorded 'peers' results into docs/benchmarks.md

Ctrl-C stops a benchmark: exit status 130, no figures printed."""

#: The epilog of every benchmark's --help.
# --------------------------------------------------------------- subcommands


def _bench(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(_BENCH_HELP, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in _BENCHMARKS:
        names = ", ".join(sorted(_BENCHMARKS))
        print(
            f"iris-trio bench: unknown scenario {argv[0]!r}; choose one of {names}\n"
            "(see 'iris-trio bench --help')",
            file=sys.stderr,
        )
        return 2
    module, _, function = _BENCHMARKS[argv[0]].partition(":")
    entry: Callable[[list[str]], None] = getattr(
        importlib.import_module(module), function or "main"
    )
    entry(argv[1:])
    return 0


def _keygen(argv: list[str]) -> int:
    from .crypto.keys import NetworkKey  # noqa: PLC0415 - keep `iris-trio --help` fast

    parser = CommandParser(
        prog="iris-trio keygen",
        description=(
            "Write a new random network key (32 bytes, base64) to a new file that only\n"
            "you can read. Every node of a network needs the same key file:\n"
            "  iris-trio node --net NAME --key FILE"
        ),
    )
    parser.add_argument("path", help="the key file to create (it must not exist yet)")
    args = parser.parse_args(argv)
    key = NetworkKey.generate()
    try:
        fd = os.open(args.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(
            f"iris-trio keygen: {args.path} exists; refusing to overwrite a key "
            "(choose a new file name)",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"iris-trio keygen: cannot create {args.path}: {exc.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(base64.b64encode(key.secret).decode("ascii") + "\n")
    print(f"wrote network key {key.fingerprint()} to {args.path}")
    return 0


def _demo(argv: list[str]) -> int:
    demo: Callable[[list[str]], int] = importlib.import_module("iris_trio.demo").main
    return demo(argv)


def _node(argv: list[str]) -> int:
    node: Callable[[list[str]], int] = importlib.import_module("iris_trio.daemon").main
    return node(argv)


def _tool(name: str) -> Callable[[list[str]], int]:
    """The shell tool ``name`` (imported when run: keeps `iris-trio --help` fast)."""

    def run(argv: list[str]) -> int:
        tool: Callable[[list[str]], int] = getattr(
            importlib.import_module("iris_trio.tools"), f"main_{name}"
        )
        return tool(argv)

    return run


_COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "node": (_node, "run a node that serves the Iris relay protocol to local programs"),
    "demo": (_demo, "the system at work on this host (loopback), with live figures"),
    "bench": (
        _bench,
        "run a benchmark (link, overlay, pubsub, request, broadcast, tunnel, relay, peers; report)",
    ),
    "keygen": (_keygen, "create a network key file"),
    "request": (_tool("request"), "send a request to a cluster and print the reply"),
    "reply": (_tool("reply"), "answer a cluster's requests by running a command"),
    "publish": (_tool("publish"), "publish an event on a topic"),
    "subscribe": (_tool("subscribe"), "print a topic's events, one per line"),
    "broadcast": (_tool("broadcast"), "send a message to every member of a cluster"),
    "status": (_tool("status"), "a readable summary of a node, from its monitor"),
    "top": (_tool("top"), "watch a node: its summary, refreshed in the terminal"),
}


def _usage() -> str:
    lines = [
        f"iris-trio {__version__}: decentralized messaging on Trio",
        "",
        "usage: iris-trio COMMAND [options]   ('iris-trio COMMAND --help' for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<10} {text}" for name, (_, text) in _COMMANDS.items()]
    lines += [
        "",
        "request, reply, publish, subscribe and broadcast use the node on this host",
        "through its relay port (--port, IRIS_TRIO_PORT, else 55555); status and top",
        "read its monitor (iris-trio node --monitor).",
        "",
        "options:",
        "  -h, --help  show this help",
        "  --version   print the version",
        "",
        "Exit status: 0 done, 1 failed (the message says why), 2 invalid arguments,",
        "130 interrupted (Ctrl-C) in demo and bench.",
    ]
    return "\n".join(lines)


def _unexpected(command: str, exc: BaseException) -> int:
    """Report an exception no command expected (a bug) in two lines; status 1."""
    if os.environ.get(TRACEBACK_VARIABLE, "") not in {"", "0"}:
        import traceback  # noqa: PLC0415

        traceback.print_exception(exc)
    inner = leaves(exc)
    cause = inner[0] if len(inner) == 1 else exc
    while cause.__cause__ is not None and type(cause).__name__ == "InternalError":
        cause = cause.__cause__
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    print(
        f"{command}: unexpected error: {type(cause).__name__}{': ' if text else ''}{text}\n"
        f"This is a bug in iris-trio {__version__}; please report it "
        f"(with the traceback that {TRACEBACK_VARIABLE}=1 prints).",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``iris-trio`` command line; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "--version":
        print(__version__)
        return 0
    command = _COMMANDS.get(args[0])
    if command is None:
        print(
            f"iris-trio: unknown command {args[0]!r}; choose one of {', '.join(_COMMANDS)}\n"
            "(see 'iris-trio --help')",
            file=sys.stderr,
        )
        return 2
    name = f"iris-trio {args[0]}"
    if args[0] == "bench" and len(args) > 1 and args[1] in _BENCHMARKS:
        name += f" {args[1]}"
    try:
        return command[0](args[1:])
    except SystemExit:
        raise
    except BaseException as exc:
        if interrupted(exc):
            print(f"{name}: interrupted", file=sys.stderr)
            return INTERRUPTED
        if any(isinstance(leaf, BrokenPipeError) for leaf in leaves(exc)):
            _silence_stdout()  # stdout was closed early (`| head`): stop quietly
            return 1
        if not isinstance(exc, Exception):
            raise
        return _unexpected(name, exc)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def console_main() -> None:
    """Console-script entry point."""
    try:
        status = main()
    except KeyboardInterrupt:
        status = INTERRUPTED
    sys.exit(status)


if __name__ == "__main__":
    console_main()
