"""Tutorial step 5: several processes.

Each member of "calc" is now a process of its own: this program starts three
(``python tutorial_5_processes.py member SEED``), waits until each says it
serves, sends requests, then stops them. A member leaves the overlay
gracefully on SIGTERM or Ctrl-C, so its requests go to the others.

    python examples/tutorial_5_processes.py
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections import Counter

import trio

import iris_trio
from tutorial_1_service import add

MEMBERS = 3


async def member(seed: str) -> None:
    """A member process: serve "calc" until SIGTERM or SIGINT, then leave."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            iris_trio.join("calc", seeds=[seed], discovery="off") as node,
            trio.open_nursery() as nursery,
        ):

            async def add_and_sign(data: bytes) -> bytes:
                return await add(data) + f" (pid {os.getpid()})".encode()

            await nursery.start(node.serve, add_and_sign)
            print("serving", flush=True)  # the parent waits for this line
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()  # stop serving; join() then leaves


async def wait_for_line(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some()
        if not chunk:
            raise RuntimeError("the member process ended before it served")
        data += chunk
    return data


async def main() -> None:
    command = [sys.executable, __file__, "member"]
    async with iris_trio.join(discovery="off") as client, trio.open_nursery() as nursery:
        for _ in range(MEMBERS):
            run = functools.partial(
                trio.run_process, [*command, client.address], stdout=subprocess.PIPE
            )
            process: trio.Process = await nursery.start(run)
            assert process.stdout is not None
            await wait_for_line(process.stdout)
        print(f"{MEMBERS} member processes serve 'calc'")
        answered_by: Counter[str] = Counter()
        for n in range(30):
            answer = (await client.request("calc", f"{n} 1".encode(), timeout=5)).decode()
            answered_by[answer.split("pid ")[1]] += 1
        print(f"30 requests answered by {len(answered_by)} processes")
        # Cancelling run_process sends SIGTERM to each member and waits for it.
        nursery.cancel_scope.cancel()
    print("the members have left")


if __name__ == "__main__":
    if sys.argv[1:2] == ["member"]:
        trio.run(member, sys.argv[2])
    else:
        trio.run(main)
