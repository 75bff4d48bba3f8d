"""Tutorial step 4: a tunnel, an ordered two-way channel to one member.

A member of "running-sum" takes tunnels: for every number it reads it sends
back the running total. The client opens a tunnel to the cluster, sends 100
numbers from one task and reads the 100 totals in another; leaving
``async with tunnel`` closes it cleanly and the member's loop ends.

    python examples/tutorial_4_tunnel.py
"""

from __future__ import annotations

import trio

import iris_trio


async def summer(seed: str, done: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
    async with (
        iris_trio.join("running-sum", seeds=[seed], discovery="off") as node,
        node.tunnels() as incoming,
        trio.open_nursery() as nursery,
    ):
        task_status.started()
        async for tunnel in incoming:
            nursery.start_soon(serve_tunnel, tunnel, done)


async def serve_tunnel(tunnel: iris_trio.Tunnel, done: trio.Event) -> None:
    async with tunnel:  # the received tunnel belongs to us: close it when done
        total = 0
        async for message in tunnel:  # ends at the opener's clean close
            total += int(message)
            await tunnel.send(str(total).encode())
    print(f"member: the client closed the tunnel; total {total}")
    done.set()


async def main() -> None:
    async with iris_trio.join(discovery="off") as client, trio.open_nursery() as nursery:
        member_done = trio.Event()
        await nursery.start(summer, client.address, member_done)
        async with client.tunnel("running-sum", timeout=5) as tunnel:

            async def send_numbers() -> None:
                for n in range(1, 101):
                    await tunnel.send(str(n).encode())  # waits if the member lags

            totals = []
            async with trio.open_nursery() as both:
                both.start_soon(send_numbers)
                for _ in range(100):
                    totals.append(int(await tunnel.receive()))
        print(f"client: 100 totals in order, the last {totals[-1]}")
        await member_done.wait()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
