"""Helpers of the churn test (tests/test_churn.py): the ledgers that count
requests, executions and events exactly, the sampling of a process's memory and
file descriptors, and a churning *member process*.

The member process (``python -m tests.helpers_churn --net ... --key ... --seed
...``) is an embedded node that serves the churn cluster with a small handler
limit (so that requests queue at it, and a kill catches some queued, some in a
handler) and subscribes to the churn topic. It prints JSON lines on stdout,
flushed at once, so that what it did before a SIGKILL is still read by the
test: ``ready`` (its address and node id), ``exec`` (a request's handler
started: printed *before* the handler does anything, so an execution is never
missed) and ``violation`` (an event arrived twice or out of order).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

import iris_trio
from iris_trio.crypto import Network, NetworkKey

CLUSTER = "churn-work"
TOPIC = "churn-news"
#: The requests' timeout; an answer later than TIMEOUT + SILENCE is "silence".
TIMEOUT = 4.0
SILENCE = 1.5

# ------------------------------------------------------------- requests


def request_data(request_id: str, pause_ms: int) -> bytes:
    return f"{request_id}|{pause_ms}".encode()


def parse_request(data: bytes) -> tuple[str, int]:
    request_id, _, pause = data.decode().partition("|")
    return request_id, int(pause)


def pick_pause(rng: random.Random) -> int:
    """Milliseconds a handler works: most requests are quick (no notice to the
    requester: a member dying then means a timeout), some long enough for the
    member to tell the requester it holds or queues them (50 ms)."""
    if rng.random() < 0.6:
        return rng.randrange(0, 30)
    return rng.randrange(80, 400)


@dataclasses.dataclass
class Outcome:
    kind: str  # reply, lost, no-responders, timeout, remote:<type>, silent
    elapsed: float
    ended_at: float
    member: str = ""  # the member named in the reply


@dataclasses.dataclass
class RequestLedger:
    """Every request sent, how it ended, and every execution of it on any member."""

    started_at: float = 0.0
    sent: dict[str, float] = dataclasses.field(default_factory=dict)
    outcomes: dict[str, Outcome] = dataclasses.field(default_factory=dict)
    executions: dict[str, list[tuple[str, float]]] = dataclasses.field(default_factory=dict)
    bad_replies: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)

    def now(self) -> float:
        return trio.current_time() - self.started_at

    def executed(self, request_id: str, member: str, at: float | None = None) -> None:
        when = self.now() if at is None else at
        self.executions.setdefault(request_id, []).append((member, when))

    def handler(self, member: str) -> Callable[[bytes], Awaitable[bytes]]:
        """A request handler (embedded or relay member in the test process)."""

        async def handle(data: bytes) -> bytes:
            request_id, pause = parse_request(data)
            self.executed(request_id, member)
            await trio.sleep(pause / 1000)
            return f"{member}|{request_id}".encode()

        return handle

    def problems(self) -> list[str]:
        """What breaks "at most once, a typed answer each": duplicates, replies
        without their execution, requests without an end, silences."""
        found: list[str] = []
        for request_id, runs in self.executions.items():
            if request_id not in self.sent:
                found.append(f"{request_id}: executed but never sent: {runs}")
            if len(runs) > 1:
                outcome = self.outcomes.get(request_id)
                found.append(
                    f"{request_id}: executed {len(runs)} times {runs}; sent at "
                    f"{self.sent.get(request_id, -1):.3f}, ended {outcome}"
                )
        for request_id, sent_at in self.sent.items():
            outcome = self.outcomes.get(request_id)
            runs = self.executions.get(request_id, [])
            if outcome is None:
                found.append(f"{request_id}: sent at {sent_at:.3f} and never ended")
            elif outcome.kind == "silent":
                found.append(f"{request_id}: no answer within its timeout + {SILENCE} s")
            elif outcome.kind == "reply" and [m for m, _ in runs] != [outcome.member]:
                found.append(f"{request_id}: replied by {outcome.member}, executions {runs}")
            elif outcome.kind == "no-responders" and runs:
                found.append(f"{request_id}: NoRespondersError but executed {runs}")
        found += [f"{rid}: a reply that is not its own: {data!r}" for rid, data in self.bad_replies]
        return found

    def counts(self) -> dict[str, int]:
        tally: dict[str, int] = {"sent": len(self.sent)}
        for outcome in self.outcomes.values():
            tally[outcome.kind] = tally.get(outcome.kind, 0) + 1
        tally["executions"] = sum(len(runs) for runs in self.executions.values())
        tally["executed_not_answered"] = sum(
            1
            for rid, runs in self.executions.items()
            if runs and (o := self.outcomes.get(rid)) is not None and o.kind != "reply"
        )
        return tally


# --------------------------------------------------------------- events


def event_data(publisher: str, number: int) -> bytes:
    return f"{publisher}|{number}".encode()


@dataclasses.dataclass
class EventLedger:
    """What one subscriber received, per publisher: duplicates and reorderings."""

    name: str
    clock: Callable[[], float] | None = None  # stamps violations (seconds into the test)
    last: dict[str, int] = dataclasses.field(default_factory=dict)
    seen: dict[str, set[int]] = dataclasses.field(default_factory=dict)
    received: int = 0  # distinct events
    violations: list[str] = dataclasses.field(default_factory=list)  # duplicates
    reordered: list[str] = dataclasses.field(default_factory=list)  # late, not duplicates

    def take(self, data: bytes) -> None:
        publisher, _, number_text = data.decode().partition("|")
        number = int(number_text)
        seen = self.seen.setdefault(publisher, set())
        previous = self.last.get(publisher, -1)
        at = f" at {self.clock():.2f} s" if self.clock is not None else ""
        if number in seen:
            self.violations.append(
                f"{self.name}: {publisher} #{number} twice (last #{previous}){at}"
            )
            return
        if number < previous:
            self.reordered.append(f"{self.name}: {publisher} #{number} after #{previous}{at}")
        seen.add(number)
        self.last[publisher] = max(previous, number)
        self.received += 1


# ------------------------------------------------------------ resources


def resources(pid: int) -> tuple[int, int]:
    """(resident set size in bytes, open file descriptors) of process ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------- the member process

