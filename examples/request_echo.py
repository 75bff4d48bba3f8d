"""Request/reply: an echo service with three members and a client.

The client addresses the cluster "echo" by name; each request goes to one
member, chosen by spare capacity. One member fails on purpose for "boom".

    python examples/request_echo.py
"""

from __future__ import annotations

import trio

import iris_trio


def make_handler(name: str):  # type: ignore[no-untyped-def]
    async def handler(data: bytes) -> bytes:
        if data == b"boom":
            raise ValueError(f"{name} refuses to explode")
        return f"{name} echoes ".encode() + data

    return handler


async def main() -> None:
    async with iris_trio.join(discovery="off") as client, trio.open_nursery() as services:
        for name in ("one", "two", "three"):
            member = await services.start(_member, name, client.address)
            await services.start(member.serve, make_handler(name), "echo")
        for word in (b"hello", b"world", b"again", b"boom"):
            try:
                print((await client.request("echo", word, timeout=5)).decode())
            except iris_trio.RemoteError as error:
                print(f"remote error: {error}")
        try:
            await client.request("nobody-here", b"?", timeout=5)
        except iris_trio.NoRespondersError:
            print("no responders in cluster 'nobody-here'")
        services.cancel_scope.cancel()


async def _member(name: str, seed: str, *, task_status: trio.TaskStatus[iris_trio.Node]) -> None:
    async with iris_trio.join("echo", seeds=[seed], discovery="off") as node:
        await node.wait_joined()  # it has found the others (requests would wait for it too)
        task_status.started(node)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main)
