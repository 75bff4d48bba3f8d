"""``iris-trio node``: run an overlay node as a process, serving the Iris relay
protocol to local clients (Iris client libraries, :func:`iris_trio.connect`).

It prints one JSON line when ready (relay port, node id, address, peers) and,
with ``--status-interval``, a JSON status line periodically. SIGINT or SIGTERM
make it close every client (CLOSE with a reason), leave the overlay gracefully
and exit 0. Every flag has an environment variable (IRIS_TRIO_*); a flag given
on the command line wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
from typing import Any, TypeVar

import trio

from ._node import Node, serve_node
from .crypto.identity import NodeIdentity
from .crypto.keys import DEV_NETWORK, Network, NetworkKey
from .errors import IrisError
from .overlay.driver import OverlayDriver
from .relay import DEFAULT_PORT, Relay, serve_relay

__all__ = ["main"]

_N = TypeVar("_N", int, float)


def _number(kind: type[_N], variable: str, default: _N) -> _N:
    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        return kind(text)
    except ValueError:
        sys.exit(f"iris-trio node: {variable}={text!r} is not a number")


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="iris-trio node", description=__doc__)
    parser.add_argument(
        "--dev",
        action="store_true",
        default=env("IRIS_TRIO_DEV", "").lower() in {"1", "true", "yes"},
        help="the loopback-only dev network (the default without --net)",
    )
    parser.add_argument("--net", default=env("IRIS_TRIO_NET"), help="network name")
    parser.add_argument(
        "--key", default=env("IRIS_TRIO_KEY"), help="network key file (raw, hex or base64)"
    )
    parser.add_argument("--rsa", default=env("IRIS_TRIO_RSA"), help="Iris RSA key file")
    parser.add_argument(
        "--listen",
        default=env("IRIS_TRIO_LISTEN"),
        help="host:port to accept links on (dev: 127.0.0.1:0, else 0.0.0.0:0)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=_number(int, "IRIS_TRIO_PORT", DEFAULT_PORT),
        help=f"relay port on loopback (default {DEFAULT_PORT}; 0: any free port)",
    )
    parser.add_argument(
        "--seed",
        action="append",
        default=None,
        help="host:port to join through (repeatable; IRIS_TRIO_SEEDS: comma-separated)",
    )
    parser.add_argument(
        "--discovery",
        choices=["lan", "loopback", "off"],
        default=env("IRIS_TRIO_DISCOVERY"),
        help="dev default: loopback; real network default: lan",
    )
    parser.add_argument(
        "--identity",
        default=env("IRIS_TRIO_IDENTITY"),
        help="node identity file (created if missing)",
    )
    parser.add_argument(
        "--status-interval",
        type=float,
        default=_number(float, "IRIS_TRIO_STATUS_INTERVAL", 0.0),
        help="print a JSON status line this often (seconds)",
    )
    parser.add_argument("--log-level", default=env("IRIS_TRIO_LOG_LEVEL", "WARNING"))
    return parser


def _network(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Network:
    if args.dev or not args.net:
        if args.key or args.rsa:
            parser.error("--key/--rsa need --net")
        return DEV_NETWORK
    if bool(args.key) == bool(args.rsa):
        parser.error("a real network needs exactly one of --key or --rsa")
    key = NetworkKey.from_file(args.key) if args.key else NetworkKey.from_rsa_file(args.rsa)
    return Network(args.net, key)


def _seeds(args: argparse.Namespace) -> list[str]:
    if args.seed is not None:
        return list(args.seed)
    return [s.strip() for s in os.environ.get("IRIS_TRIO_SEEDS", "").split(",") if s.strip()]


def _identity(path: str | None) -> NodeIdentity:
    if path is None:
        return NodeIdentity.generate()
    if os.path.exists(path):
        return NodeIdentity.load(path)
    identity = NodeIdentity.generate()
    identity.save(path)
    return identity


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


def _status(driver: OverlayDriver, relay: Relay) -> dict[str, Any]:
    overlay = driver.overlay
    assert overlay is not None
    stats = overlay.statistics()
    return {
        "event": "status",
        "node_id": f"{driver.id:032x}",
        "address": driver.address,
        "leaves_right": [f"{n:032x}" for n in overlay.leaves.right],
        "leaves_left": [f"{n:032x}" for n in overlay.leaves.left],
        "peers": stats.peers,
        "table_entries": stats.table_entries,
        "peers_declared_dead": stats.peers_declared_dead,
        "relay": dataclasses.asdict(relay.statistics()),
    }


async def _run(args: argparse.Namespace, network: Network, identity: NodeIdentity) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            node: Node = await nursery.start(
                functools.partial(
                    serve_node,
                    network=None if network.is_dev else network,
                    listen=args.listen,
                    seeds=_seeds(args),
                    discovery=args.discovery,
                    identity=identity,
                )
            )
            driver = node.driver
            async with trio.open_nursery() as clients:
                relay: Relay = await clients.start(serve_relay, node, args.port)
                _emit(
                    {
                        "event": "ready",
                        "relay_port": relay.port,
                        "node_id": f"{driver.id:032x}",
                        "address": driver.address,
                        "network": network.name,
                        "discovery": driver.discovery.mode,
                        "peers": driver.overlay.statistics().peers if driver.overlay else 0,
                    }
                )
                if args.status_interval > 0:
                    clients.start_soon(_report, driver, relay, args.status_interval)
                async for _ in signals:
                    break
                clients.cancel_scope.cancel()  # every client gets CLOSE first
            nursery.cancel_scope.cancel()  # then the node leaves the overlay gracefully
    _emit({"event": "stopped", "node_id": f"{driver.id:032x}"})


async def _report(driver: OverlayDriver, relay: Relay, interval: float) -> None:
    while True:
        _emit(_status(driver, relay))
        await trio.sleep(interval)


def main(argv: list[str]) -> int:
    """Entry point of ``iris-trio node``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        network = _network(args, parser)
        identity = _identity(args.identity)
        trio.run(_run, args, network, identity)
    except (IrisError, OSError) as exc:
        print(f"iris-trio node: {exc}", file=sys.stderr)
        return 1
    return 0
