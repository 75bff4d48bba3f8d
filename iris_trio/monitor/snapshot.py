"""What the monitor shows: one JSON-ready snapshot of a node, read-only.

Everything here reads the node's state as it is at the moment of the call
(counters, the overlay's tables, the trees, the links and the relay) and
changes nothing. Figures the node does not keep are ``None``, never guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from .. import __version__
from ..overlay.ids import DIGITS, name_id
from ..patterns.membership import CLUSTER, TOPIC

if TYPE_CHECKING:
    from .._node import Node, NodeStatistics
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


def _events_missed(figures: NodeStatistics) -> int | None:
    """Events lost on the way to this node's subscribers, where the node counts them."""
    missed = getattr(figures, "events_missed", None)
    return missed if isinstance(missed, int) else None


def _link_bytes(node: Node) -> tuple[int, int]:
    """Bytes sent and received over the links up now."""
    driver = node.driver
    sent = received = 0
    overlay = driver.overlay
    for peer in overlay.peers if overlay is not None else ():
        link = driver.peer_link(peer)
        if link is not None:
            figures = link.statistics()
            sent += figures.bytes_sent
            received += figures.bytes_received
    return sent, received


def counters(node: Node) -> dict[str, float]:
    """The current values of :data:`RATE_COUNTERS` (for a :class:`RateMeter`)."""
    figures = node.statistics()
    link_sent, link_received = _link_bytes(node)
    return {
        "requests_sent": figures.requests_sent,
        "requests_answered": figures.requests_answered,
        "requests_failed": figures.requests_failed,
        "requests_served": figures.requests_received,
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


def _peers(node: Node, leaves: set[int]) -> list[dict[str, Any]]:
    driver = node.driver
    overlay = driver.overlay
    if overlay is None:
        return []
    now = trio.current_time()
    table = set(overlay.table)
    peers = []
    for peer, address in sorted(overlay.peers.items()):
        link = driver.peer_link(peer)
        figures = link.statistics() if link is not None else None
        peers.append(
            {
                "id": _hex(peer),
                "address": address,
                "leaf": peer in leaves,
                "in_table": peer in table,
                "link_age_s": round(now - overlay.connected_since(peer), 3),
                # The overlay keeps no per-peer round-trip time it hands out.
                "rtt_ms": None,
                "queued_bytes": figures.queued_bytes if figures else None,
                "queued_frames": figures.queued_frames if figures else None,
                "bytes_sent": figures.bytes_sent if figures else None,
                "bytes_received": figures.bytes_received if figures else None,
            }
        )
    return peers


def _routing_table(node: Node) -> dict[str, Any]:
    overlay = node.driver.overlay
    if overlay is None:
        return {"entries": 0, "filled_rows": 0, "row_fill": [], "columns": _COLUMNS}
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
    names: dict[int, tuple[str, str]] = {}
    for tree, receivers in node._pubsub._receivers.items():
        for subscription in receivers:
            # A cluster's broadcast receivers are kept beside the topics' ones.
            if name_id(TOPIC, subscription.topic) == tree:
                names[tree] = (TOPIC, subscription.topic)
    for cluster in node._membership.clusters:
        names[name_id(CLUSTER, cluster)] = (CLUSTER, cluster)
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
    uptime: float,
    rates: Mapping[str, float],
    window: float,
) -> dict[str, Any]:
    """A JSON-ready snapshot of ``node`` (the monitor's ``/status``).

    Args:
        node: the node to describe.
        relay: its relay endpoint, if it serves one.
        uptime: seconds since the node started.
        rates: per-second rates of :data:`RATE_COUNTERS` (from a ``RateMeter``).
        window: the seconds ``rates`` look back over.
    """
    figures = node.statistics()
    driver = node.driver
    overlay = driver.overlay
    leaves = {int(leaf, 16) for leaf in (*figures.leaves_right, *figures.leaves_left)}
    link_sent, link_received = _link_bytes(node)
    missed = _events_missed(figures)
    relay_figures = _relay(relay)
    host = driver.host
    return {
        "node_id": figures.node_id,
        "network": driver.network.name,
        "version": __version__,
        "uptime_s": round(uptime, 3),
        "joined": figures.joined,
        "cluster": node.cluster,
        "address": {
            "listen": f"[{host}]:{driver.port}" if ":" in host else f"{host}:{driver.port}",
            "advertised": node.address,
        },
        "peers": _peers(node, leaves),
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
            "served": figures.requests_received,
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
        "rates": {"window_s": window, **{name: round(v, 3) for name, v in rates.items()}},
    }
