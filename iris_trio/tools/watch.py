"""``iris-trio status`` and ``iris-trio top``: a node's figures from its monitor,
as a readable summary (once, or refreshed in the terminal)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from typing import Any, Final

import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .._command import at_least
from ..monitor import DEFAULT_MONITOR_PORT
from ..monitor.fetch import MonitorUnavailableError, fetch, monitor_url
from ._common import (
    ToolError,
    ToolParser,
    escape_controls,
    positive_seconds,
    run_tool,
    until_stopped,
)

__all__ = ["main_status", "main_top", "render_status"]

#: The environment variable naming the monitor (as ``iris-trio node --monitor``).
MONITOR_VARIABLE: Final = "IRIS_TRIO_MONITOR"
#: The monitor asked when neither --monitor nor IRIS_TRIO_MONITOR says.
DEFAULT_MONITOR: Final = f"127.0.0.1:{DEFAULT_MONITOR_PORT}"
_FETCH_TIMEOUT: Final = 5.0

Status = Mapping[str, Any]


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    for size, unit in ((1e9, " G"), (1e6, " M"), (1e4, " k")):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _rate(status: Status, name: str) -> str:
    value = status["rates"].get(name)
    return "" if not value else f" ({_number(value)}/s)"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def _short(node: str | None) -> str:
    return node[:8] if node else "—"


def _wrap(items: list[str], width: int = 66) -> str:
    """``items`` joined by two spaces, broken into lines of about ``width``."""
    lines = [""]
    for item in items:
        if lines[-1] and len(lines[-1]) + 2 + len(item) > width:
            lines.append("")
        lines[-1] = f"{lines[-1]}  {item}" if lines[-1] else item
    return "\n".join(lines)


def _figures(status: Status) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    requests, events, tunnels = status["requests"], status["events"], status["tunnels"]
    links, drops = status["links"], status["drops"]
    rows = {
        "requests": [
            f"sent {requests['sent']}{_rate(status, 'requests_sent')}",
            f"answered {requests['answered']}",
            f"failed {requests['failed']}",
            f"pending {requests['pending']}",
            f"received {requests.get('received', '—')}",
            f"served {requests['served']}{_rate(status, 'requests_served')}",
            f"expired {requests['expired']}",
            f"refused {requests['refused']}",
        ],
        "events": [
            f"published {events['published']}{_rate(status, 'events_published')}",
            f"broadcasts {events['broadcasts_sent']}",
            f"received {events['received']}{_rate(status, 'events_received')}",
            f"dropped {events['dropped']}",
            f"missed {_number(events['missed'])}",
            f"buffered {events['buffered']}",
        ],
        "tunnels": [
            f"opened {tunnels['opened']}",
            f"accepted {tunnels['accepted']}",
            f"open {tunnels['open']}",
            f"bytes out {_number(tunnels['bytes_sent'])}",
            f"in {_number(tunnels['bytes_received'])}",
        ],
        "links": [
            f"open {links['open']}",
            f"bytes out {_number(links['bytes_sent'])}{_rate(status, 'link_bytes_sent')}",
            f"in {_number(links['bytes_received'])}{_rate(status, 'link_bytes_received')}",
        ],
        "drops": [
            f"full link queue {drops['link_queue_full']}",
            f"routed {drops['routed_dropped']}",
            f"tree {drops['tree_messages_dropped']}",
            f"relay events {_number(drops['relay_events_dropped'])}",
            f"peers declared dead {drops['peers_declared_dead']}",
        ],
    }
    relay = status.get("relay")
    if relay is not None:
        rows["relay"] = [
            f"port {relay['port']}",
            f"clients {relay['connections_open']} now, {relay['connections_accepted']} ever",
            f"protocol violations {relay['protocol_violations']}",
            f"internal errors {relay['internal_errors']}",
        ]
    for section, items in rows.items():
        table.add_row(section, _wrap(items))
    return table


def _peers(status: Status) -> Table:
    table = Table(title="peers", title_justify="left", box=None, padding=(0, 2, 0, 0))
    for column in ("peer", "address", "role", "link age", "RTT", "queued", "bytes out", "in"):
        left = column in {"peer", "address", "role"}
        table.add_column(column, justify="left" if left else "right")
    for peer in status["peers"]:
        role = "leaf" if peer["leaf"] else "table" if peer["in_table"] else "link"
        rtt = "—" if peer["rtt_ms"] is None else f"{peer['rtt_ms']:.1f} ms"
        table.add_row(
            _short(peer["id"]),
            peer["address"],
            role,
            _duration(peer["link_age_s"]),
            rtt,
            _number(peer["queued_bytes"]),
            _number(peer["bytes_sent"]),
            _number(peer["bytes_received"]),
        )
    return table


def _trees(status: Status) -> Table:
    table = Table(title="trees", title_justify="left", box=None, padding=(0, 2, 0, 0))
    for column in ("tree", "role", "parent", "children"):
        table.add_column(column)
    for tree in status["trees"]:
        name = f"{tree['kind']} {tree['name']}" if tree["name"] is not None else _short(tree["id"])
        role = "root" if tree["root"] else "member" if tree["member"] else "forwarder"
        if tree["root"] and tree["member"]:
            role += ", member"
        children = " ".join(_short(child) for child in tree["children"]) or "—"
        table.add_row(name, role, _short(tree["parent"]), children)
    return table


def _printable(value: Any) -> Any:
    """``value`` (a JSON document) with control characters escaped in its
    strings: what a monitor (or a peer, through it) says cannot drive the terminal."""
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, list):
        return [_printable(item) for item in value]
    if isinstance(value, dict):
        return {key: _printable(item) for key, item in value.items()}
    return value


def render_status(status: Status) -> RenderableType:
    """A readable summary of a ``/status`` document (for rich)."""
    status = _printable(status)
    joined = "joined" if status["joined"] else "joining"
    head = Text.assemble(
        ("node ", "bold"),
        status["node_id"],
        "  ",
        (joined, "green" if status["joined"] else "yellow"),
        f"\nnetwork {status['network']}  version {status['version']}  "
        f"up {_duration(status['uptime_s'])}",
    )
    address = status["address"]
    table = status["routing_table"]
    leaves = {*status["leaf_set"]["right"], *status["leaf_set"]["left"]}
    overlay = Text(
        f"address {address['advertised']} (listen {address['listen']})\n"
        f"peers {len(status['peers'])}  leaf set {len(leaves)}  routing table "
        f"{table['entries']} entries in {table['filled_rows']} rows  "
        f"(rates over {status['rates']['window_s']:g} s)"
    )
    parts: list[RenderableType] = [head, overlay, Text(""), _figures(status)]
    if status["peers"]:
        parts += [Text(""), _peers(status)]
    if status["trees"]:
        parts += [Text(""), _trees(status)]
    return Group(*parts)


def _monitor(args: argparse.Namespace) -> str:
    if args.monitor:
        text, source = args.monitor, "--monitor"
    else:
        text, source = os.environ.get(MONITOR_VARIABLE) or DEFAULT_MONITOR, MONITOR_VARIABLE
    try:
        return monitor_url(text)
    except ValueError as exc:
        raise ToolError(f"{source}: {exc}", 2) from None


async def read_status(url: str, *, advice: bool = True) -> dict[str, Any]:
    """The ``/status`` document of the monitor at ``url``.

    Raises:
        ToolError: no monitor answered (with ``advice``, the message says how
            to start one), or what answered was not one.
    """
    with trio.move_on_after(_FETCH_TIMEOUT):
        try:
            page = await fetch(url + "/status", accept="application/json")
        except MonitorUnavailableError as exc:
            if exc.listening or not advice:
                raise ToolError(str(exc)) from None
            raise ToolError(
                f"{exc}; start the node with --monitor HOST:PORT and give that address "
                f"with --monitor or {MONITOR_VARIABLE}"
            ) from None
        if page.status != 200:
            raise ToolError(f"{url}/status answered HTTP {page.status}: is it a node's monitor?")
        try:
            document = json.loads(page.body)
        except ValueError:
            document = None
        if not isinstance(document, dict) or "node_id" not in document:
            raise ToolError(f"{url}/status is not a node's status: is it a node's monitor?")
        return document
    raise ToolError(f"the monitor at {url} did not answer within {_FETCH_TIMEOUT:g} s")


def _parser(name: str, description: str) -> ToolParser:
    parser = ToolParser(prog=f"iris-trio {name}", description=description)
    parser.add_argument(
        "--monitor",
        metavar="URL",
        help=f"the node's monitor: http://HOST:PORT, HOST:PORT or PORT (default: "
        f"{MONITOR_VARIABLE}, else {DEFAULT_MONITOR}); a node serves one with "
        "'iris-trio node --monitor HOST:PORT'",
    )
    return parser


async def _main_status(args: argparse.Namespace) -> None:
    status = await read_status(_monitor(args))
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        Console(highlight=False).print(render_status(status))


def main_status(argv: list[str]) -> int:
    """``iris-trio status``: a readable summary of a node, from its monitor."""
    parser = _parser("status", "Print a readable summary of a node, read from its monitor.")
    parser.add_argument("--json", action="store_true", help="print the /status document instead")
    args = parser.parse_args(argv)
    return run_tool(parser.prog, _main_status, args)


async def _main_top(args: argparse.Namespace) -> None:
    url = _monitor(args)
    status = await read_status(url)  # a wrong address fails at once, in one line
    console = Console(highlight=False)

    def frame(status: Status | None, problem: str = "") -> RenderableType:
        head = Text(f"iris-trio top: {url}  (every {args.interval:g} s; Ctrl-C stops)", "dim")
        if status is None:
            return Group(head, Text(problem, "red"))
        body = render_status(status)
        return Group(head, body, Text(problem, "red")) if problem else Group(head, body)

    async def refresh(show: Any) -> None:
        nonlocal status
        shown = 1
        while args.count is None or shown < args.count:
            await trio.sleep(args.interval)
            try:
                status = await read_status(url, advice=False)
                show(frame(status))
            except ToolError as exc:  # keep watching: the node may come back
                show(frame(status, f"no fresh figures: {exc}"))
            shown += 1

    if console.is_terminal:
        with Live(frame(status), console=console, screen=False, auto_refresh=False) as live:
            await until_stopped(lambda: refresh(lambda r: live.update(r, refresh=True)))
    else:  # a pipe or a file: one frame after another
        console.print(frame(status))
        await until_stopped(lambda: refresh(lambda r: console.print(Text(""), r)))


def main_top(argv: list[str]) -> int:
    """``iris-trio top``: the summary of ``status``, refreshed in the terminal."""
    parser = _parser(
        "top", "Watch a node: its summary (as 'iris-trio status'), refreshed in place."
    )
    parser.add_argument(
        "--interval",
        metavar="S",
        type=positive_seconds,
        default=1.0,
        help="seconds between refreshes (default 1)",
    )
    parser.add_argument(
        "--count", metavar="N", type=at_least(1), help="stop after N refreshes (default: never)"
    )
    args = parser.parse_args(argv)
    return run_tool(parser.prog, _main_top, args)
