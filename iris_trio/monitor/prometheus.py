"""The monitor's ``/metrics``: a node's figures in the Prometheus formats.

A custom collector turns one status snapshot (see :mod:`.snapshot`) into metric
families, registered in the monitor's own ``CollectorRegistry`` (never the
process-wide default one, so several nodes in one process do not clash); the
``prometheus_client`` library writes the exposition. Rates are left to
Prometheus (``rate(iris_trio_requests_sent_total[1m])``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

__all__ = ["StatusCollector", "metrics_registry", "render_metrics"]

Status = Mapping[str, Any]

#: (section, field, metric name without prefix and suffix, help) of counters.
_COUNTERS = (
    ("requests", "sent", "requests_sent", "Requests this node sent."),
    ("requests", "answered", "requests_answered", "Requests of this node that got a reply."),
    (
        "requests",
        "direct",
        "requests_direct",
        "Requests of this node sent straight to a member it knew, not through the tree.",
    ),
    (
        "requests",
        "failed",
        "requests_failed",
        "Requests of this node that failed (remote error, no responders or timeout).",
    ),
    (
        "requests",
        "received",
        "requests_received",
        "Requests handed to this node's members.",
    ),
    (
        "requests",
        "served",
        "requests_served",
        "Requests this node's members answered with a reply (not an error).",
    ),
    (
        "requests",
        "expired",
        "requests_expired",
        "Requests to this node's members dropped unhandled past their deadline.",
    ),
    (
        "requests",
        "refused",
        "requests_refused",
        "Requests to this node's members refused with a full queue.",
    ),
    ("events", "published", "events_published", "Events this node published."),
    ("events", "broadcasts_sent", "broadcasts_sent", "Broadcasts this node sent."),
    (
        "events",
        "received",
        "events_received",
        "Events and broadcasts handed to this node's receivers (once per receiver).",
    ),
    (
        "events",
        "dropped",
        "events_dropped",
        "Events dropped from a full receiver buffer of this node.",
    ),
    ("events", "missed", "events_missed", "Events lost before reaching this node's receivers."),
    ("tunnels", "opened", "tunnels_opened", "Tunnels this node opened."),
    ("tunnels", "accepted", "tunnels_accepted", "Tunnels this node's members took."),
    (
        "drops",
        "link_queue_full",
        "frames_dropped_link_queue_full",
        "Overlay and tree frames dropped at a full link queue.",
    ),
    ("drops", "routed_dropped", "routed_dropped", "Routed overlay messages dropped."),
    (
        "drops",
        "tree_messages_dropped",
        "tree_messages_dropped",
        "Tree messages dropped (no route or no link).",
    ),
    (
        "drops",
        "peers_declared_dead",
        "peers_declared_dead",
        "Peers dropped because they fell silent.",
    ),
)

#: (section, field, metric name without prefix, help) of gauges.
_GAUGES = (
    ("requests", "pending", "requests_pending", "Requests of this node waiting for a reply."),
    ("events", "buffered", "events_buffered", "Events waiting in this node's receivers."),
    ("tunnels", "open", "tunnels_open", "Tunnels open now."),
    ("links", "open", "links", "Links to peers now."),
    ("routing_table", "entries", "routing_table_entries", "Routing-table entries."),
    ("routing_table", "filled_rows", "routing_table_rows", "Routing-table rows with an entry."),
)

_RELAY_COUNTERS = (
    ("connections_accepted", "relay_connections_accepted", "Relay clients attached."),
    ("denied", "relay_denied", "Relay handshakes refused."),
    (
        "protocol_violations",
        "relay_protocol_violations",
        "Relay connections closed for malformed input.",
    ),
    (
        "closed_gracefully",
        "relay_closed_gracefully",
        "Relay connections ended by the client's CLOSE.",
    ),
    ("unknown_replies", "relay_unknown_replies", "Relay replies to requests that had expired."),
    ("events_dropped", "relay_events_dropped", "Events and broadcasts a slow relay client missed."),
    ("internal_errors", "relay_internal_errors", "Relay connections ended by a relay failure."),
)


def _name(suffix: str) -> str:
    return f"iris_trio_{suffix}"


class StatusCollector:
    """A ``prometheus_client`` collector over a node's status snapshots.

    Args:
        read: returns the current status (the monitor's ``/status`` document).
    """

    def __init__(self, read: Callable[[], Status]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        """The metric families of the current status."""
        status = self._read()
        info = InfoMetricFamily(_name("node"), "This node: its id, network and version.")
        info.add_metric(
            [],
            {
                "node_id": status["node_id"],
                "network": status["network"],
                "version": status["version"],
            },
        )
        yield info
        yield GaugeMetricFamily(
            _name("uptime_seconds"), "Seconds since the node started.", value=status["uptime_s"]
        )
        yield GaugeMetricFamily(
            _name("joined"), "1 once the node has joined the overlay.", value=int(status["joined"])
        )
        yield GaugeMetricFamily(_name("peers"), "Overlay peers now.", value=len(status["peers"]))
        leaves = status["leaf_set"]
        yield GaugeMetricFamily(
            _name("leaf_set_size"),
            "Leaf-set members now.",
            value=len({*leaves["right"], *leaves["left"]}),
        )
        yield from self._sections(status)
        yield from self._bytes(status)
        yield from self._peers(status)
        yield from self._trees(status)
        relay = status.get("relay")
        if relay is not None:
            yield from self._relay(relay)

    @staticmethod
    def _sections(status: Status) -> Iterator[Metric]:
        for section, field, name, text in _COUNTERS:
            value = status[section].get(field)
            if value is not None:  # a figure the node does not keep is left out
                yield CounterMetricFamily(_name(name), text, value=value)
        for section, field, name, text in _GAUGES:
            yield GaugeMetricFamily(_name(name), text, value=status[section][field])

    @staticmethod
    def _bytes(status: Status) -> Iterator[Metric]:
        tunnel = CounterMetricFamily(
            _name("tunnel_bytes"), "Message bytes through tunnels.", labels=["direction"]
        )
        tunnel.add_metric(["sent"], status["tunnels"]["bytes_sent"])
        tunnel.add_metric(["received"], status["tunnels"]["bytes_received"])
        yield tunnel

    @staticmethod
    def _peers(status: Status) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            _name("peer_link_age_seconds"), "Seconds the link to each peer is up.", labels=["peer"]
        )
        queued = GaugeMetricFamily(
            _name("peer_queued_bytes"),
            "Bytes queued on the link to each peer.",
            labels=["peer"],
        )
        moved = CounterMetricFamily(
            _name("peer_link_bytes"),
            "Bytes over the current link to each peer.",
            labels=["peer", "direction"],
        )
        for peer in status["peers"]:
            age.add_metric([peer["id"]], peer["link_age_s"])
            if peer["queued_bytes"] is not None:
                queued.add_metric([peer["id"]], peer["queued_bytes"])
                moved.add_metric([peer["id"], "sent"], peer["bytes_sent"])
                moved.add_metric([peer["id"], "received"], peer["bytes_received"])
        yield from (age, queued, moved)

    @staticmethod
    def _trees(status: Status) -> Iterator[Metric]:
        children = GaugeMetricFamily(
            _name("tree_children"),
            "Children of this node in each tree it is part of.",
            labels=["tree", "kind", "name", "role"],
        )
        for tree in status["trees"]:
            role = "root" if tree["root"] else ("member" if tree["member"] else "forwarder")
            labels = [tree["id"], tree["kind"] or "", tree["name"] or "", role]
            children.add_metric(labels, len(tree["children"]))
        yield children

    @staticmethod
    def _relay(relay: Mapping[str, Any]) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            _name("relay_connections_open"),
            "Relay clients attached now.",
            value=relay["connections_open"],
        )
        for field, name, text in _RELAY_COUNTERS:
            if relay.get(field) is not None:
                yield CounterMetricFamily(_name(name), text, value=relay[field])


def metrics_registry(read: Callable[[], Status]) -> CollectorRegistry:
    """A registry of its own holding one :class:`StatusCollector` over ``read``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(read))
    return registry


def render_metrics(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The exposition of ``registry`` in the format ``accept`` (an HTTP Accept
    header) asks for: OpenMetrics if it asks for it, else the Prometheus text
    format. Returns the body and its content type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
