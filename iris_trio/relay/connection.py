"""One relay client's connection: the handshake, then every operation mapped
onto the node's patterns, as one task tree.

The reader task parses packets and acts on them in order; each pattern that
waits (a subscription, a service's incoming requests, broadcasts and tunnels,
every tunnel) is a child task, and the client's requests are made by a pool of
request workers (one request at a time each; idle ones wait for the next). The
writer task sends what they queue.
The connection ends with the client's CLOSE (in-flight work finishes, then
CLOSE("")), with its disappearance (everything it held is released), with a
protocol violation (CLOSE(reason), logged and counted) or when the relay stops
(CLOSE("the node is shutting down")).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import heapq
import logging
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import anyio
import trio

from ..errors import (
    ConfigError,
    MessageTooLargeError,
    NoRespondersError,
    RemoteError,
    RequestLostError,
)
from ..patterns.limits import MAX_MESSAGE_SIZE, MAX_TIMEOUT, check_name
from ..patterns.queue import ByteBudget
from ..patterns.requests import IncomingRequests, Request
from ..patterns.subscription import Subscription
from ..patterns.tunnel import Tunnel
from .backend import read_ready
from .bridge import TunnelBridge
from .chunks import CHUNK_LIMIT
from .codec import (
    MAGIC_CLIENT,
    MAGIC_RELAY,
    VERSION,
    Broadcast,
    BroadcastDelivery,
    ClientClose,
    ClientInit,
    Deny,
    NodeClose,
    NodeInit,
    Packet,
    PacketReader,
    Publish,
    RelayProtocolError,
    Reply,
    ReplyDelivery,
    RequestDelivery,
    Subscribe,
    TunnelAllow,
    TunnelBuild,
    TunnelClose,
    TunnelClosed,
    TunnelConfirm,
    TunnelConfirmed,
    TunnelInit,
    TunnelTransfer,
    Unsubscribe,
)
from .codec import Request as RelayRequest
from .limits import RelayLimitError, RelayLimits, RelayTotals
from .writer import PacketWriter

if TYPE_CHECKING:
    from .._node import Node

__all__ = ["NO_RESPONDERS_FAULT", "RelayConnection", "RelayLimits", "split_fault"]

log = logging.getLogger("iris_trio.relay")

#: Fault text prefix of a request to a cluster without members (the protocol
#: has no code for it; the iris_trio client raises NoRespondersError on it).
NO_RESPONDERS_FAULT: Final = "no responders: "
_SHUTDOWN: Final = "the node is shutting down"
_READ_SIZE: Final = 256 * 1024
#: Request workers of a connection kept waiting when it has no requests.
_IDLE_WORKERS: Final = 64
#: Packets acted on between two yields to the scheduler ...
_YIELD_EVERY: Final = 64
#: ... or bytes read.
_YIELD_BYTES: Final = 1024 * 1024
#: A fault naming an exception type the way ``str(RemoteError)`` does:
#: "ValueError: bad input" (the type's last dotted part is capitalised).
_TYPED_FAULT: Final = re.compile(r"((?:[A-Za-z_]\w*\.)*[A-Z]\w*): (.*)", re.DOTALL)


def split_fault(fault: str) -> tuple[str, str]:
    """(type name, message) of a relay fault text: "ValueError: bad" gives
    ("ValueError", "bad"); a fault in no such form is all message ("", fault)."""
    match = _TYPED_FAULT.fullmatch(fault)
    if match is None:
        return "", fault
    return match[1], match[2]


def _fault(exc: BaseException) -> str:
    """The fault text of a local error, typed like ``str(RemoteError)``."""
    if isinstance(exc, RemoteError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _seconds(timeout_ms: int) -> float:
    """A client's timeout in seconds, within what the node takes (1 ms .. MAX_TIMEOUT)."""
    return min(max(timeout_ms, 1) / 1000, MAX_TIMEOUT)


class _GoneError(Exception):
    """The client closed or lost its connection."""


class _Build:
    """An inbound tunnel offered to the service, waiting for its TUN_CONFIRM."""

    __slots__ = ("bridge", "confirmed", "tunnel")

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.confirmed = trio.Event()
        self.bridge: TunnelBridge | None = None


