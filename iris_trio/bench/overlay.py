"""``iris-trio bench overlay``: the overlay in the simulator, and with real processes.

Simulation (``--nodes N``): N nodes join one after another (20 ms apart) under
the default overlay configuration; reported: virtual seconds from the last join
until the oracle finds every leaf set and routing table right, hops of 10,000
random lookups (mean, p99) and the fraction delivered to the right node,
overlay frames per node per second once converged (heartbeats, gossip, acks),
and the memory of one node's overlay state.

Real processes (``--real``): 15 ``iris-trio node --dev`` processes on loopback
discovery converge; then a 16th starts; reported: seconds from its start until
every node's leaf set is right again.
"""

from __future__ import annotations

import random
import statistics
import sys
from collections.abc import Iterable
from typing import Any

import trio

from .._command import BENCH_EPILOG, CommandParser, at_least, plain
from ..overlay.config import OverlayConfig
from ..testing.processes import NodeProcess, leaves_match, start_node, wait_for
from ..testing.simulator import Simulation
from ._common import emit

__all__ = ["main"]


def deep_size(root: object) -> int:
    """Bytes held by ``root`` and everything reachable from it (shared objects once)."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        else:
            stack.extend(_attributes(obj))
    return total


def _attributes(obj: object) -> Iterable[object]:
    if hasattr(obj, "__dict__"):
        yield from vars(obj).values()
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name):
                yield getattr(obj, name)


def simulate(nodes: int, seed: int) -> dict[str, Any]:
    """Run the simulation scenario; return its figures."""
    sim = Simulation(seed, config=OverlayConfig(), beacon_interval=2.0)
    for _ in range(nodes):
        sim.spawn()
        sim.run_for(0.02)
    converge = sim.run_until_converged(600.0, step=0.5)
    if converge is None:
        raise SystemExit(f"no convergence after 600 virtual seconds ({sim.describe()})")
    rng = random.Random(seed)
    live = [n.id for n in sim.live_nodes()]
    sent = [sim.lookup(rng.choice(live), rng.getrandbits(128)) for _ in range(10_000)]
    sim.run_for(5)
    hops = sorted(sim.lookups[m].deliveries[0].hops for m in sent if sim.lookups[m].deliveries)
    correct = sum(
        1
        for m in sent
        if len(sim.lookups[m].deliveries) == 1 and sim.lookups[m].deliveries[0].correct
    )
    before, window = sim.frames_sent, 30.0
    sim.run_for(window)
    maintenance = (sim.frames_sent - before) / nodes / window
    sizes = [deep_size(n.overlay) for n in rng.sample(sim.live_nodes(), min(50, nodes))]
    return {
        "nodes": nodes,
        "converge_s": converge,
        "hops_mean": statistics.mean(hops),
        "hops_p99": hops[int(0.99 * (len(hops) - 1))],
        "correct": correct / len(sent),
        "maintenance_msgs_per_node_s": maintenance,
        "bytes_per_node": int(statistics.mean(sizes)),
    }


async def real_processes(count: int) -> dict[str, Any]:
    """Start ``count - 1`` node processes, then one more; time its convergence."""
    nodes: list[NodeProcess] = []
    async with trio.open_nursery() as nursery:
        try:
            arguments = (
                "--dev",
                "--port",
                "0",
                "--discovery",
                "loopback",
                "--status-interval",
                "0.1",
            )
            for _ in range(count - 1):
                nodes.append(await start_node(*arguments))
                nursery.start_soon(nodes[-1].read)
            await wait_for(nodes, leaves_match, timeout=120)
            start = trio.current_time()
            nodes.append(await start_node(*arguments))
            nursery.start_soon(nodes[-1].read)
            await wait_for(nodes, leaves_match, timeout=120)
            took = trio.current_time() - start
        finally:
            for node in nodes:
                node.kill()
            nursery.cancel_scope.cancel()
    return {"processes": count, "new_node_converged_s": took}


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``iris-trio bench overlay``."""
    parser = CommandParser(
        prog="iris-trio bench overlay", description=plain(__doc__), epilog=BENCH_EPILOG
    )
    parser.add_argument(
        "--nodes",
        type=at_least(2),
        default=300,
        metavar="N",
        help="simulated nodes, at least 2 (default 300)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        metavar="N",
        help="random seed of the simulation: the same seed, the same run (default 1)",
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="16 real node processes on loopback instead of the simulation",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON line of figures last")
    args = parser.parse_args(argv)
    if args.real:
        figures = trio.run(real_processes, 16)
        emit(figures, as_json=args.json, title="overlay, real processes on loopback")
        return
    emit(
        simulate(args.nodes, args.seed),
        as_json=args.json,
        title=f"overlay simulation, {args.nodes} nodes",
    )
