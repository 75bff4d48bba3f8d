"""Tutorial step 2: a client, and every answer it can get.

The client runs beside the "calc" service of step 1 (and a slow service) and
meets each outcome of a request: a reply, the handler's error, a cluster
nobody serves, and a timeout. It also sends requests concurrently and bounds
a whole batch with one trio deadline.

    python examples/tutorial_2_client.py
"""

from __future__ import annotations

import trio

import iris_trio
from tutorial_1_service import calc_member


async def slow(data: bytes) -> bytes:
    await trio.sleep(10)  # longer than the client waits
    return data


async def slow_member(seed: str, *, task_status: trio.TaskStatus[None]) -> None:
    async with iris_trio.join("slow", seeds=[seed], discovery="off") as node:
        await node.serve(slow, task_status=task_status)


async def main() -> None:
    async with iris_trio.join(discovery="off") as client, trio.open_nursery() as services:
        await client.wait_joined()  # not needed (calls wait themselves): shown here
        await services.start(calc_member, client.address)
        await services.start(slow_member, client.address)

        print("reply:", (await client.request("calc", b"20 22", timeout=5)).decode())
        try:
            await client.request("calc", b"two plus two", timeout=5)
        except iris_trio.RemoteError as error:
            print(f"remote error: {error.type_name}: {error.message}")
        try:
            await client.request("nobody", b"1 1", timeout=5)
        except iris_trio.NoRespondersError:
            print("no responders: nobody serves 'nobody' (raised at once)")
        try:
            await client.request("slow", b"...", timeout=0.5)
        except iris_trio.RequestTimeoutError:
            print("timed out: 'slow' did not answer within 0.5 s")

        # Many requests at once, all under one deadline (the caller's cancel
        # scope bounds every request inside it, as timeout= does one).
        answers: dict[int, bytes] = {}

        async def ask(n: int) -> None:
            answers[n] = await client.request("calc", f"{n} {n}".encode())

        with trio.fail_after(10):
            async with trio.open_nursery() as batch:
                for n in range(20):
                    batch.start_soon(ask, n)
        right = all(answers[n] == str(2 * n).encode() for n in range(20))
        print(f"{len(answers)} concurrent replies, all right: {right}")
        services.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
