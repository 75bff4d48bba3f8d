"""Tutorial step 6: from the dev network to a network of your own.

The dev network is for one machine: its key is published. A real network is a
name and a secret 32-byte key that every node holds (``iris-trio keygen
FILE`` creates one). Each node also keeps its identity (its key pair, hence
its overlay id) in a file across restarts, listens on an address the other
hosts can reach, and joins through seeds (or LAN discovery). A node with
another key is refused by every peer.

    python examples/tutorial_6_real_network.py
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import trio

import iris_trio
from tutorial_1_service import add

NETWORK = "tutorial"


def write_key(path: Path) -> None:
    """What ``iris-trio keygen PATH`` does: a random key, base64, owner-only."""
    path.touch(mode=0o600)
    path.write_text(base64.b64encode(iris_trio.NetworkKey.generate().secret).decode() + "\n")


def load_identity(path: Path) -> iris_trio.NodeIdentity:
    """The node's identity from ``path``; a new one, saved there, the first time."""
    if path.exists():
        return iris_trio.NodeIdentity.load(path)
    created = iris_trio.NodeIdentity.generate()
    created.save(path)
    return created


def join_tutorial(
    key: iris_trio.NetworkKey,
    cluster: str | None = None,
    *,
    seeds: Sequence[str] = (),
    identity: iris_trio.NodeIdentity | None = None,
) -> AbstractAsyncContextManager[iris_trio.Node]:
    return iris_trio.join(
        cluster,
        network=NETWORK,
        key=key,
        # On a real host: an address of this host the others can reach (a fixed
        # port for seeds, e.g. "10.0.0.5:4000"), or "0.0.0.0:0" (the default).
        listen="127.0.0.1:0",
        seeds=seeds,
        # On a LAN, discovery="lan" (the default of a real network) finds the
        # other nodes by UDP broadcast; here they know each other's addresses.
        discovery="off",
        identity=identity,
    )


async def main(directory: Path) -> None:
    write_key(directory / "network.key")
    key = iris_trio.NetworkKey.from_file(directory / "network.key")  # raw, hex or base64
    seed_identity = load_identity(directory / "seed.id")
    async with (
        join_tutorial(key, "calc", identity=seed_identity) as seed,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(seed.serve, add)
        print(f"seed node {seed.id.hex()} listens at {seed.address}")

        async with join_tutorial(key, seeds=[seed.address]) as client:
            print("client: 2 2 ->", (await client.request("calc", b"2 2", timeout=5)).decode())

        # A node with another key: every handshake fails (and is logged as a
        # warning), so it stays alone and finds nobody serving "calc".
        other_key = iris_trio.NetworkKey.generate()
        async with join_tutorial(other_key, seeds=[seed.address]) as outsider:
            try:
                await outsider.request("calc", b"2 2", timeout=5)
            except iris_trio.NoRespondersError:
                print("a node with another key: no responders (it never got in)")
        nursery.cancel_scope.cancel()

    restarted = load_identity(directory / "seed.id")
    print(f"same node id after a restart: {restarted.node_id == seed_identity.node_id}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as temporary:
        trio.run(main, Path(temporary))
