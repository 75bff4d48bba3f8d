"""Publish/subscribe: a ticker publishes prices, two subscribers print them.

Three nodes on the dev network (loopback only), each its own `join()`; the
subscribers find the publisher through the overlay, not through addresses.

    python examples/pubsub_ticker.py
"""

from __future__ import annotations

import trio

import iris_trio

TICKS = 10


async def subscriber(name: str, ready: trio.Event, seed: str) -> None:
    # subscribe() returns once the subscription receives every tick published
    # from then on.
    async with (
        iris_trio.join(seeds=[seed], discovery="off") as node,
        node.subscribe("prices") as ticks,
    ):
        ready.set()
        for _ in range(TICKS):
            print(f"{name} got {(await ticks.receive()).decode()}")


async def main() -> None:
    async with iris_trio.join(discovery="off") as ticker, trio.open_nursery() as nursery:
        readies = [trio.Event(), trio.Event()]
        for name, ready in zip(("alice", "bob"), readies, strict=True):
            nursery.start_soon(subscriber, name, ready, ticker.address)
        for ready in readies:
            await ready.wait()
        for tick in range(TICKS):
            await ticker.publish("prices", f"IRIS {100 + tick}.00".encode())
            await trio.sleep(0.05)  # a ticker's pace


if __name__ == "__main__":
    trio.run(main)
