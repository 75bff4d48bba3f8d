"""Broadcast: every member of the "chat" cluster hears every message.

Four nodes on the dev network; three join the cluster and print what they hear,
the fourth (not a member) broadcasts.

    python examples/broadcast_chat.py
"""

from __future__ import annotations

import trio

import iris_trio

LINES = [b"hello, cluster", b"this reaches every member", b"exactly once, in order"]


async def member(name: str, seed: str, ready: trio.Event) -> None:
    # broadcasts() returns once this member receives: it has joined the overlay
    # and the cluster's tree has taken it in.
    async with (
        iris_trio.join("chat", seeds=[seed], discovery="off") as node,
        node.broadcasts() as messages,
    ):
        ready.set()
        for _ in LINES:
            print(f"{name} heard: {(await messages.receive()).decode()}")


async def main() -> None:
    async with iris_trio.join(discovery="off") as speaker, trio.open_nursery() as nursery:
        readies = [trio.Event() for _ in range(3)]
        for name, ready in zip(("ann", "ben", "cat"), readies, strict=True):
            nursery.start_soon(member, name, speaker.address, ready)
        for ready in readies:
            await ready.wait()
        for line in LINES:
            await speaker.broadcast("chat", line)


if __name__ == "__main__":
    trio.run(main)
