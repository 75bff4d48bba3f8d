"""Tutorial step 1: a service cluster that answers requests.

Three nodes join the cluster "calc" and serve its requests with one handler;
a fourth node sends requests to the cluster by name. Each request goes to one
member, chosen by spare capacity.

    python examples/tutorial_1_service.py
"""

from __future__ import annotations

import trio

import iris_trio


async def add(data: bytes) -> bytes:
    """The handler: b"2 3 4" -> b"9".

    An exception here reaches the requester as ``RemoteError``; the member goes
    on serving.
    """
    return str(sum(int(word) for word in data.split())).encode()


async def calc_member(seed: str, *, task_status: trio.TaskStatus[None]) -> None:
    """One member of "calc", for as long as it is not cancelled."""
    # discovery="off" and a seed: the example's nodes find each other by address
    # and nobody else's. Leave both out and the nodes of the dev network on one
    # host find each other by themselves.
    async with iris_trio.join("calc", seeds=[seed], discovery="off") as node:
        # Started once requests can reach this member.
        await node.serve(add, task_status=task_status)


async def main() -> None:
    async with iris_trio.join(discovery="off") as node, trio.open_nursery() as members:
        for _ in range(3):
            await members.start(calc_member, node.address)
        for question in (b"2 3 4", b"40 2", b"1 1 1 1"):
            answer = await node.request("calc", question, timeout=5)
            print(f"{question.decode()} -> {answer.decode()}")
        members.cancel_scope.cancel()  # the members leave the overlay


if __name__ == "__main__":
    trio.run(main)
