"""The relay from plain asyncio: a service and a client in an asyncio program.

A node runs on this host (``iris-trio node --dev``, relay on port 55555) and
any process uses it through the Iris relay protocol. The client is written on
anyio, so this program is plain asyncio: no trio anywhere. It registers a
member of "upper", requests through the node, publishes and subscribes, and
opens a tunnel to its own service.

    iris-trio node --dev &
    python examples/relay_asyncio.py [RELAY_PORT]
"""

from __future__ import annotations

import asyncio
import sys

import iris_trio
from iris_trio.relay.client import Connection


async def upper(data: bytes) -> bytes:
    return data.upper()


async def echo_tunnels(service: Connection) -> None:
    async for tunnel in service.tunnels:
        async with tunnel:
            async for message in tunnel:
                await tunnel.send(b"echo: " + message)


async def main(port: int) -> None:
    async with (
        iris_trio.register(port, "upper") as service,  # a member of "upper"
        iris_trio.connect(port) as client,  # a plain client
        asyncio.TaskGroup() as tasks,
    ):
        serving = tasks.create_task(service.serve(upper))
        tunnels = tasks.create_task(echo_tunnels(service))

        reply = await client.request("upper", b"hello from asyncio", timeout=5)
        print("reply:", reply.decode())
        try:
            await client.request("nobody", b"?", timeout=5)
        except iris_trio.NoRespondersError:
            print("no responders for 'nobody'")

        async with client.subscribe("news") as events:  # in place once it returns
            await client.publish("news", b"relay events work")
            print("event:", (await events.receive()).decode())

        async with client.tunnel("upper", timeout=5) as tunnel:
            await tunnel.send(b"through a tunnel")
            print((await tunnel.receive()).decode())

        serving.cancel()  # the service leaves "upper" (its connection closes)
        tunnels.cancel()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 55555))
