"""``serve_monitor``: a node's read-only HTTP monitor (health, status, metrics,
dashboard), one more child task tree beside the node."""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import trio

from ..errors import ConfigError
from ..transport.base import is_loopback, split_host_port
from .http import HttpLimits, HttpRequest, HttpResponse, serve_http
from .prometheus import metrics_registry, render_metrics
from .rates import RateMeter
from .snapshot import counters, node_status

if TYPE_CHECKING:
    from .._node import Node
    from ..relay import Relay

__all__ = [
    "DEFAULT_MONITOR_ADDRESS",
    "DEFAULT_MONITOR_PORT",
    "Monitor",
    "MonitorAddressError",
    "bind_monitor",
    "parse_address",
    "serve_monitor",
]

log = logging.getLogger("iris_trio.monitor")

#: Where ``serve_monitor`` listens unless told otherwise: loopback, any free port.
DEFAULT_MONITOR_ADDRESS: Final = "127.0.0.1:0"
#: The port of ``iris-trio node --monitor`` given no address, on 127.0.0.1, and
#: the one ``iris-trio status`` and ``top`` ask by default (the relay's + 1).
DEFAULT_MONITOR_PORT: Final = 55556

#: Seconds between samples of the counters, and the window rates look back over.
SAMPLE_INTERVAL: Final = 0.25
RATE_WINDOW: Final = 4.0

_STATIC: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}

#: The dashboard loads nothing from elsewhere; the browser is told so.
_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_JSON: Final = "application/json"
_PAGES: Final = ("/", "/status", "/metrics", "/healthz")


@functools.cache
def _static(name: str) -> bytes:
    return (importlib.resources.files(__package__) / "static" / name).read_bytes()


def _text(status: int, message: str, **headers: str) -> HttpResponse:
    extra = tuple((name.replace("_", "-"), value) for name, value in headers.items())
    return HttpResponse(status, (message + "\n").encode("utf-8"), headers=extra)


def _peers(count: int) -> str:
    return f"{count} peer" if count == 1 else f"{count} peers"


def _loopback_host(header: str | None) -> bool:
    """True if a Host header names this host by a loopback name (or is absent,
    as HTTP/1.0 allows): ``127.0.0.1``, ``[::1]`` or ``localhost``, any port."""
    if header is None:
        return True
    host = header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return is_loopback(host.removesuffix("."))


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of ``"HOST:PORT"`` or ``"[v6 host]:PORT"``.

    Raises:
        ConfigError: it is not such an address (the message says why).
    """
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"monitor address {address!r} is not HOST:PORT (e.g. 127.0.0.1:8222, [::1]:0)"
        )
    return split_host_port(address)


class Monitor:
    """A running monitor (from :func:`serve_monitor`).

    Attributes:
        node: the node it shows.
        relay: the node's relay endpoint (its counters and clients are shown),
            or None; may be set once the relay runs.
        addresses: the (host, port) pairs it listens on.
        port: the port it listens on (chosen by the system for port 0).
        url: ``http://host:port`` of the first of them.

    Example::

        monitor = await nursery.start(iris_trio.monitor.serve_monitor, node)
        print("dashboard at", monitor.url)
        print(monitor.status()["joined"])  # the /status document
    """

    def __init__(self, node: Node, relay: Relay | None, addresses: list[tuple[str, int]]) -> None:
        self.node = node
        self.relay = relay
        self.addresses = addresses
        host, port = addresses[0]
        self.port = port
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        # On loopback only, a request must name a loopback host: a web page
        # that rebinds its own name to 127.0.0.1 cannot read the figures.
        self._loopback_only = all(is_loopback(address[0]) for address in addresses)
        self._meter = RateMeter(RATE_WINDOW, int(RATE_WINDOW / SAMPLE_INTERVAL) + 1)
        self._registry = metrics_registry(self.status)

    def status(self) -> dict[str, Any]:
        """The ``/status`` document: the node's figures now (see docs/operations.md)."""
        return node_status(
            self.node,
            relay=self.relay,
            uptime=trio.current_time() - self.node.started_at,
            rates=self._meter.rates(),
            window=self._meter.window,
        )

    def sample(self) -> None:
        """Record the node's counters now (rates are computed from these samples)."""
        self._meter.record(trio.current_time(), counters(self.node))

    async def run_sampler(self) -> None:
        """Sample the counters every SAMPLE_INTERVAL seconds, until cancelled.

        A failure to sample (a bug) is logged once and leaves the rates as they
        were: the monitor never takes its node down."""
        failed = False
        while True:
            try:
                self.sample()
            except Exception:
                if not failed:
                    log.exception("monitor: sampling the counters failed")
                failed = True
            await trio.sleep(SAMPLE_INTERVAL)

    def respond(self, request: HttpRequest) -> HttpResponse:
        """The answer to one request (read-only: GET and HEAD only)."""
        if request.method not in ("GET", "HEAD"):
            return _text(
                405,
                f"{request.method} is not allowed: this monitor is read-only",
                Allow="GET, HEAD",
            )
        if self._loopback_only and not _loopback_host(request.headers.get("host")):
            return _text(
                403,
                "this monitor listens on loopback: ask it as 127.0.0.1, [::1] or localhost "
                "(other host names are refused against DNS rebinding)",
            )
        if request.path == "/healthz":
            return self._health()
        if request.path == "/status":
            body = json.dumps(self.status(), indent=1).encode("utf-8")
            return HttpResponse(200, body, _JSON)
        if request.path == "/metrics":
            body, content_type = render_metrics(self._registry, request.headers.get("accept", ""))
            return HttpResponse(200, body, content_type)
        page = _STATIC.get(request.path)
        if page is not None:
            name, content_type = page
            return HttpResponse(
                200, _static(name), content_type, (("Content-Security-Policy", _POLICY),)
            )
        return _text(404, f"no page {request.path!r} here; pages: {', '.join(_PAGES)}")

    def _health(self) -> HttpResponse:
        node = self.node
        if node.closed:
            return _text(503, "stopped: the node has left the overlay")
        if not node.joined:
            peers = node.statistics().peers
            return _text(
                503, f"joining: the node is still finding its neighbours ({_peers(peers)} so far)"
            )
        return _text(200, f"ok: joined, {_peers(node.statistics().peers)}")


