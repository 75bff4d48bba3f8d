"""``iris-trio demo``: a live look at what exists so far.

Two nodes on the loopback-only dev network: one listens, one dials; they run
the Noise handshake, then stream frames over the encrypted link while a
summary line per second shows throughput, records and round-trip time.
"""

from __future__ import annotations

import argparse
import time

import trio

from .crypto.identity import NodeIdentity
from .crypto.keys import DEV_NETWORK
from .transport.link import Link
from .transport.listener import LinkListener, serve_tcp_links
from .transport.tcp import connect_tcp_link
from .wire.frames import Frame, Payload

_STREAM, _PING = 0, 1


async def _run(seconds: float, size: int) -> None:
    server_id, client_id = NodeIdentity.generate(), NodeIdentity.generate()
    print(f"dev network {DEV_NETWORK.name!r} (published key: loopback use only)")
    print(f"node A {server_id.node_id.hex()}  listening")
    print(f"node B {client_id.node_id.hex()}  dialing")
    received = 0

    def on_frame(link: Link, frame: Frame) -> None:
        nonlocal received
        if isinstance(frame, Payload) and frame.channel == _PING:
            link.send_nowait(frame)  # echo for the round-trip measurement
        else:
            received += 1

    async def hold(link: Link) -> None:
        await link.wait_closed()

    async with trio.open_nursery() as nursery:
        listener: LinkListener = await nursery.start(
            lambda task_status: serve_tcp_links(
                hold,
                0,
                identity=server_id,
                network=DEV_NETWORK,
                on_frame=on_frame,
                task_status=task_status,
            )
        )
        host, port = listener.listen.rsplit(":", 1)
        async with connect_tcp_link(
            host, int(port), identity=client_id, network=DEV_NETWORK
        ) as link:
            print(
                f"handshake done: Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b, peer "
                f"{link.peer_id.hex()[:16]}..., transcript {link.handshake_hash.hex()[:16]}..."
            )
            frame = Payload(_STREAM, bytes(size))
            deadline = trio.current_time() + seconds
            last_count, last_time = 0, time.perf_counter()
            while trio.current_time() < deadline:
                second_end = trio.current_time() + 1
                while trio.current_time() < second_end:
                    for _ in range(256):
                        try:
                            link.send_nowait(frame)
                        except trio.WouldBlock:
                            await link.send(frame)
                    await trio.lowlevel.checkpoint()
                start = time.perf_counter()
                await link.send(Payload(_PING, b""))
                await link.receive()
                rtt_us = (time.perf_counter() - start) * 1e6
                now = time.perf_counter()
                rate = (received - last_count) / (now - last_time)
                last_count, last_time = received, now
                stats = link.statistics()
                print(
                    f"  {rate:>10,.0f} frames/s  {rate * size / 1e6:>7,.1f} MB/s  "
                    f"{stats.records_sent:>8,} records  rtt under load {rtt_us:>8,.0f} us"
                )
        nursery.cancel_scope.cancel()
    print(f"{received:,} frames of {size} bytes delivered, encrypted, in order.")


def main(argv: list[str]) -> int:
    """Entry point of ``iris-trio demo``."""
    parser = argparse.ArgumentParser(prog="iris-trio demo", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args(argv)
    trio.run(_run, args.seconds, args.size)
    return 0
