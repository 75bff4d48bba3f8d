"""The trio shell around the overlay state machine.

:class:`OverlayDriver` owns a link listener, one task per link (dialled or
accepted), a timer task and the discovery task, all children of one nursery.
It feeds the sans-IO :class:`~iris_trio.overlay.node.OverlayNode` (wrapped in
its :class:`~iris_trio.overlay.trees.TreeNode`) with link events and frames and
carries out their effects. It implements
:class:`~iris_trio.overlay.port.OverlayPort` for the patterns, and hands what
arrives for them to the one :class:`~iris_trio.overlay.port.OverlayUpcalls`
object it was given.

Between two nodes at most one link is kept: when both dial at once, the link
initiated by the lower node id wins on both ends.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import random
from collections.abc import Callable, Iterable, Sequence

import trio

from .._logs import LogLimiter
from ..crypto.identity import NodeIdentity
from ..crypto.keys import Network
from ..errors import ConfigError, HandshakeError
from ..transport.base import Transport, is_loopback, split_host_port
from ..transport.config import LinkConfig
from ..transport.link import Link
from ..transport.listener import LinkListener
from ..transport.tcp import TcpTransport
from ..wire.frames import Frame
from .beacon import Beacon, BeaconCodec
from .config import OverlayConfig
from .discovery import DiscoveryConfig, run_discovery
from .frames import Heartbeat, Leave, OverlayState, Route, RouteAck
from .ids import from_bytes, short
from .node import Connect, Deliver, Disconnect, OverlayNode, Send
from .port import IgnoredUpcalls, OverlayUpcalls
from .tree_frames import (
    NodeMessage,
    TreeAck,
    TreeAnycast,
    TreeBounce,
    TreeHeartbeat,
    TreePrune,
    TreePublish,
    TreeSlow,
)
from .trees import (
    AnycastDelivery,
    BounceDelivery,
    Handover,
    MessageDelivery,
    TreeConfig,
    TreeDelivery,
    TreeEffect,
    TreeNode,
)

__all__ = ["OverlayDriver", "split_address"]

log = logging.getLogger("iris_trio.overlay")

_log_limiter = LogLimiter()

#: How long a duplicate link stays open (read, not written) after the choice.
_RETIRE_DELAY = 2.0
#: How long a stopping node's links wait for its goodbye to be queued on them.
_LEAVE_WAIT = 1.0

_OVERLAY_FRAMES = (
    OverlayState,
    Route,
    RouteAck,
    Heartbeat,
    Leave,
    TreeAck,
    TreeHeartbeat,
    TreePrune,
    TreePublish,
    TreeAnycast,
    TreeBounce,
    NodeMessage,
    TreeSlow,
)
#: A link to a tree neighbour queued beyond this share of its limit is falling
#: behind: the publishers of what is sent on it are asked to pause this long,
#: again every _SLOW_EVERY while it is, unless it sent less than
#: _KEEPS_UP_BYTES in the last _SLOW_GIVE_UP seconds (a branch that does not
#: keep up loses its own events, and does not hold everyone back).
_SLOW_SHARE = 4
_SLOW_PAUSE_MS = 20
_SLOW_EVERY = 0.01
_SLOW_GIVE_UP = 2.0
_KEEPS_UP_BYTES = 256 * 1024


#: ("host", port) of "host:port" or "[v6 host]:port" (ValueError: no port number).
split_address = split_host_port


def advertised(address: str, observed_host: str | None) -> str:
    """A peer's listen address, with an unspecified host (it listens on all
    interfaces) replaced by the host we saw it connect or beacon from."""
    host, port = split_address(address)
    if host in ("", "0.0.0.0", "::") and observed_host:
        host = observed_host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclasses.dataclass(frozen=True, slots=True)
class DriverStatistics:
    """Link-level counters of the driver, and the overlay's state in brief."""

    links: int
    dials: int
    dials_failed: int
    frames_dropped_full_queue: int
    peers: int = 0
    leaves_right: tuple[int, ...] = ()
    leaves_left: tuple[int, ...] = ()
    table_entries: int = 0
    peers_declared_dead: int = 0