class MonitorAddressError(OSError):
    """The monitor cannot listen at its address (in use, not this host's, a
    host that is not found...). An ``OSError`` with the cause's ``errno``; the
    original error is its ``__cause__``.

    Attributes:
        address: the ``HOST:PORT`` asked for.
    """

    def __init__(self, address: str, cause: OSError) -> None:
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(cause.errno, f"the monitor cannot listen at {address}: {reason}")
        self.address = address


async def bind_monitor(address: str) -> list[trio.SocketListener]:
    """Listen at ``address`` for a monitor (pass the result to :func:`serve_monitor`).

    Binding first tells a caller at once that the address is taken, before
    anything else starts (``serve_node(monitor=...)`` does so). Example::

        listeners = await bind_monitor("127.0.0.1:8222")  # fails here if in use
        await nursery.start(serve_monitor, node, listeners)

    Cancellation: cancelled while it resolves the host, nothing is bound. The
    listeners it returns are the caller's: pass them to :func:`serve_monitor`
    (which closes them), or close them.

    Raises:
        ConfigError: ``address`` is not HOST:PORT.
        MonitorAddressError: it cannot be listened on.
    """
    host, port = parse_address(address)
    try:
        return await trio.open_tcp_listeners(port, host=host or None)
    except OSError as exc:
        raise MonitorAddressError(address, exc) from exc


def _close(listeners: Sequence[trio.SocketListener]) -> None:
    for listener in listeners:
        listener.socket.close()


async def serve_monitor(
    node: Node,
    address: str | Sequence[trio.SocketListener] = DEFAULT_MONITOR_ADDRESS,
    *,
    relay: Relay | None = None,
    limits: HttpLimits | None = None,
    task_status: trio.TaskStatus[Monitor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``node``'s monitor over HTTP at ``address`` until cancelled.

    Pages: ``/healthz`` (200 once the node has joined, else 503 with the reason),
    ``/status`` (JSON), ``/metrics`` (Prometheus), ``/`` (the live dashboard).
    Read-only. Reports the :class:`Monitor` (its ``url`` shows the port
    chosen for port 0) through ``task_status``.

    A node started with ``serve_node(monitor=...)`` or ``join(monitor=...)``
    runs this in its own nursery (see ``Node.monitor``); call it directly to
    serve a monitor beside a node.

    Args:
        node: the node to show.
        address: ``"HOST:PORT"`` to listen on (default loopback, any free port;
            give a non-loopback host only to let other hosts read the figures),
            or listeners from :func:`bind_monitor` (they belong to this call).
        relay: the node's relay endpoint, to show its counters and clients
            (or set ``Monitor.relay`` once it runs).
        limits: the HTTP server's bounds (connections, sizes, timeouts).

    Example (a monitor beside a node, with its relay's figures)::

        async with iris_trio.join() as node, trio.open_nursery() as nursery:
            relay = await nursery.start(iris_trio.serve_relay, node, 0)
            monitor = await nursery.start(
                functools.partial(serve_monitor, node, "127.0.0.1:0", relay=relay)
            )
            print("dashboard at", monitor.url)

    Cancellation: the monitor stops: its listeners close (those from
    :func:`bind_monitor` too) and open HTTP connections are closed; the node
    is not affected. Cancelled before it has started, nothing is left
    listening.

    Raises:
        ConfigError: ``address`` is not HOST:PORT.
        MonitorAddressError: it cannot be listened on (in use, not this host's...).
    """
    listeners = list(await bind_monitor(address) if isinstance(address, str) else address)
    try:
        bound = [listener.socket.getsockname()[:2] for listener in listeners]
        monitor = Monitor(node, relay, [(str(host), int(port)) for host, port in bound])
        monitor.sample()
    except BaseException:
        _close(listeners)
        raise
    log.info("monitor at %s", monitor.url)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.run_sampler)
        await nursery.start(
            functools.partial(serve_http, monitor.respond, listeners, limits=limits)
        )
        task_status.started(monitor)


def monitor_of(node: Node) -> Monitor | None:
    """The monitor of ``node`` (started with ``monitor=``), as a :class:`Monitor`:
    set its ``relay`` to show a relay's figures too. None without one.

    Example::

        async with iris_trio.join(monitor="127.0.0.1:0") as node, trio.open_nursery() as nursery:
            relay = await nursery.start(iris_trio.serve_relay, node, 0)
            monitor = monitor_of(node)
            if monitor is not None:
                monitor.relay = relay  # the dashboard shows the relay's clients
    """
    monitor = node.monitor
    return monitor if isinstance(monitor, Monitor) else None
