"""The ``iris-trio`` command."""

from __future__ import annotations

import argparse
import base64
import importlib
import os
import sys
from collections.abc import Callable

from . import __version__
from .crypto.keys import NetworkKey

__all__ = ["console_main", "main"]

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


def _bench(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in _BENCHMARKS:
        names = ", ".join(sorted(_BENCHMARKS))
        print(
            f"usage: iris-trio bench SCENARIO [options] [--json]\nscenarios: {names}",
            file=sys.stderr if argv and argv[0] not in {"-h", "--help"} else sys.stdout,
        )
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    module, _, function = _BENCHMARKS[argv[0]].partition(":")
    entry: Callable[[list[str]], None] = getattr(
        importlib.import_module(module), function or "main"
    )
    entry(argv[1:])
    return 0


def _keygen(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="iris-trio keygen",
        description="Write a new random network key (base64) to a file readable by you only.",
    )
    parser.add_argument("path", help="the key file to create (must not exist)")
    args = parser.parse_args(argv)
    key = NetworkKey.generate()
    try:
        fd = os.open(args.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        parser.error(f"{args.path} exists; refusing to overwrite a key")
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


_COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "node": (_node, "run a node serving the relay (--dev, --net/--key, --port, --seed)"),
    "demo": (_demo, "show two nodes' secure link on loopback, with live figures"),
    "bench": (
        _bench,
        "run a benchmark (link, overlay, pubsub, request, broadcast, tunnel, relay, peers; report)",
    ),
    "keygen": (_keygen, "create a network key file"),
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``iris-trio`` command line; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(f"iris-trio {__version__}: decentralized messaging on Trio\n\ncommands:")
        for name, (_, text) in _COMMANDS.items():
            print(f"  {name:<8} {text}")
        return 0 if args else 2
    if args[0] == "--version":
        print(__version__)
        return 0
    command = _COMMANDS.get(args[0])
    if command is None:
        print(f"iris-trio: unknown command {args[0]!r} (try --help)", file=sys.stderr)
        return 2
    return command[0](args[1:])


def console_main() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
