"""Tunnels: copy a file to a "storage" member through an ordered, flow-controlled tunnel.

The client opens a tunnel to the cluster "storage" by name, sends the file in
pieces of any size, then its BLAKE2b digest; the member writes what it gets to
a new file and answers with the digest of what it wrote.

    python examples/tunnel_copy.py [FILE]      (default: 20 MB of random bytes)
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

import iris_trio


async def store(tunnel: iris_trio.Tunnel, directory: Path) -> None:
    """The member side: write the pieces to a file until the digest arrives."""
    async with tunnel:
        name = (await tunnel.receive()).decode()
        target = trio.Path(directory) / f"copy-of-{name}"
        digest = hashlib.blake2b()
        async with await target.open("wb") as file:
            while (piece := await tunnel.receive()) != b"":  # an empty message ends the file
                await file.write(piece)
                digest.update(piece)
        await tunnel.send(digest.hexdigest().encode())
        print(f"member wrote {(await target.stat()).st_size:,} bytes to {target.name}")


async def storage_member(seed: str, directory: Path, *, task_status: trio.TaskStatus[None]) -> None:
    async with iris_trio.join(seeds=[seed], discovery="off") as node:
        await node.wait_joined()  # it has found the others (requests would wait for it too)
        async with node.tunnels("storage") as incoming, trio.open_nursery() as copies:
            task_status.started()
            async for tunnel in incoming:
                copies.start_soon(store, tunnel, directory)


async def main(source: Path) -> None:
    with tempfile.TemporaryDirectory() as directory:
        async with iris_trio.join(discovery="off") as client, trio.open_nursery() as nursery:
            await nursery.start(storage_member, client.address, Path(directory))
            digest = hashlib.blake2b()
            started = time.perf_counter()
            async with client.tunnel("storage", timeout=10) as tunnel:
                await tunnel.send(source.name.encode())
                async with await trio.open_file(source, "rb") as file:
                    while piece := await file.read(256 * 1024):
                        await tunnel.send(piece)
                        digest.update(piece)
                await tunnel.send(b"")
                answer = (await tunnel.receive()).decode()
            took = time.perf_counter() - started
            size = (await trio.Path(source).stat()).st_size
            verdict = "match" if answer == digest.hexdigest() else "DIFFER"
            print(f"copied {size:,} bytes in {took:.2f} s ({size / took / 1e6:.1f} MB/s)")
            print(f"digests {verdict}: {answer[:16]}...")
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        trio.run(main, Path(sys.argv[1]))
    else:
        with tempfile.NamedTemporaryFile(suffix=".bin") as sample:
            sample.write(os.urandom(20 * 1024 * 1024))
            sample.flush()
            trio.run(main, Path(sample.name))