class OverlayDriver:
    """Runs one overlay node over secure links (see the module docstring).

    Args:
        identity: the node's key pair (its id is the overlay id).
        network: the network to join.
        host / port: where to accept links (port 0 picks one).
        seeds: addresses to join through.
        discovery: beacon settings (mode ``off`` for seeds only).
        config / link_config: overlay and link settings.
        upcalls: what the driver hands up (events, anycasts, bounces, frames of
            the layers above, lost peers, leaving, routed messages); default:
            nothing is taken.
        rng: randomness for the state machine.
        trees: tree timing (trees are always available; see :meth:`join_tree`).
        transport: how links are made (default: TCP); discovery needs TCP.

    Raises:
        ConfigError: discovery is on with a transport other than TCP (beacons
            are UDP datagrams and advertise TCP addresses).
    """

    def __init__(
        self,
        identity: NodeIdentity,
        network: Network,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seeds: list[str] | None = None,
        discovery: DiscoveryConfig | None = None,
        config: OverlayConfig | None = None,
        link_config: LinkConfig | None = None,
        upcalls: OverlayUpcalls | None = None,
        rng: random.Random | None = None,
        trees: TreeConfig | None = None,
        transport: Transport | None = None,
        loopback_only: bool = False,
    ) -> None:
        self.identity = identity
        #: Dial loopback addresses only (the dev network: its key is published).
        self.loopback_only = loopback_only
        self.network = network
        self.host = host
        self.port = port
        self.seeds = list(seeds or [])
        self.discovery = discovery or DiscoveryConfig(mode="off")
        self.transport: Transport = TcpTransport() if transport is None else transport
        if self.discovery.mode != "off" and not isinstance(self.transport, TcpTransport):
            raise ConfigError(
                f"discovery {self.discovery.mode!r} needs the TCP transport (its beacons are "
                f"UDP): with {self.transport!r} use discovery='off' and seeds"
            )
        self.config = config or OverlayConfig()
        self.link_config = link_config or LinkConfig()
        self._up: OverlayUpcalls = upcalls or IgnoredUpcalls()
        self._left = trio.Event()
        self.id = from_bytes(identity.node_id)
        self._rng = rng or random.Random()
        self.overlay: OverlayNode | None = None
        #: The trees this node takes part in (set once running).
        self.trees: TreeNode | None = None
        self.tree_config = trees or TreeConfig()
        self.address = ""
        self._links: dict[int, Link] = {}
        self._initiators: dict[Link, int] = {}
        # Where each link's peer said it listens (one value per peer process).
        self._link_listens: dict[Link, str] = {}
        # Pacing of publishers (see _pace): links falling behind since when,
        # and when each (tree, publisher) was last asked to pause.
        self._behind_since: dict[int, tuple[float, int]] = {}
        self._pausing: dict[int, set[tuple[bytes, bytes]]] = {}  # link -> (tree, publisher)
        self._renewing = False
        self._nursery: trio.Nursery | None = None
        self._changed = trio.lowlevel.ParkingLot()  # woken after every flush
        self._dials = self._dials_failed = self._dropped = 0
        self._last_leaves: tuple[int, ...] = ()
        self._last_sides: tuple[list[int], list[int]] = ([], [])
        self._leaves_changed_at = 0.0
        self._flushing = False
        self._ready_logged = False
        self._tick_scope: trio.CancelScope | None = None

    # ------------------------------------------------------------------ running

    async def run(
        self, *, task_status: trio.TaskStatus[OverlayDriver] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled; then leave the overlay gracefully."""
        try:
            await self._run(task_status)
        finally:
            # What the node is asked after it stopped (say a late answer from a
            # handler running outside it) has nowhere to go: its effects are
            # dropped instead of spawning into the closed nursery.
            self._nursery = None

    async def _run(self, task_status: trio.TaskStatus[OverlayDriver]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            listener: LinkListener = await nursery.start(self._serve)
            self.address = listener.listen
            self.overlay = OverlayNode(self.id, self.address, config=self.config, rng=self._rng)
            self.trees = TreeNode(self.overlay, self.tree_config)
            self._leaves_changed_at = trio.current_time()
            if self.discovery.mode != "off":
                codec = BeaconCodec(self.network)
                await nursery.start(
                    run_discovery,
                    self.discovery,
                    codec,
                    self.identity.node_id,
                    self.address,
                    self._found,
                    self.is_settled,
                )
            self.overlay.start(
                trio.current_time(), self.seeds, discovery=self.discovery.mode != "off"
            )
            self._flush()
            nursery.start_soon(self._ticker)
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                self._up.leaving()
                self._leave()
                self._left.set()

    async def _serve(self, *, task_status: trio.TaskStatus[LinkListener]) -> None:
        await self.transport.serve(
            self._accepted,
            identity=self.identity,
            network=self.network,
            host=self.host,
            port=self.port,
            config=self.link_config,
            on_frame=self._on_frame,
            task_status=task_status,
        )

    def _leave(self) -> None:
        if self.overlay is None:
            return
        self.overlay.leave(trio.current_time())
        for effect in self.overlay.take_effects():
            if isinstance(effect, Send):
                link = self._links.get(effect.node)
                if link is not None:
                    _send_or_drop(link, effect.frame)

    async def _ticker(self) -> None:
        assert self.overlay is not None and self.trees is not None
        while True:
            with trio.CancelScope(deadline=self.trees.next_deadline()) as self._tick_scope:
                await trio.sleep_forever()
            now = trio.current_time()
            for node, link in self._links.items():  # what arrived counts, read or not
                self.overlay.heard(node, now - link.silent_for)
            self.trees.tick(now)
            self._flush()

    # ------------------------------------------------------------------- links

    async def _accepted(self, link: Link) -> None:
        observed = split_address(link.remote_address)[0] if link.remote_address else None
        try:
            address = advertised(link.peer_hello.listen, observed)
        except ValueError:  # the peer told no usable address: it cannot be gossiped
            address = link.remote_address or ""
        await self._hold(link, initiator=link.peer_node, address=address)

    async def _dial(self, address: str, failed: trio.Event | None = None) -> None:
        self._dials += 1
        if self.loopback_only and not _loopback_address(address):
            # e.g. gossip or a beacon naming another host: the dev network stays local
            self._dial_failed(address, ValueError("the dev network dials loopback only"))
            if failed is not None:
                failed.set()
            return
        try:
            async with self.transport.connect(
                address,
                identity=self.identity,
                network=self.network,
                config=self.link_config,
                listen=self.address,
                on_frame=self._on_frame,
            ) as link:
                await self._hold(link, initiator=self.id, address=address)
        except (OSError, ValueError, HandshakeError) as exc:
            self._dial_failed(address, exc)
            if failed is not None:
                failed.set()

    def _dial_failed(self, address: str, exc: Exception | None = None) -> None:
        self._dials_failed += 1
        if address in self.seeds:
            _log_limiter.log(
                log,
                logging.WARNING,
                ("seed", address),
                "seed %s cannot be reached (%s); it is dialled again now and then",
                address,
                exc or "it is this node itself",
            )
        if self.overlay is not None:
            self.overlay.connect_failed(trio.current_time(), address)
            self._flush()

    async def _hold(self, link: Link, *, initiator: int, address: str) -> None:
        """Adopt ``link`` for its peer and keep it until it closes."""
        assert self.overlay is not None
        node = link.peer_node
        if node == self.id:
            self._dial_failed(address)
            return
        existing = self._links.get(node)
        listen = link.peer_hello.listen
        restarted = existing is not None and self._link_listens.get(existing) != listen
        if existing is not None and existing.is_open and restarted:
            # The same identity listening elsewhere: the peer restarted while its
            # old process hangs (e.g. frozen). The new process takes its place.
            log.info("peer %s is back at %s: its old link is closed", short(node), address)
            del self._links[node]
            self._behind_since.pop(node, None)  # (pacing judged the old link)
            self._pausing.pop(node, None)
            self._nursery_start(functools.partial(self._retire, existing))
            self.overlay.disconnected(trio.current_time(), node)
            self._up.peer_lost(node)
            existing = None
        self._link_listens[link] = listen
        if existing is not None and existing.is_open:
            # Both ends keep the link initiated by the lower id and send only on it.
            # The other one stays open a moment, still read, so nothing the peer
            # sent on it before it made the same choice is lost.
            if self._initiators[existing] <= initiator:
                await trio.sleep(_RETIRE_DELAY)
                self._link_listens.pop(link, None)
                return
            self._links[node] = link
            self._initiators[link] = initiator
            self._nursery_start(functools.partial(self._retire, existing))
        else:
            self._links[node] = link
            self._initiators[link] = initiator
            log.info("peer %s connected (%s)", short(node), address)
            self.overlay.connected(trio.current_time(), node, address)
            self._topology_changed()
        try:
            await link.wait_closed()
        except trio.Cancelled:
            # The node is stopping: keep the link until its goodbye (and what it
            # sent last) is queued on it; the link then flushes as it closes.
            with trio.CancelScope(shield=True), trio.move_on_after(_LEAVE_WAIT):
                await self._left.wait()
            raise
        finally:
            self._initiators.pop(link, None)
            self._link_listens.pop(link, None)
            if self._links.get(node) is link:
                del self._links[node]
                self._behind_since.pop(node, None)
                self._pausing.pop(node, None)
                log.info("peer %s disconnected (%s)", short(node), address)
                self.overlay.disconnected(trio.current_time(), node)
                self._topology_changed()
                self._up.peer_lost(node)

    async def _hand_over(self, handover: Handover) -> None:
        """Connect to a node we do not know yet and give it its message."""
        with trio.move_on_after(self.link_config.handshake_timeout * 2):
            try:
                link = await self.connect_peer(handover.target, handover.address)
                link.send_nowait(handover.message)
            except (OSError, trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._dropped += 1

    def _topology_changed(self) -> None:
        if self.trees is not None:
            self.trees.topology_changed(trio.current_time())
        self._flush()

    @staticmethod
    async def _retire(link: Link) -> None:
        await trio.sleep(_RETIRE_DELAY)
        await link.aclose()

    def _nursery_start(self, function: Callable[[], object]) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(function)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ frames

    def _on_frame(self, link: Link, frame: Frame) -> None:
        if isinstance(frame, _OVERLAY_FRAMES):
            if self.trees is not None:
                self.trees.received(trio.current_time(), link.peer_node, frame)
                self._flush()
        else:
            if self.overlay is not None:  # any frame proves its sender alive
                self.overlay.received(trio.current_time(), link.peer_node, frame)
            self._up.frame_received(link, frame)

    def _found(self, beacon: Beacon, source_host: str) -> None:
        if self.overlay is not None:
            try:
                address = advertised(beacon.address, source_host)
            except ValueError:
                return
            self.overlay.discovered(trio.current_time(), from_bytes(beacon.node_id), address)
            self._flush()

    def _flush(self) -> None:
        """Carry out the state machine's effects (until it has none left).

        Callbacks may feed it again: such nested calls leave their effects to
        the flush already under way."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while effects := self.trees.take_effects() if self.trees is not None else []:
                self._carry_out(effects)
        finally:
            self._flushing = False
        overlay = self.overlay
        assert overlay is not None
        sides = overlay.leaves.right, overlay.leaves.left  # replaced, never mutated
        if sides[0] is not self._last_sides[0] or sides[1] is not self._last_sides[1]:
            leaves = tuple(overlay.leaves)
            if leaves != self._last_leaves:
                self._last_leaves = leaves
                self._leaves_changed_at = trio.current_time()
            self._last_sides = sides
        if not self._ready_logged and overlay.check_ready(trio.current_time()):
            self._ready_logged = True
            log.info(
                "joined the overlay as %s at %s: %d peers, %d in the leaf set",
                short(self.id),
                self.address,
                len(self._links),
                len(overlay.leaves),
            )
        if self._changed:
            self._changed.unpark_all()
        self._plan_tick()

    def _plan_tick(self) -> None:
        """Bring the next tick forward if a deferred capacity report or owed
        acknowledgements are due before it."""
        scope = self._tick_scope
        if scope is not None and self.trees is not None:
            due = min(self.trees.report_due, self.trees.overlay.ack_due)
            if due < scope.deadline:  # noqa: PLR1730 - setting a deadline is not free
                scope.deadline = due

    def _carry_out(self, effects: list[TreeEffect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                link = self._links.get(effect.node)
                if link is None or not _send_or_drop(link, effect.frame):
                    self._dropped += 1
                elif type(effect.frame) is TreePublish:
                    self._pace(effect.node, link, effect.frame)
            elif isinstance(effect, Connect):
                self._nursery_start(functools.partial(self._dial, effect.address))
            elif isinstance(effect, Disconnect):
                link = self._links.get(effect.node)
                if link is not None:
                    self._nursery_start(link.aclose)
            elif isinstance(effect, TreeDelivery):
                self._up.events_received(effect)
            elif isinstance(effect, AnycastDelivery):
                self._up.anycast_received(effect)
            elif isinstance(effect, BounceDelivery):
                self._up.bounce_received(effect)
            elif isinstance(effect, MessageDelivery):
                self._up.frame_received(None, effect.frame)
            elif isinstance(effect, Deliver):
                self._up.routed(effect.route)
            elif isinstance(effect, Handover):
                self._nursery_start(functools.partial(self._hand_over, effect))

    # ------------------------------------------------------------------ queries

    def _pace(self, node: int, link: Link, frame: TreePublish) -> None:
        """After events went on ``link``: if it is falling behind, ask their
        publisher to pause, and keep asking while it is (see TreeSlow)."""
        if not self._behind(node, link):
            return
        publishers = self._pausing.setdefault(node, set())
        key = (frame.tree, frame.publisher)
        if key not in publishers:
            publishers.add(key)
            self._ask_to_pause(key)
            if not self._renewing:
                self._renewing = True
                self._nursery_start(self._renew_pauses)

    def _behind(self, node: int, link: Link) -> bool:
        """True while ``link`` queues beyond its share and still drains (keeps up)."""
        config = self.link_config
        queued_bytes, queued_frames = link.queued  # (per event frame: no snapshot)
        if (
            queued_bytes * _SLOW_SHARE < config.send_queue_bytes
            and queued_frames * _SLOW_SHARE < config.send_queue_frames
        ):
            self._behind_since.pop(node, None)
            return False
        now, bytes_sent = trio.current_time(), link.bytes_sent
        since, sent = self._behind_since.setdefault(node, (now, bytes_sent))
        if bytes_sent - sent >= _KEEPS_UP_BYTES:  # behind, but draining
            self._behind_since[node] = (now, bytes_sent)
            return True
        return now - since <= _SLOW_GIVE_UP  # else it does not keep up: it drops

    def _ask_to_pause(self, key: tuple[bytes, bytes]) -> None:
        tree, publisher = key
        assert self.trees is not None
        pause = TreeSlow(tree, _SLOW_PAUSE_MS)
        self.trees.send_to(trio.current_time(), from_bytes(publisher), "", pause)

    async def _renew_pauses(self) -> None:
        """While links fall behind, their publishers are asked again and again
        to pause; once a link has drained below its share, they may go on."""
        try:
            while self._pausing:
                await trio.sleep(_SLOW_EVERY)
                for node, publishers in list(self._pausing.items()):
                    link = self._links.get(node)
                    if link is None or not self._behind(node, link):
                        del self._pausing[node]
                        continue
                    for key in publishers:
                        self._ask_to_pause(key)
                self._flush()
        finally:
            self._renewing = False

    def paused_until(self, tree: int) -> float:
        """Until when a publisher on ``tree`` should wait: a branch of the tree
        asked it to slow down (-inf: no pause)."""
        return -math.inf if self.trees is None else self.trees.paused_until.get(tree, -math.inf)

    @property
    def ready(self) -> bool:
        """True once this node has joined the overlay (see :meth:`wait_joined`)."""
        overlay = self.overlay
        return overlay is not None and (overlay.ready or overlay.check_ready(trio.current_time()))

    def is_settled(self, quiet: float = 3.0) -> bool:
        """True when the leaf set has not changed for ``quiet`` seconds."""
        return (
            self.overlay is not None
            and len(self.overlay.leaves) > 0
            and trio.current_time() - self._leaves_changed_at >= quiet
        )

    async def wait_joined(self) -> None:
        """Wait until this node has joined the overlay: it found its leaf set, or
        found nobody while discovery and its seeds had a fair chance (see
        :meth:`OverlayNode.check_ready <iris_trio.overlay.node.OverlayNode.check_ready>`).
        Returns at once from then on."""
        while not self.ready:
            await self._changed.park()  # every tick and every input flushes

    async def wait_converged(self, quiet: float = 3.0) -> None:
        """Wait until the leaf set has been stable for ``quiet`` seconds."""
        while self.overlay is None or len(self.overlay.leaves) == 0:
            await self._changed.park()
        while not self.is_settled(quiet):
            with trio.move_on_after(quiet):
                await self._changed.park()

    def join_tree(self, tree: int) -> None:
        """Become a member of the tree of id ``tree`` (a cluster or a topic)."""
        assert self.trees is not None, "the driver is not running"
        self.trees.join(trio.current_time(), tree)
        self._flush()

    async def wait_linked(self, tree: int, serves: int = 0) -> None:
        """Wait until this node is linked to the root of ``tree`` (after joining
        it) and the root knows that its member takes the kinds of request in
        ``serves`` (bits of :func:`~iris_trio.overlay.trees.serves_bit`)."""
        while self.trees is None or not self.trees.is_linked(tree, serves):
            await self._changed.park()

    def publish(self, tree: int, events: Sequence[bytes]) -> int:
        """Send ``events`` (1 to MAX_EVENTS, in order) to every member of ``tree`` in
        one frame; returns the first one's sequence number."""
        assert self.trees is not None, "the driver is not running"
        sequence = self.trees.publish(trio.current_time(), tree, events)
        self._flush()
        return sequence

    def anycast(self, tree: int, kind: int, tag: bytes, payload: bytes) -> None:
        """Send ``payload`` to one member of ``tree`` that takes ``kind``, by spare
        capacity; if nobody takes it, a bounce with ``tag`` comes back."""
        assert self.trees is not None, "the driver is not running"
        self.trees.anycast(trio.current_time(), tree, kind, tag, payload)
        self._flush()

    def send_to(self, node: int, address: str, frame: Frame) -> None:
        """Send ``frame`` to ``node``: over the link to it, or routed to its id."""
        if self.trees is not None:
            self.trees.send_to(trio.current_time(), node, address, frame)
            self._flush()

    def set_spare(self, tree: int, spare: int, serves: int | None = None) -> None:
        """Report how many more requests of ``tree`` this member can take (and,
        if given, the kinds of request it takes: bits of ``serves_bit``)."""
        trees = self.trees
        if trees is not None:
            trees.set_spare(trio.current_time(), tree, spare, serves)
            if trees.overlay.has_effects:  # a capacity report went out
                self._flush()
            else:  # only a deferred report, perhaps: the ticker must wake for it
                self._plan_tick()

    def peer_link(self, node: int) -> Link | None:
        """The link in use to peer ``node``, if there is one."""
        return self._links.get(node)

    async def connect_peer(self, node: int, address: str) -> Link:
        """A link to ``node``: the one in use, or one dialled at ``address``.

        Raises:
            OSError: dialling failed (refused, unreachable, handshake failed).
        """
        link = self._links.get(node)
        if link is not None and link.is_open:
            return link
        failed = trio.Event()
        self._nursery_start(functools.partial(self._dial, address, failed))
        while True:
            link = self._links.get(node)
            if link is not None and link.is_open:
                return link
            if failed.is_set():
                raise OSError(f"cannot reach {address}")
            await self._changed.park()  # a link or a failed dial flushes

    def hold(self, node: int) -> None:
        """Keep the link to ``node`` up (e.g. while a tunnel uses it)."""
        if self.overlay is not None:
            self.overlay.held[node] += 1

    def release(self, node: int) -> None:
        """Undo one :meth:`hold`."""
        if self.overlay is not None:
            self.overlay.held[node] -= 1
            if self.overlay.held[node] <= 0:
                del self.overlay.held[node]

    def tree_links(self, tree: int) -> list[Link]:
        """The links an event published on ``tree`` leaves on: the next hop
        towards the root, or, at the root, the links to its children."""
        if self.overlay is None or self.trees is None:
            return []
        node = self.overlay.next_hop(tree)
        if node is not None:
            nodes: Iterable[int] = (node,)
        else:
            state = self.trees.trees.get(tree)
            nodes = state.children if state is not None else ()
        # A link that does not keep up loses its own events: nobody waits for it.
        return [
            link
            for n in nodes
            if (link := self._links.get(n)) is not None and not self._gave_up(n, link)
        ]

    def _gave_up(self, node: int, link: Link) -> bool:
        """True for a link that has been behind without draining (see _behind)."""
        behind = self._behind(node, link)  # (keeps the bookkeeping current)
        return not behind and node in self._behind_since

    def leave_tree(self, tree: int) -> None:
        """Stop being a member of ``tree``."""
        if self.trees is not None:
            self.trees.leave(trio.current_time(), tree)
            self._flush()

    def statistics(self) -> DriverStatistics:
        """Link-level counters (see ``overlay.statistics()`` for the overlay's)."""
        overlay = self.overlay
        if overlay is None:
            return DriverStatistics(
                len(self._links), self._dials, self._dials_failed, self._dropped
            )
        figures = overlay.statistics()
        return DriverStatistics(
            links=len(self._links),
            dials=self._dials,
            dials_failed=self._dials_failed,
            frames_dropped_full_queue=self._dropped,
            peers=figures.peers,
            leaves_right=tuple(overlay.leaves.right),
            leaves_left=tuple(overlay.leaves.left),
            table_entries=figures.table_entries,
            peers_declared_dead=figures.peers_declared_dead,
        )


def _send_or_drop(link: Link, frame: Frame) -> bool:
    """Queue ``frame`` on ``link`` without waiting; False if it could not be queued.

    Overlay frames tolerate loss (retransmission, heartbeats, gossip), so a full
    or closing link drops instead of blocking the state machine.
    """
    try:
        link.send_nowait(frame)
    except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
        return False
    return True


def _loopback_address(address: str) -> bool:
    try:
        return is_loopback(split_host_port(address)[0])
    except ValueError:
        return False
