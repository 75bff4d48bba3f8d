"""A stateful service on the patterns: a key-value store, partitioned.

Load balancing sends each request to *one* member. A "kv" cluster whose
members each keep their own dict therefore answers a read from whichever
member it reaches, which may not be the one that took the write: a stale (or
missing) value. The first half shows that.

The second half partitions the keys: shard i is the cluster "kv.shard-i",
served by one member, and a client sends each key's requests to the shard a
stable hash of the key names. Every read reaches the member that holds the
key, so it sees the last write. (The price: a shard whose member is gone
answers NoRespondersError until a member serves it again.)

    python examples/kv_partitioned.py
"""

from __future__ import annotations

import zlib

import trio

import iris_trio

SHARDS = 3


def kv_handler(store: dict[bytes, bytes]):  # type: ignore[no-untyped-def]
    """b"put KEY VALUE" -> b"ok"; b"get KEY" -> the value, or b"" for none."""

    async def handle(data: bytes) -> bytes:
        command, key, *value = data.split(b" ", 2)
        if command == b"put":
            store[key] = value[0]
            return b"ok"
        if command == b"get":
            return store.get(key, b"")
        raise ValueError(f"unknown command {command!r}")

    return handle


async def kv_member(cluster: str, seed: str, *, task_status: trio.TaskStatus[None]) -> None:
    store: dict[bytes, bytes] = {}  # this member's state: nobody else's
    async with iris_trio.join(cluster, seeds=[seed], discovery="off") as node:
        await node.serve(kv_handler(store), task_status=task_status)


def shard_of(key: bytes) -> str:
    """The cluster that holds ``key``: the same for every client (a stable hash,
    not Python's hash(), which differs between processes)."""
    return f"kv.shard-{zlib.crc32(key) % SHARDS}"


async def main() -> None:
    async with iris_trio.join(discovery="off") as client, trio.open_nursery() as nursery:
        # Load balanced, state not shared: reads can miss their write.
        for _ in range(2):
            await nursery.start(kv_member, "kv", client.address)
        stale = 0
        for n in range(20):
            await client.request("kv", b"put key-%d value-%d" % (n, n), timeout=5)
            stale += await client.request("kv", b"get key-%d" % n, timeout=5) != b"value-%d" % n
        print(f"load-balanced kv: {stale} of 20 reads did not see their write")

        # Partitioned: one member per shard, each key always in the same shard.
        for shard in range(SHARDS):
            await nursery.start(kv_member, f"kv.shard-{shard}", client.address)
        fresh = 0
        for n in range(20):
            key = b"key-%d" % n
            await client.request(shard_of(key), b"put " + key + b" value-%d" % n, timeout=5)
            fresh += (
                await client.request(shard_of(key), b"get " + key, timeout=5) == b"value-%d" % n
            )
        print(f"partitioned kv: {fresh} of 20 reads saw their write")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
