"""What the monitor shows: one JSON-ready snapshot of a node, read-only.

Everything here reads the node's state as it is at the moment of the call
(counters, the overlay's tables, the trees, the links and the relay) and
changes nothing. Figures the node does not keep are ``None``, never guessed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from .._version import __version__
from ..overlay.driver import split_address
from ..overlay.ids import DIGITS, name_id
from ..patterns.membership import CLUSTER, TOPIC

if TYPE_CHECKING:
    from .._node import Node, PeerInfo
    from ..relay import Relay

__all__ = ["RATE_COUNTERS", "counters", "node_status"]

#: The counters the monitor turns into rates (names as in ``status["rates"]``).
RATE_COUNTERS = (
    "requests_sent",
    "requests_answered",
    "requests_failed",
    "requests_served",
    "requests_expired",
    "events_published",
    "broadcasts_sent",
    "events_received",
    "events_dropped",
    "tunnel_bytes_sent",
    "tunnel_bytes_received",
    "link_bytes_sent",
    "link_bytes_received",
)

_COLUMNS = 16  # routing-table columns: one per value of a 4-bit digit


def _hex(node: int) -> str:
    return f"{node:032x}"


def _link_bytes(peers: list[PeerInfo]) -> tuple[int, int]:
    """Bytes sent and received over the links up now."""
    sent = sum(peer.bytes_sent or 0 for peer in peers)
    return sent, sum(peer.bytes_received or 0 for peer in peers)


def counters(node: Node) -> dict[str, float]:
    """The current values of :data:`RATE_COUNTERS` (for a :class:`RateMeter`)."""
    figures = node.statistics()
    link_sent, link_received = _link_bytes(node.peers())
    return {
        "requests_sent": figures.requests_sent,
        "requests_answered": figures.requests_answered,
        "requests_failed": figures.requests_failed,
        "requests_served": figures.requests_replied,
        "requests_expired": figures.requests_expired,
        "events_published": figures.published,
        "broadcasts_sent": figures.broadcasts_sent,
        "events_received": figures.events_received,
        "events_dropped": figures.events_dropped,
        "tunnel_bytes_sent": figures.tunnel_bytes_sent,
        "tunnel_bytes_received": figures.tunnel_bytes_received,
        "link_bytes_sent": link_sent,
        "link_bytes_received": link_received,
    }


def _peers(peers: list[PeerInfo]) -> list[dict[str, Any]]:
    return [
        {
            "id": peer.id,
            "address": peer.address,
            "leaf": peer.leaf,
            "in_table": peer.in_table,
            "link_age_s": round(peer.link_age, 3),
            "rtt_ms": None if peer.rtt is None else round(peer.rtt * 1000, 3),
            "queued_bytes": peer.queued_bytes,
            "queued_frames": peer.queued_frames,
            "bytes_sent": peer.bytes_sent,
            "bytes_received": peer.bytes_received,
        }
        for peer in peers
    ]


def _listen(node: Node) -> str:
    """Where the node listens for links: its host, and the port it was given
    (or, for port 0, the one it got)."""
    driver = node.driver
    host, port = driver.host, driver.port
    if port == 0:  # (a test's memory network has addresses of another form)
        with contextlib.suppress(ValueError):
            port = split_address(node.address)[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _routing_table(node: Node) -> dict[str, Any]:
    overlay = node.driver.overlay
    if overlay is None:
        return {
            "entries": 0,
            "filled_rows": 0,
            "row_fill": [],
            "columns": _COLUMNS,
            "rows": DIGITS,
        }
    fill = [sum(entry is not None for entry in row) for row in overlay.table.rows]
    while fill and fill[-1] == 0:
        fill.pop()
    return {
        "entries": len(overlay.table),
        "filled_rows": overlay.table.filled_rows(),
        "row_fill": fill,
        "columns": _COLUMNS,
        "rows": DIGITS,
    }


def _tree_names(node: Node) -> dict[int, tuple[str, str]]:
    """Tree id -> (kind, name) for the clusters and topics this node uses."""
    names = {name_id(TOPIC, topic): (TOPIC, topic) for topic in node.topics}
    names.update({name_id(CLUSTER, cluster): (CLUSTER, cluster) for cluster in node.clusters})
    return names


def _trees(node: Node) -> list[dict[str, Any]]:
    trees = node.driver.trees
    if trees is None:
        return []
    names = _tree_names(node)
    shown = []
    for tree, state in sorted(trees.trees.items()):
        kind, name = names.get(tree, (None, None))
        shown.append(
            {
                "id": _hex(tree),
                "kind": kind,
                "name": name,
                "member": state.member,
                "root": state.root,
                "linked": state.linked,
                "parent": None if state.parent is None else _hex(state.parent),
                "children": [_hex(child) for child in sorted(state.children)],
            }
        )
    return shown


def _relay(relay: Relay | None) -> dict[str, Any] | None:
    if relay is None:
        return None
    figures = dataclasses.asdict(relay.statistics())
    figures["port"] = relay.port
    figures["clients"] = [
        {"cluster": connection.cluster or None, "events_dropped": connection.events_dropped}
        for connection in sorted(relay.connections, key=lambda c: c.cluster)
    ]
    return figures


def node_status(
    node: Node,
    *,
    relay: Relay | None = None,
    uptime: float | None = None,
    rates: Mapping[str, float] | None = None,
    window: float = 0.0,
) -> dict[str, Any]:
    """A JSON-ready snapshot of ``node`` (the monitor's ``/status``).

    Args:
        node: the node to describe.
        relay: its relay endpoint, if it serves one.
        uptime: seconds since the node started (default: from ``node.started_at``).
        rates: per-second rates of :data:`RATE_COUNTERS` (from a ``RateMeter``).
        window: the seconds ``rates`` look back over.
    """
    figures = node.statistics()
    driver = node.driver
    overlay = driver.overlay
    peers = node.peers()
    link_sent, link_received = _link_bytes(peers)
    missed = figures.events_missed
    relay_figures = _relay(relay)
    if uptime is None:
        uptime = trio.current_time() - node.started_at
    return {
        "node_id": figures.node_id,
        "network": driver.network.name,
        "version": __version__,
        "uptime_s": round(uptime, 3),
        "joined": figures.joined,
        "cluster": node.cluster,
        "clusters": list(node.clusters),
        "topics": list(node.topics),
        "address": {"listen": _listen(node), "advertised": node.address},
        "peers": _peers(peers),
        "leaf_set": {
            "right": list(figures.leaves_right),
            "left": list(figures.leaves_left),
            "per_side": driver.config.leaf_size,
        },
        "routing_table": _routing_table(node),
        "trees": _trees(node),
        "requests": {
            "sent": figures.requests_sent,
            "answered": figures.requests_answered,
            "failed": figures.requests_failed,
            "pending": figures.requests_pending,
            "direct": figures.requests_direct,
            "received": figures.requests_received,
            "served": figures.requests_replied,
            "expired": figures.requests_expired,
            "refused": figures.requests_refused,
        },
        "events": {
            "published": figures.published,
            "broadcasts_sent": figures.broadcasts_sent,
            "received": figures.events_received,
            "dropped": figures.events_dropped,
            "missed": missed,
            "buffered": figures.events_buffered,
        },
        "tunnels": {
            "opened": figures.tunnels_opened,
            "accepted": figures.tunnels_accepted,
            "open": figures.tunnels_open,
            "bytes_sent": figures.tunnel_bytes_sent,
            "bytes_received": figures.tunnel_bytes_received,
        },
        "links": {
            "open": figures.links,
            "bytes_sent": link_sent,
            "bytes_received": link_received,
        },
        "relay": relay_figures,
        "drops": {
            "link_queue_full": figures.frames_dropped,
            "events_dropped": figures.events_dropped,
            "events_missed": missed,
            "requests_expired": figures.requests_expired,
            "requests_refused": figures.requests_refused,
            "routed_dropped": overlay.statistics().dropped if overlay is not None else 0,
            "tree_messages_dropped": driver.trees.messages_dropped if driver.trees else 0,
            "relay_events_dropped": relay_figures["events_dropped"] if relay_figures else None,
            "peers_declared_dead": figures.peers_declared_dead,
        },
        "rates": {"window_s": window, **{n: round(v, 3) for n, v in (rates or {}).items()}},
    }
