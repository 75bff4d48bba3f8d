"""The NATS and ZeroMQ ends of ``iris-trio bench peers``, one role per process.

``python -m iris_trio.bench._rivals SYSTEM ROLE [options]`` prints ``ready`` when
it can take traffic, then (for the measuring roles) one JSON line of figures.
SYSTEM is ``nats`` (the official nats-py client, asyncio; ``--address`` is the
server's ``nats://host:port``) or ``zeromq`` (pyzmq; ``--address`` is the
``tcp://host:port`` the role binds or connects). Roles:

- ``subscriber``: receive ``--count`` messages (or stop 10 s after the last),
  report the count, the receive rate and the one-way latency (messages carry
  their send time) with the latency curve.
- ``publisher``: after a line on stdin (the subscriber is ready), send
  ``--count`` messages of ``--size`` bytes as fast as the library takes them;
  report the send rate.
- ``responder``: answer requests with their own data until killed (NATS: a
  member of queue group ``workers``; ZeroMQ: a REP socket bound at the address).
- ``requester``: after a line on stdin, ``--count`` sequential round trips
  (p50/p99), then ``--duration`` seconds with ``--in-flight`` requests in flight
  (requests/s). ZeroMQ: a DEALER connected to every ``--address``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from .._command import quiet_interrupt
from ._stats import StreamStats, percentiles, stamp

__all__ = ["main"]

_SUBJECT = "bench"


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _wait_for_go() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


# -------------------------------------------------------------------- NATS


async def _nats(args: argparse.Namespace) -> None:
    import nats  # noqa: PLC0415 - an optional dependency

    client = await nats.connect(args.address[0], pending_size=64 * 1024 * 1024)
    try:
        if args.role == "subscriber":
            stats = StreamStats(args.count)
            done = asyncio.Event()

            async def on_message(message: Any) -> None:
                stats.add(message.data)
                if stats.received >= args.count:
                    done.set()

            subscription = await client.subscribe(
                _SUBJECT, cb=on_message, pending_msgs_limit=-1, pending_bytes_limit=-1
            )
            await client.flush()
            _say("ready")
            while not done.is_set():
                seen = stats.received
                try:
                    await asyncio.wait_for(done.wait(), 10 if seen else 120)
                except TimeoutError:
                    if stats.received == seen:
                        break
            await subscription.unsubscribe()
            _say(json.dumps(stats.figures()))
        elif args.role == "publisher":
            _say("ready")
            await _wait_for_go()
            payload = bytes(args.size)
            begun = time.perf_counter()
            for _ in range(args.count):
                await client.publish(_SUBJECT, stamp(payload))
            await client.flush(timeout=600)
            elapsed = time.perf_counter() - begun
            _say(json.dumps({"send_per_s": args.count / elapsed}))
        elif args.role == "responder":

            async def answer(message: Any) -> None:
                await message.respond(message.data)

            await client.subscribe("requests", queue="workers", cb=answer)
            await client.flush()
            _say("ready")
            await asyncio.Event().wait()
        else:  # requester
            _say("ready")
            await _wait_for_go()
            payload = bytes(args.size)

            async def ask() -> None:
                await client.request("requests", payload, timeout=30)

            _say(json.dumps(await _requests(ask, args)))
    finally:
        await client.close()


async def _requests(ask: Any, args: argparse.Namespace) -> dict[str, float]:
    for _ in range(200):  # warm up
        await ask()
    latencies = []
    for _ in range(args.count):
        begun = time.perf_counter_ns()
        await ask()
        latencies.append(time.perf_counter_ns() - begun)
    figures = percentiles(latencies)
    done = 0
    deadline = time.perf_counter() + args.duration

    async def lane() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await ask()
            done += 1

    begun_s = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(args.in_flight)))
    figures["throughput"] = done / (time.perf_counter() - begun_s)
    return figures


# ----------------------------------------------------------------- ZeroMQ


async def _zeromq(args: argparse.Namespace) -> None:
    import zmq  # noqa: PLC0415 - an optional dependency
    import zmq.asyncio  # noqa: PLC0415

    context = zmq.asyncio.Context()
    try:
        if args.role in ("subscriber", "publisher"):
            # Plain blocking sockets: the fastest way to drive pyzmq from Python.
            await asyncio.get_running_loop().run_in_executor(None, _zeromq_stream, args)
        elif args.role == "responder":
            socket = context.socket(zmq.REP)
            socket.bind(args.address[0])
            _say("ready")
            while True:
                await socket.send_multipart(await socket.recv_multipart())
        else:  # requester: a DEALER spreads requests over the responders
            await _zeromq_requester(context, args)
    finally:
        context.destroy(linger=0)


def _zeromq_stream(args: argparse.Namespace) -> None:
    import zmq  # noqa: PLC0415

    context = zmq.Context()
    try:
        if args.role == "subscriber":
            socket = context.socket(zmq.SUB)
            socket.setsockopt(zmq.SUBSCRIBE, b"")
            socket.bind(args.address[0])
            _say("ready")
            stats = StreamStats(args.count)
            receive = socket.recv
            while stats.received < args.count:
                if not socket.poll(10_000 if stats.received else 120_000):
                    break
                stats.add(receive())
            _say(json.dumps(stats.figures()))
        else:
            socket = context.socket(zmq.PUB)
            socket.connect(args.address[0])
            _say("ready")
            sys.stdin.readline()
            time.sleep(0.5)  # the subscription reaches the publisher (slow joiner)
            payload = bytes(args.size)
            send = socket.send
            begun = time.perf_counter()
            for _ in range(args.count):
                send(stamp(payload))
            elapsed = time.perf_counter() - begun
            _say(json.dumps({"send_per_s": args.count / elapsed}))
            socket.close(linger=10_000)
    finally:
        context.term()


async def _zeromq_requester(context: Any, args: argparse.Namespace) -> None:
    import zmq  # noqa: PLC0415

    socket = context.socket(zmq.DEALER)
    for address in args.address:
        socket.connect(address)
    _say("ready")
    await _wait_for_go()
    payload = bytes(args.size)
    waiting: dict[bytes, asyncio.Future[None]] = {}
    counter = 0

    async def receive_replies() -> None:
        while True:
            _, tag, _ = await socket.recv_multipart()
            future = waiting.pop(tag, None)
            if future is not None:
                future.set_result(None)

    async def ask() -> None:
        nonlocal counter
        counter += 1
        tag = counter.to_bytes(8, "big")
        future = asyncio.get_running_loop().create_future()
        waiting[tag] = future
        await socket.send_multipart([b"", tag, payload])
        await future

    reader = asyncio.create_task(receive_replies())
    try:
        _say(json.dumps(await _requests(ask, args)))
    finally:
        reader.cancel()


def main(argv: list[str] | None = None) -> None:
    """Entry point (``python -m iris_trio.bench._rivals``)."""
    parser = argparse.ArgumentParser(prog="iris_trio.bench._rivals")
    parser.add_argument("system", choices=["nats", "zeromq"])
    parser.add_argument("role", choices=["subscriber", "publisher", "responder", "requester"])
    parser.add_argument("--address", action="append", required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args(argv)
    run = _nats if args.system == "nats" else _zeromq
    quiet_interrupt(lambda: asyncio.run(run(args)))  # the terminal's Ctrl-C reaches it too


if __name__ == "__main__":
    main()