class RelayConnection:
    """One client of the relay (see the module docstring)."""

    def __init__(
        self,
        node: Node,
        stream: trio.SocketStream,
        limits: RelayLimits,
        counters: Counter[str],
        totals: RelayTotals | None = None,
        *,
        refusal: str | None = None,
    ) -> None:
        self._node = node
        self._stream = stream
        self._limits = limits
        self._counters = counters
        self._totals = totals or RelayTotals(limits)
        self._refused = refusal  # DENY the client with this (the relay is full)
        self._fd = stream.socket.fileno()
        self._drained = False  # the last read emptied the socket (see read_ready)
        self._writer = PacketWriter(stream.send_all, limits.queued_bytes, fd=self._fd)
        self._unyielded = 0  # packets acted on since the reader last yielded
        self._unyielded_bytes = 0  # bytes read since then
        self._writer_scope = trio.CancelScope(shield=True)
        self._reader = PacketReader("client")
        self.cluster = ""
        self._peer = self._peer_name()
        self._connected = False  # INIT accepted (and logged)
        self._ending: str | None = None  # why the connection ends, for the log
        self._work: trio.Nursery | None = None
        # Set once NODE_INIT is queued: the service's pumps deliver nothing before.
        self._greeted = trio.Event()
        self._changed = trio.lowlevel.ParkingLot()  # requests or tunnels finished
        # The client's own requests and tunnels.
        self._requests: set[int] = set()
        self._request_queue: collections.deque[RelayRequest] = collections.deque()
        self._idle_workers = 0  # request workers parked in _idle_lot, not yet woken
        self._idle_lot = trio.lowlevel.ParkingLot()
        self._request_slots = trio.Semaphore(limits.pending_requests)
        self._opening: set[int] = set()
        self._tunnels: dict[int, TunnelBridge] = {}
        # A service's incoming requests, broadcasts and tunnels.
        self._service_scope = trio.CancelScope()
        self._served: dict[int, Request] = {}
        self._tickets: dict[int, int] = {}  # served id: its REQUEST's writer ticket
        self._served_deadlines: list[tuple[float, int]] = []
        self._served_slots = trio.Semaphore(limits.served_requests)
        self._served_lot = trio.lowlevel.ParkingLot()
        self._sweep_at = math.inf  # when the expiry sweeper wakes next
        self._next_served = 0
        self._builds: dict[int, _Build] = {}
        self._next_build = 0
        # Subscriptions and broadcast receivers, for their counters.
        self._topics: dict[str, tuple[trio.CancelScope, Subscription]] = {}
        self._subscriptions = 0  # taken or being taken (the limit counts these)
        self._receivers: set[Subscription] = set()
        self._events = ByteBudget(limits.buffered_bytes, parent=self._totals.events)
        self._dropped_closed = 0
        self._handlers: dict[type[Packet], Callable[[Any], Awaitable[None]]] = {
            Broadcast: self._on_broadcast,
            RelayRequest: self._on_request,
            Reply: self._on_reply,
            Subscribe: self._on_subscribe,
            Unsubscribe: self._on_unsubscribe,
            Publish: self._on_publish,
            TunnelInit: self._on_tunnel_init,
            TunnelConfirm: self._on_tunnel_confirm,
            TunnelAllow: self._on_tunnel_allow,
            TunnelTransfer: self._on_tunnel_transfer,
            TunnelClose: self._on_tunnel_close,
        }

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in this client's send queue."""
        return self._writer.queued

    @property
    def events_dropped(self) -> int:
        """Events and broadcasts this client missed by reading too slowly."""
        live = sum(r.statistics().dropped for r in self._receivers)
        return self._dropped_closed + live

    @property
    def greeted(self) -> bool:
        """True once the client's INIT was answered."""
        return self._greeted.is_set()

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Serve the client until it leaves, misbehaves, or the relay stops."""
        try:
            await self._run()
        except Exception as exc:
            if not _only_gone(exc):
                self._ending = self._ending or "a failure of the relay (logged)"
                raise
            # A write to a client that went, which the session did not expect
            # there: an ordinary disconnect all the same, not a relay failure.
            self._ending = self._ending or "the connection was lost"
            log.debug("relay client %s: a write after it went: %r", self._peer, exc)
        finally:
            if self._connected:
                log.info("relay client %s closed: %s", self._peer, self._ending or _SHUTDOWN)

    async def _run(self) -> None:
        final: Packet | None = NodeClose(_SHUTDOWN)
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._write, outer.cancel_scope)
                try:
                    final = await self._session()
                finally:
                    # The writer is shielded: it sends the last packet even when the
                    # relay is being cancelled, then stops (at most a second later).
                    if final is not None:
                        with contextlib.suppress(anyio.BrokenResourceError):
                            self._writer.send_nowait(final)
                    self._writer.close()
                    self._writer_scope.deadline = trio.current_time() + 1.0
        finally:
            with trio.CancelScope(shield=True):
                await self._stream.aclose()

    async def _write(self, scope: trio.CancelScope) -> None:
        with self._writer_scope:
            try:
                await self._writer.run()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self._ending = self._ending or "the connection was lost"
                scope.cancel()  # the client is gone: nothing more can reach it

    async def _session(self) -> Packet | None:
        """Run the connection; return the packet that ends it (None: none)."""
        try:
            with trio.fail_after(self._limits.handshake_timeout):
                init, pipelined = await self._handshake()
        except (trio.TooSlowError, _GoneError):
            return None
        except RelayProtocolError as exc:
            return self._violation(exc)
        refusal = self._refusal(init)
        if refusal is not None:
            self._counters["denied"] += 1
            log.info("relay client %s denied: %s", self._peer, refusal)
            return Deny(MAGIC_RELAY, refusal)
        self.cluster = init.cluster
        async with trio.open_nursery() as work:
            self._work = work
            if self.cluster:
                # In the cluster's trees before INIT is answered (a service is
                # reachable once its INIT returns); its pumps hold what arrives
                # meanwhile until NODE_INIT is queued, the client's first packet.
                await self._register(work)
            try:
                self._writer.send_nowait(NodeInit(MAGIC_RELAY, VERSION))
            except anyio.BrokenResourceError:  # the client went while we registered
                self._ending = "the client disconnected before its INIT was answered"
                log.info("relay client %s left before its INIT was answered", self._peer)
                work.cancel_scope.cancel()
                return None
            self._greeted.set()
            self._connected = True
            log.info(
                "relay client connected from %s (%s)",
                self._peer,
                f"service of cluster {self.cluster!r}" if self.cluster else "client",
            )
            try:
                graceful = await self._read(pipelined)
            except RelayProtocolError as exc:
                final = self._violation(exc)
                await self._unsubscribe_all()
                work.cancel_scope.cancel()
                return final
            except anyio.BrokenResourceError:  # an answer to a client whose writes failed
                self._ending = self._ending or "the connection was lost"
                graceful = False
            if not graceful:
                self._ending = self._ending or "the client disconnected"
                await self._unsubscribe_all()
                work.cancel_scope.cancel()
                return None
            self._ending = "the client closed the connection"
            with trio.move_on_after(self._limits.close_timeout):
                await self._finish()
            self._counters["closed_gracefully"] += 1
            work.cancel_scope.cancel()
        return NodeClose("")

    def _violation(self, exc: RelayProtocolError) -> Packet:
        if isinstance(exc, RelayLimitError):
            self._counters["limits_exceeded"] += 1
            log.warning("relay client %s exceeded a limit: %s", self._peer, exc)
            self._ending = f"limit exceeded: {exc}"
        else:
            self._counters["protocol_violations"] += 1
            log.warning("relay client %s broke the protocol: %s", self._peer, exc)
            self._ending = f"protocol violation: {exc}"
        return NodeClose(self._ending)

    def _peer_name(self) -> str:
        try:
            host, port, *_ = self._stream.socket.getpeername()
        except OSError:
            return "(gone)"
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def _receive(self) -> bytes:
        """The next bytes from the client. A cancel point; it yields to the
        scheduler only when nothing is there to read or after ``_YIELD_BYTES``
        (the reader yields every ``_YIELD_EVERY`` packets besides): what
        arrived meanwhile is read in the same turn, and more packets act
        together."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            data, waited = await read_ready(self._fd, _READ_SIZE, drained=self._drained)
        except (trio.ClosedResourceError, OSError) as exc:
            raise _GoneError from exc
        self._drained = len(data) < _READ_SIZE
        if waited:
            self._unyielded = self._unyielded_bytes = 0
        if not data:
            raise _GoneError
        self._unyielded_bytes += len(data)
        if self._unyielded_bytes >= _YIELD_BYTES:
            # Large packets, or one being assembled, arrive without end: the
            # node's own duties run in between all the same.
            self._unyielded = self._unyielded_bytes = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        self._writer.note_read()
        return data

    async def _handshake(self) -> tuple[ClientInit, list[Packet]]:
        while True:
            packets = self._reader.feed(await self._receive())
            if packets:
                init = packets[0]
                if not isinstance(init, ClientInit):
                    raise RelayProtocolError(f"expected INIT, got {type(init).__name__}")
                return init, packets[1:]

    def _refusal(self, init: ClientInit) -> str | None:
        if init.magic != MAGIC_CLIENT:
            return f"Unsupported protocol magic: {init.magic!r}."
        if init.version != VERSION:
            return f"Unsupported protocol. Client: {init.version}. Iris: {VERSION}."
        if init.cluster:
            try:
                check_name("cluster", init.cluster)
            except ConfigError as exc:
                return f"Invalid cluster name: {exc}."
        return self._refused

    async def _read(self, packets: list[Packet]) -> bool:
        """Act on packets in order; True when the client sent CLOSE, False when it
        vanished."""
        handlers = self._handlers
        while True:
            for packet in packets:
                if type(packet) is ClientClose:
                    return True
                handler = handlers.get(type(packet))
                if handler is None:
                    raise RelayProtocolError(f"unexpected {type(packet).__name__}")
                await handler(packet)
                self._unyielded += 1
                if self._unyielded >= _YIELD_EVERY:
                    # One read holds up to thousands of small packets, and reads
                    # follow each other without a yield while data is there: the
                    # node's own duties (heartbeats, acknowledgements) run in between.
                    self._unyielded = self._unyielded_bytes = 0
                    await trio.lowlevel.checkpoint()
            try:
                packets = self._reader.feed(await self._receive())
            except _GoneError:
                return False

    async def _finish(self) -> None:
        """After CLOSE: stop serving, let the client's own requests finish, close
        its tunnels cleanly."""
        self._service_scope.cancel()
        await self._unsubscribe_all()
        while self._requests or self._tunnels or self._opening:
            for bridge in self._tunnels.values():  # also those opened meanwhile
                bridge.close()
            await self._changed.park()

    async def _unsubscribe_all(self) -> None:
        """End the client's subscriptions a slice at a time: leaving a tree is
        work for the overlay, and a thousand at once would hold up its own
        duties (heartbeats, acknowledgements) for as long."""
        scopes = [scope for scope, _ in self._topics.values()]
        for start in range(0, len(scopes), _YIELD_EVERY):
            for scope in scopes[start : start + _YIELD_EVERY]:
                scope.cancel()
            # The cancelled ones unwind in the next batch, before this task
            # goes on; I/O is polled between batches.
            await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()

    def _spawn(self, function: Callable[..., Awaitable[None]], *args: object) -> None:
        assert self._work is not None
        self._work.start_soon(self._quietly, function, *args)

    @staticmethod
    async def _quietly(
        function: Callable[..., Awaitable[None]], *args: object, **kwargs: object
    ) -> None:
        # The writer refuses packets once the client is gone; the session is
        # ending then, and so is this task.
        with contextlib.suppress(anyio.BrokenResourceError):
            await function(*args, **kwargs)

    # ----------------------------------------------------------- the service

    async def _register(self, work: trio.Nursery) -> None:
        """Be a member of the connection's cluster: requests, broadcasts, tunnels."""
        await work.start(self._service)

    async def _service(self, task_status: trio.TaskStatus[None]) -> None:
        with self._service_scope:
            async with trio.open_nursery() as service:
                for pump in (self._serve_requests, self._serve_broadcasts, self._serve_tunnels):
                    await service.start(self._quietly, pump)
                service.start_soon(self._quietly, self._expire_served)
                task_status.started()

    async def _serve_requests(self, task_status: trio.TaskStatus[None]) -> None:
        node, limit = self._node, self._limits.served_requests
        incoming: IncomingRequests
        writer = self._writer
        async with node.requests(self.cluster, limit=limit) as incoming:
            task_status.started()
            await self._greeted.wait()  # requests queue for this member meanwhile
            try:
                while True:
                    # Without a task switch while there is room and work (under load).
                    if not _acquired_nowait(self._served_slots):
                        await self._served_slots.acquire()
                    # Room first: a request taken is queued for the client at once.
                    await writer.wait_room()
                    try:
                        request = incoming.receive_nowait()
                    except trio.WouldBlock:
                        request = await incoming.receive()
                    self._next_served += 1
                    served_id = self._next_served
                    remaining = request.deadline - trio.current_time()
                    milliseconds = max(1, math.ceil(remaining * 1000))
                    delivery = RequestDelivery(served_id, request.data, milliseconds)
                    try:
                        ticket = writer.send_withdrawable_nowait(delivery)
                    except anyio.BrokenResourceError:
                        _not_started(request)  # never reached the client
                        raise
                    self._served[served_id] = request
                    if ticket:
                        self._tickets[served_id] = ticket
                    heapq.heappush(self._served_deadlines, (request.deadline, served_id))
                    if request.deadline < self._sweep_at:  # sooner than the sweeper wakes
                        self._served_lot.unpark()
            finally:
                self._take_back_unsent()

    def _take_back_unsent(self) -> None:
        """The service stops: the requests whose REQUEST is still in the send
        queue (not a byte of it written) never reached the client. Withdrawn,
        they go back to their requesters to be sent to another member, as those
        still queued for this member do; the others may have run, and fail."""
        withdrawn = self._writer.withdraw(self._tickets.values())
        for served_id, ticket in list(self._tickets.items()):
            if ticket in withdrawn:
                del self._tickets[served_id]
                request = self._served.pop(served_id)
                self._served_slots.release()
                _not_started(request)
        if withdrawn:
            log.debug("relay client %s: %d requests given back", self._peer, len(withdrawn))

    async def _expire_served(self) -> None:
        """Forget requests whose requester stopped waiting (the client did not
        answer in time), so that they no longer count against its capacity."""
        deadlines = self._served_deadlines
        while True:
            now = trio.current_time()
            while deadlines and deadlines[0][0] <= now:
                _, served_id = heapq.heappop(deadlines)
                request = self._served.pop(served_id, None)
                if request is not None:
                    self._tickets.pop(served_id, None)
                    self._served_slots.release()
                    if not request.answered:
                        request.fail_nowait("the service did not answer in time")
            self._sweep_at = deadlines[0][0] if deadlines else math.inf
            with trio.move_on_at(self._sweep_at):
                await self._served_lot.park()

    async def _on_reply(self, packet: Reply) -> None:
        request = self._served.pop(packet.id, None)
        if request is None:  # expired meanwhile: the requester stopped waiting
            self._counters["unknown_replies"] += 1
            return
        self._tickets.pop(packet.id, None)
        self._served_slots.release()
        deadlines = self._served_deadlines
        if len(deadlines) > 2 * len(self._served) + 1024:  # answered ones wait there
            deadlines[:] = [entry for entry in deadlines if entry[1] in self._served]
            heapq.heapify(deadlines)
        if request.answered:  # the member stopped meanwhile
            return
        if not packet.success:
            type_name, message = split_fault(packet.fault)
            request.fail_nowait(message, type_name)
        elif len(packet.reply) > MAX_MESSAGE_SIZE:
            request.fail_nowait(f"the reply of {len(packet.reply)} bytes is too large")
        else:
            request.reply_nowait(packet.reply)
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _serve_broadcasts(self, task_status: trio.TaskStatus[None]) -> None:
        capacity = self._limits.event_buffer
        async with self._node.broadcasts(self.cluster, capacity=capacity) as receiver:
            receiver.bound_bytes(self._limits.event_bytes, self._events)
            self._receivers.add(receiver)
            task_status.started()
            try:
                await self._greeted.wait()  # buffered meanwhile (bounded)
                await self._forward(receiver, BroadcastDelivery)
            finally:
                self._forget_receiver(receiver)

    async def _serve_tunnels(self, task_status: trio.TaskStatus[None]) -> None:
        async with self._node.tunnels(self.cluster) as inbox:
            task_status.started()
            await self._greeted.wait()  # openings wait in the inbox meanwhile
            totals = self._totals
            while True:
                while len(self._tunnels) + len(self._builds) >= self._limits.tunnels:
                    await self._changed.park()
                while totals.tunnels >= self._limits.total_tunnels:
                    await totals.tunnel_ended.park()
                tunnel = await inbox.receive()
                self._next_build += 1
                self._builds[self._next_build] = _Build(tunnel)
                totals.tunnels += 1
                self._spawn(self._offer_tunnel, self._next_build)

    async def _offer_tunnel(self, build_id: int) -> None:
        build = self._builds[build_id]
        try:
            async with build.tunnel:
                self._writer.send_nowait(TunnelBuild(build_id, CHUNK_LIMIT))
                with trio.move_on_after(self._limits.confirm_timeout):
                    await build.confirmed.wait()
                del self._builds[build_id]
                if build.bridge is None:
                    build.tunnel.abort("the service did not take the tunnel in time")
                    return
                await self._relay_tunnel(build.bridge)
        finally:
            self._builds.pop(build_id, None)
            self._totals.tunnel_closed()
            self._changed.unpark_all()

    async def _on_tunnel_confirm(self, packet: TunnelConfirm) -> None:
        build = self._builds.get(packet.build_id)
        if build is None or build.confirmed.is_set():
            self._writer.send_nowait(
                TunnelClosed(packet.tunnel_id, "the tunnel was not confirmed in time")
            )
            return
        self._check_new_tunnel(packet.tunnel_id)
        build.bridge = self._bridge(packet.tunnel_id, build.tunnel)
        build.confirmed.set()
        await trio.lowlevel.checkpoint_if_cancelled()

    # ---------------------------------------------------- the client's own work

    async def _on_request(self, packet: RelayRequest) -> None:
        if packet.id in self._requests:
            raise RelayProtocolError(f"request id {packet.id} is already pending")
        # Beyond either limit the client waits (it is not read meanwhile).
        if not _acquired_nowait(self._request_slots):
            await self._request_slots.acquire()
        totals = self._totals
        if not _acquired_nowait(totals.request_slots):
            try:
                await totals.request_slots.acquire()
            except BaseException:
                self._request_slots.release()
                raise
        totals.pending_requests += 1
        self._requests.add(packet.id)
        self._request_queue.append(packet)
        if self._idle_workers:
            self._idle_workers -= 1
            self._idle_lot.unpark()
        else:
            self._spawn(self._request_worker)

    async def _request_worker(self) -> None:
        """Make the client's requests, one at a time, while there are any; then
        wait for more (a few such workers stay, not a task per request)."""
        queue = self._request_queue
        while True:
            while queue:
                await self._request(queue.popleft())
            if self._idle_workers >= _IDLE_WORKERS:
                return
            self._idle_workers += 1
            await self._idle_lot.park()

    async def _request(self, packet: RelayRequest) -> None:
        try:
            try:
                reply = await self._node.request(
                    packet.cluster, packet.request, timeout=_seconds(packet.timeout_ms)
                )
            except trio.TooSlowError:
                answer = ReplyDelivery(packet.id, True)
            except NoRespondersError as exc:
                fault = NO_RESPONDERS_FAULT + str(exc)
                answer = ReplyDelivery(packet.id, False, False, fault=fault)
            except (
                RemoteError,
                RequestLostError,
                MessageTooLargeError,
                ConfigError,
                trio.ClosedResourceError,
            ) as exc:
                # ConfigError: a cluster name the node refuses ("" is answered at
                # once: the iris_trio client's barrier relies on it).
                answer = ReplyDelivery(packet.id, False, False, fault=_fault(exc))
            else:
                answer = ReplyDelivery(packet.id, False, True, reply=reply)
            await self._writer.send(answer)
        finally:
            self._requests.discard(packet.id)
            self._request_slots.release()
            self._totals.request_slots.release()
            self._totals.pending_requests -= 1
            self._changed.unpark_all()

    async def _on_broadcast(self, packet: Broadcast) -> None:
        self._check_size(packet.message)
        try:
            await self._node.broadcast(packet.cluster, packet.message)
        except ConfigError as exc:  # a name the node refuses: the protocol has no answer
            raise RelayProtocolError(str(exc)) from None

    async def _on_publish(self, packet: Publish) -> None:
        self._check_size(packet.event)
        try:
            await self._node.publish(packet.topic, packet.event)
        except ConfigError as exc:  # a name the node refuses: the protocol has no answer
            raise RelayProtocolError(str(exc)) from None

    @staticmethod
    def _check_size(message: bytes) -> None:
        if len(message) > MAX_MESSAGE_SIZE:
            size = len(message)
            raise RelayProtocolError(f"a message of {size} bytes exceeds {MAX_MESSAGE_SIZE}")

    async def _on_subscribe(self, packet: Subscribe) -> None:
        if packet.topic in self._topics:  # a client-side mistake; no reason to drop it
            self._counters["duplicate_subscriptions"] += 1
            await trio.lowlevel.checkpoint()
            return
        try:
            check_name("topic", packet.topic)
        except ConfigError as exc:  # the protocol has no answer to carry it
            raise RelayProtocolError(str(exc)) from None
        limits, totals = self._limits, self._totals
        if self._subscriptions >= limits.subscriptions:
            raise RelayLimitError(
                f"more than {limits.subscriptions} subscriptions on one connection"
            )
        if totals.subscriptions >= limits.total_subscriptions:
            raise RelayLimitError(
                f"the node serves {limits.total_subscriptions} subscriptions to relay clients"
            )
        assert self._work is not None
        self._subscriptions += 1
        totals.subscriptions += 1
        await self._work.start(self._quietly, self._subscription, packet.topic)

    async def _subscription(
        self, topic: str, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await self._subscribe(topic, task_status)
        finally:
            self._subscriptions -= 1
            self._totals.subscriptions -= 1

    async def _subscribe(self, topic: str, task_status: trio.TaskStatus[None]) -> None:
        limits = self._limits
        with trio.CancelScope() as scope:
            async with self._node.subscribe(topic, capacity=limits.event_buffer) as events:
                events.bound_bytes(limits.event_bytes, self._events)
                self._topics[topic] = (scope, events)
                self._receivers.add(events)
                task_status.started()
                try:
                    await self._forward(events, functools.partial(Publish, topic))
                finally:
                    self._forget_receiver(events)
                    if self._topics.get(topic, (None, None))[1] is events:
                        del self._topics[topic]

    async def _forward(self, source: Subscription, packet: Callable[[bytes], Packet]) -> None:
        """Send what arrives on ``source`` to the client until it closes. An event
        is taken only while the client's queue has room, so a client that does
        not read leaves its events in the subscription's bounded buffer (where
        the oldest are dropped and counted); what is buffered goes at once when
        there is room (the source fills in bursts)."""
        writer = self._writer
        while True:
            await writer.wait_room()
            await source.wait_buffered()
            while writer.has_room:
                try:
                    data = source.receive_nowait()
                except trio.WouldBlock:
                    break
                except trio.ClosedResourceError:
                    return
                writer.send_nowait(packet(data))

    def _forget_receiver(self, receiver: Subscription) -> None:
        self._receivers.discard(receiver)
        self._dropped_closed += receiver.statistics().dropped

    async def _on_unsubscribe(self, packet: Unsubscribe) -> None:
        entry = self._topics.pop(packet.topic, None)
        if entry is None:  # not subscribed: a client-side mistake, ignored
            self._counters["unknown_unsubscriptions"] += 1
        else:
            entry[0].cancel()
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ tunnels

    def _check_new_tunnel(self, tunnel_id: int) -> None:
        if tunnel_id in self._tunnels or tunnel_id in self._opening:
            raise RelayProtocolError(f"tunnel id {tunnel_id} is already in use")

    def _bridge(self, tunnel_id: int, tunnel: Tunnel) -> TunnelBridge:
        bridge = TunnelBridge(
            tunnel_id,
            tunnel,
            self._writer,
            window=self._limits.tunnel_window,
            max_message=self._limits.max_tunnel_message,
        )
        self._tunnels[tunnel_id] = bridge
        return bridge

    async def _relay_tunnel(self, bridge: TunnelBridge) -> None:
        try:
            await bridge.run()
        finally:
            del self._tunnels[bridge.client_id]
            self._changed.unpark_all()

    async def _on_tunnel_init(self, packet: TunnelInit) -> None:
        self._check_new_tunnel(packet.tunnel_id)
        limits, totals = self._limits, self._totals
        if (
            len(self._tunnels) + len(self._opening) >= limits.tunnels
            or totals.tunnels >= limits.total_tunnels
        ):
            self._counters["tunnels_refused"] += 1
            self._writer.send_nowait(TunnelConfirmed(packet.tunnel_id, True))
        else:
            self._opening.add(packet.tunnel_id)
            totals.tunnels += 1
            self._spawn(self._open_tunnel, packet)
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _open_tunnel(self, packet: TunnelInit) -> None:
        opened = False
        try:
            timeout = _seconds(packet.timeout_ms)
            async with self._node.tunnel(packet.cluster, timeout=timeout) as tunnel:
                opened = True
                bridge = self._bridge(packet.tunnel_id, tunnel)
                self._opening.discard(packet.tunnel_id)
                self._writer.send_nowait(TunnelConfirmed(packet.tunnel_id, False, CHUNK_LIMIT))
                await self._relay_tunnel(bridge)
        except (trio.TooSlowError, NoRespondersError, RemoteError, RequestLostError, ConfigError):
            if opened:
                raise
            # The protocol has no fault for a tunnel: every failure to open one
            # (a cluster name the node refuses too) is answered timed out.
            self._writer.send_nowait(TunnelConfirmed(packet.tunnel_id, True))
        finally:
            self._opening.discard(packet.tunnel_id)
            self._totals.tunnel_closed()
            self._changed.unpark_all()

    async def _on_tunnel_allow(self, packet: TunnelAllow) -> None:
        bridge = self._tunnels.get(packet.tunnel_id)
        if bridge is not None:  # else: closed meanwhile
            bridge.allow(packet.allowance)
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _on_tunnel_transfer(self, packet: TunnelTransfer) -> None:
        bridge = self._tunnels.get(packet.tunnel_id)
        if bridge is not None:  # else: closed meanwhile, the chunk is moot
            bridge.transfer(packet.size, packet.chunk)
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _on_tunnel_close(self, packet: TunnelClose) -> None:
        bridge = self._tunnels.get(packet.tunnel_id)
        if bridge is not None:
            bridge.close()
        await trio.lowlevel.checkpoint_if_cancelled()


def _not_started(request: Request) -> None:
    """Mark a request taken from the node but never delivered to the client:
    when the service stops unanswered, it goes back to its requester to be
    sent to another member (RETRY), not failed as one that may have run."""
    request._started = False


def _only_gone(exc: BaseException) -> bool:
    """True if ``exc`` is (a group of nothing but) the writer's refusal of a
    client that went."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_gone(inner) for inner in exc.exceptions)
    return isinstance(exc, anyio.BrokenResourceError)


def _acquired_nowait(semaphore: trio.Semaphore) -> bool:
    try:
        semaphore.acquire_nowait()
    except trio.WouldBlock:
        return False
    return True
