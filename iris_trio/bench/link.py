"""``iris-trio bench link``: frames per second through one secure link between two
processes on loopback, beside raw trio TCP with the same length framing.

The receiver runs in a child process; the sender is this process. Raw and
secure runs alternate so machine noise hits both alike; figures are medians.
A run's time is from the first frame sent until the receiver's acknowledgement
of the last one arrives.
"""

from __future__ import annotations

import argparse
import sys
import time

import trio

from .._command import BENCH_EPILOG, CommandParser, at_least, plain, quiet_interrupt
from ..crypto.identity import NodeIdentity
from ..crypto.keys import DEV_NETWORK
from ..transport.config import LinkConfig
from ..transport.link import Link
from ..transport.listener import serve_tcp_links
from ..transport.tcp import connect_tcp_link
from ..wire.frames import Frame, Payload
from ..wire.framing import LengthPrefixedReader, frame_prefix
from ._common import emit, median, spawn_peer

__all__ = ["main", "run_benchmark"]

_DATA, _LAST, _ACK = 0, 1, 2
_RAW_BATCH = 64
_MAX_FRAME = 16 * 1024 * 1024


# ------------------------------------------------------------------ receiver side


async def _serve_secure(frames: int) -> None:
    done = trio.Event()
    last = trio.Event()
    received = 0

    def on_frame(link: Link, frame: Frame) -> None:
        nonlocal received
        received += 1
        if isinstance(frame, Payload) and frame.channel == _LAST:
            last.set()

    async def handler(link: Link) -> None:
        await last.wait()
        if received != frames:
            print(f"receiver: got {received} of {frames} frames", file=sys.stderr)
        await link.send(Payload(_ACK, received.to_bytes(8, "big")))
        await link.wait_send_queue_empty()
        done.set()

    config = LinkConfig(max_frame_size=_MAX_FRAME)
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(
            lambda task_status: serve_tcp_links(
                handler,
                0,
                identity=NodeIdentity.generate(),
                network=DEV_NETWORK,
                config=config,
                on_frame=on_frame,
                task_status=task_status,
            )
        )
        print(listener.listen.rsplit(":", 1)[1], flush=True)
        await done.wait()
        nursery.cancel_scope.cancel()


async def _serve_raw(frames: int) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    stream = await listeners[0].accept()
    reader = LengthPrefixedReader(4, _MAX_FRAME)
    received = 0
    while received < frames:
        data = await stream.receive_some(256 * 1024)
        if not data:
            break
        for _payload in reader.feed(data):
            received += 1
    await stream.send_all(received.to_bytes(8, "big"))
    await stream.aclose()


# -------------------------------------------------------------------- sender side


async def _send_secure(port: int, size: int, frames: int) -> float:
    data = bytes(size)
    config = LinkConfig(max_frame_size=_MAX_FRAME)
    async with connect_tcp_link(
        "127.0.0.1", port, identity=NodeIdentity.generate(), network=DEV_NETWORK, config=config
    ) as link:
        frame = Payload(_DATA, data)
        start = time.perf_counter()
        for _ in range(frames - 1):
            try:
                link.send_nowait(frame)
            except trio.WouldBlock:
                await link.send(frame)
        await link.send(Payload(_LAST, data))
        ack = await link.receive()
        elapsed = time.perf_counter() - start
    assert isinstance(ack, Payload) and int.from_bytes(ack.data, "big") == frames
    return elapsed


async def _send_raw(port: int, size: int, frames: int) -> float:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    framed = frame_prefix(size) + bytes(size)
    start = time.perf_counter()
    remaining = frames
    while remaining:
        batch = min(_RAW_BATCH, remaining)
        await stream.send_all(b"".join([framed] * batch))
        remaining -= batch
    ack = await stream.receive_some(8)
    elapsed = time.perf_counter() - start
    await stream.aclose()
    assert int.from_bytes(ack, "big") == frames
    return elapsed


async def _one_run(mode: str, size: int, frames: int) -> float:
    process, port = await spawn_peer(
        "iris_trio.bench.link", "--serve", mode, "--frames", str(frames)
    )
    try:
        if mode == "secure":
            return await _send_secure(port, size, frames)
        return await _send_raw(port, size, frames)
    except BaseException:  # Ctrl-C or a failure: the receiver waits for nothing more
        process.kill()
        raise
    finally:
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()


async def run_benchmark(size: int, frames: int, runs: int) -> dict[str, float | int]:
    """Alternate raw and secure runs; return the median figures."""
    secure: list[float] = []
    raw: list[float] = []
    for _ in range(runs):
        raw.append(await _one_run("raw", size, frames))
        secure.append(await _one_run("secure", size, frames))
    secure_rate = frames / median(secure)
    raw_rate = frames / median(raw)
    return {
        "size": size,
        "frames": frames,
        "runs": runs,
        "frames_per_s": secure_rate,
        "mb_per_s": secure_rate * size / 1e6,
        "raw_frames_per_s": raw_rate,
        "raw_mb_per_s": raw_rate * size / 1e6,
        "secure_vs_raw": secure_rate / raw_rate,
    }


def default_frames(size: int) -> int:
    """About 256 MB of payload, at least 2,000 and at most 400,000 frames."""
    return max(2_000, min(400_000, (256 * 1024 * 1024) // size))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``iris-trio bench link``."""
    parser = CommandParser(
        prog="iris-trio bench link", description=plain(__doc__), epilog=BENCH_EPILOG
    )
    parser.add_argument(
        "--size",
        type=at_least(1, 8 * 1024 * 1024),
        default=1024,
        metavar="BYTES",
        help="frame payload bytes, 1 to 8 MiB (default 1024)",
    )
    parser.add_argument(
        "--frames",
        type=at_least(2),
        metavar="N",
        help="frames per run (default: about 256 MB of payload, 2,000 to 400,000 frames)",
    )
    parser.add_argument(
        "--runs", type=at_least(1), default=3, metavar="N", help="runs of each kind (default 3)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON line of figures last")
    parser.add_argument("--serve", choices=["raw", "secure"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    frames = args.frames or default_frames(args.size)
    if args.serve == "secure":  # the receiver process: quiet on the terminal's Ctrl-C
        quiet_interrupt(lambda: trio.run(_serve_secure, frames))
        return
    if args.serve == "raw":
        quiet_interrupt(lambda: trio.run(_serve_raw, frames))
        return
    figures = trio.run(run_benchmark, args.size, frames, args.runs)
    emit(
        figures,
        as_json=args.json,
        title=f"secure link vs raw TCP, {args.size}-byte frames, loopback, two processes",
    )


if __name__ == "__main__":
    main()