#: Where ``python -m tests.helpers_churn`` finds this module.
_REPOSITORY = str(Path(__file__).resolve().parent.parent)


class MemberProcess:
    """A churning member process (this module run as a script) and what it printed."""

    def __init__(self, process: trio.Process, name: str, ledger: RequestLedger) -> None:
        self.process = process
        self.name = name
        self.ledger = ledger
        self.ready: dict[str, Any] = {}
        self.is_ready = trio.Event()
        self.finished = trio.Event()  # stdout ended (the process is gone)
        self.violations: list[str] = []
        self.reordered: list[str] = []

    async def read(self) -> None:
        """Follow stdout to its end (run as a task): executions go to the ledger
        with the time they were read (the process prints them as they start)."""
        assert self.process.stdout is not None
        buffer = b""
        try:
            async for chunk in self.process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    record = json.loads(line)
                    if record["event"] == "ready":
                        self.ready = record
                        self.is_ready.set()
                    elif record["event"] == "exec":
                        self.ledger.executed(record["id"], self.name)
                    elif record["event"] == "violation":
                        self.violations.append(record["text"])
                    elif record["event"] == "reordered":
                        self.reordered.append(record["text"])
        finally:
            self.finished.set()

    def kill(self) -> None:
        """SIGKILL this process (by its pid), if it still runs."""
        if self.process.returncode is None:
            self.process.kill()


async def start_member(
    name: str, ledger: RequestLedger, network: str, key_file: Path, seed: str
) -> MemberProcess:
    process = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "tests.helpers_churn"),
            *("--net", network, "--key", str(key_file), "--seed", seed, "--name", name),
        ],
        stdout=subprocess.PIPE,
        cwd=_REPOSITORY,
    )
    return MemberProcess(process, name, ledger)


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def _member_main(args: argparse.Namespace) -> None:
    network = Network(args.net, NetworkKey.from_file(args.key))
    async with trio.open_nursery() as nursery:
        node: iris_trio.Node = await nursery.start(
            functools.partial(
                iris_trio.serve_node,
                network=network,
                listen="127.0.0.1:0",
                seeds=[args.seed],
                discovery="off",
            )
        )
        _emit({"event": "ready", "address": node.address, "node_id": node.statistics().node_id})

        async def handle(data: bytes) -> bytes:
            request_id, pause = parse_request(data)
            _emit({"event": "exec", "id": request_id})
            await trio.sleep(pause / 1000)
            return f"{args.name}|{request_id}".encode()

        await nursery.start(functools.partial(node.serve, handle, CLUSTER, limit=2))
        events = EventLedger(args.name)
        async with node.subscribe(TOPIC) as subscription:
            async for data in subscription:
                duplicates, reordered = len(events.violations), len(events.reordered)
                events.take(data)
                for text in events.violations[duplicates:]:
                    _emit({"event": "violation", "text": text})
                for text in events.reordered[reordered:]:
                    _emit({"event": "reordered", "text": text})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.helpers_churn")
    parser.add_argument("--net", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--seed", required=True)
    parser.add_argument("--name", required=True)
    trio.run(_member_main, parser.parse_args())


if __name__ == "__main__":
    main()
