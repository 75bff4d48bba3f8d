"""Tutorial step 3: publish/subscribe, and broadcast to a cluster.

The "calc" members publish every sum they compute on the topic "calc.sums";
an auditor node subscribes and reads the events with ``async for``. Then the
client broadcasts to every member of "calc", and each member hears it.

    python examples/tutorial_3_pubsub.py
"""

from __future__ import annotations

import trio

import iris_trio


async def calc_member(
    name: str, seed: str, heard: trio.Event, *, task_status: trio.TaskStatus[None]
) -> None:
    async with (
        iris_trio.join("calc", seeds=[seed], discovery="off") as node,
        node.broadcasts() as messages,  # the broadcasts to "calc", its cluster
        trio.open_nursery() as nursery,
    ):

        async def add(data: bytes) -> bytes:
            total = str(sum(int(word) for word in data.split())).encode()
            await node.publish("calc.sums", data + b" = " + total)
            return total

        await nursery.start(node.serve, add)
        task_status.started()
        async for message in messages:
            print(f"{name} heard the broadcast: {message.decode()}")
            heard.set()


async def auditor(seed: str, count: int, *, task_status: trio.TaskStatus[None]) -> None:
    async with (
        iris_trio.join(seeds=[seed], discovery="off") as node,
        # Returns once the subscription receives every event published from now on.
        node.subscribe("calc.sums") as sums,
    ):
        task_status.started()
        seen = 0
        async for event in sums:
            print(f"auditor saw {event.decode()}")
            seen += 1
            if seen == count:
                return


async def main() -> None:
    async with iris_trio.join(discovery="off") as client, trio.open_nursery() as nursery:
        heard = {"ann": trio.Event(), "bob": trio.Event()}
        for name, event in heard.items():
            await nursery.start(calc_member, name, client.address, event)
        async with trio.open_nursery() as audit:
            await audit.start(auditor, client.address, 3)
            for question in (b"1 2", b"3 4", b"5 6"):
                await client.request("calc", question, timeout=5)
        # The auditor has seen all three sums: every member gets this one.
        await client.broadcast("calc", b"closing time")
        for event in heard.values():  # broadcast() returns once sent, not once heard
            await event.wait()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
