"""The relay client: use a local iris_trio node (``iris-trio node``) from any
Python process, under trio or asyncio (it is written on anyio)::

    async with iris_trio.connect() as connection:          # a plain client
        reply = await connection.request("echo", b"hi", timeout=5)

    async with iris_trio.register(55555, "echo") as service:  # a member of "echo"
        await service.serve(handler)

The API has the shape of the embedded :class:`~iris_trio.Node`; errors are the
same types (RemoteError, NoRespondersError, RequestTimeoutError,
MessageTooLargeError), and the streams it hands out raise anyio's
``EndOfStream`` / ``BrokenResourceError`` / ``ClosedResourceError``.
A connection the node closes or loses makes every waiting call raise
``anyio.BrokenResourceError`` with the reason.

A service is a member of its cluster for as long as its connection is open.
When its :meth:`Connection.serve` loop ends (cancelled, or failed) the client
closes the connection, as the Iris client libraries do when their handler loop
dies: the relay protocol has no other way to leave a cluster, and a member that
takes requests nobody handles would make each of them wait out its timeout.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import anyio
import anyio.abc
import sniffio
import trio

from ..errors import (
    ConfigError,
    HandshakeError,
    MessageTooLargeError,
    NoRespondersError,
    ProtocolError,
    RemoteError,
    RequestTimeoutError,
)
from ..patterns.limits import check_message
from ..patterns.tunnel import DEFAULT_WINDOW
from .backend import EventLike, current_backend, read_ready
from .chunks import CHUNK_LIMIT, ChunkAssembler, split
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
    Reply,
    ReplyDelivery,
    Request,
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
    encode,
)
from .connection import NO_RESPONDERS_FAULT, split_fault
from .inbox import Inbox
from .server import DEFAULT_PORT
from .writer import PacketWriter

__all__ = ["Connection", "RelayRequest", "RelayTunnel", "connect", "register"]

DEFAULT_TIMEOUT: Final = 30.0
#: How much longer than a request's timeout the client waits for the node's verdict.
_GRACE: Final = 5.0
_CLOSE_TIMEOUT: Final = 10.0
_YIELD_EVERY: Final = 64
_READ_SIZE: Final = 65536
#: Events (and broadcasts) buffered per subscription: one read from the node can
#: carry thousands of small events at once.
DEFAULT_EVENT_CAPACITY: Final = 16384
_QUEUED_BYTES: Final = 4 * 1024 * 1024
_MAX_TUNNEL_MESSAGE: Final = 64 * 1024 * 1024
#: Why a service's connection closes when its serving loop ends.
_STOPPED_SERVING: Final = "the connection closed: its service stopped serving (serve() ended)"
#: The fault of a request the service received but never handed to its handler.
_NOT_HANDLED: Final = "the service stopped serving before handling the request"


class _Waiter:
    """A call waiting for the node's answer (``done`` set with ``packet`` None:
    none came in time, or the connection ended)."""

    __slots__ = ("done", "packet", "window")

    def __init__(self, done: EventLike, window: int = 0) -> None:
        self.done = done
        self.packet: Packet | None = None
        self.window = window


class RelayRequest:
    """A request for this service; answer it once with :meth:`reply` or :meth:`fail`.

    From ``service.requests`` (the pull model; :meth:`Connection.serve` answers
    them for you). Example::

        async with iris_trio.register(55555, "echo") as service:
            while True:
                request = await service.requests.receive()
                if not request.expired:
                    await request.reply(request.data)

    Attributes:
        data: the request's bytes.
        deadline: ``anyio.current_time()`` after which the requester stops waiting.
    """

    __slots__ = ("_answered", "_connection", "_id", "data", "deadline")

    def __init__(self, connection: Connection, request_id: int, data: bytes, deadline: float):
        self._connection = connection
        self._id = request_id
        self.data = data
        self.deadline = deadline
        self._answered = False

    @property
    def expired(self) -> bool:
        """True once the requester has stopped waiting."""
        return anyio.current_time() >= self.deadline

    def _once(self) -> None:
        if self._answered:
            raise RuntimeError("this request was already answered")
        self._answered = True

    async def reply(self, data: bytes) -> None:
        """Send the reply (once).

        It waits while the connection's send queue is full. Cancellation: the
        request counts as answered from the start, and the reply may have been
        queued or not; one that was not leaves the requester to its timeout.

        Raises:
            TypeError / MessageTooLargeError: ``data`` is not bytes or beyond
                8 MiB (the request stays unanswered).
            RuntimeError: the request was already answered.
            anyio.BrokenResourceError: the connection to the node ended.
        """
        check_message(data)
        self._once()
        await self._connection._writer.send(Reply(self._id, True, reply=data))

    async def fail(self, message: str) -> None:
        """Answer with an error: the requester gets RemoteError(message).

        Cancellation: as :meth:`reply`.

        Raises:
            RuntimeError: the request was already answered.
            anyio.BrokenResourceError: the connection to the node ended.
        """
        self._once()
        await self._connection._writer.send(Reply(self._id, False, fault=message))


class RelayTunnel:
    """One end of a tunnel through the relay: ordered messages both ways.

    ``send()`` waits while the far end's buffer is full; ``receive()`` raises
    ``anyio.EndOfStream`` once the far end closed and everything was read, and
    ``anyio.BrokenResourceError`` if the tunnel broke. Use it in ``async
    with`` (:meth:`Connection.tunnel` does); ``async for message in tunnel``
    reads until the end. Example::

        async with client.tunnel("echo", timeout=5) as tunnel:
            await tunnel.send(b"ping")
            print(await tunnel.receive())

    Leaving its ``async with`` in any way, cancellation included, closes it
    cleanly (shielded: the far end reads what was sent, then its end; 10 s at
    most).
    """

    def __init__(
        self, connection: Connection, tunnel_id: int, window: int, chunk_limit: int
    ) -> None:
        self.id = tunnel_id
        self._connection = connection
        self._window = window
        self._chunk_limit = max(1, chunk_limit or CHUNK_LIMIT)
        self._assembler = ChunkAssembler(window, max_message=_MAX_TUNNEL_MESSAGE)
        self._messages: Inbox[bytes] = Inbox()
        self._allowance = 0
        self._allowance_changed = anyio.Event()
        self._send_lock = anyio.Lock()
        self._to_return = 0
        self._closing = False
        self._ended: str | None = None  # the node's close reason, once it came
        self._done = anyio.Event()

    async def send(self, message: bytes) -> None:
        """Send one message (up to 64 MiB), waiting for the far end's allowance.

        Cancellation: cancelled while it waits for allowance, nothing was sent;
        cancelled between the chunks of a large message, the message is left
        incomplete and the far end never receives it.

        Raises:
            TypeError / MessageTooLargeError: not bytes, or beyond 64 MiB.
            anyio.ClosedResourceError: this end was closed.
            anyio.BrokenResourceError: the far end closed or the tunnel broke.
        """
        if type(message) is not bytes:
            raise TypeError(f"message must be bytes, not {type(message).__name__}")
        if len(message) > _MAX_TUNNEL_MESSAGE:
            raise MessageTooLargeError(f"{len(message)} bytes exceed {_MAX_TUNNEL_MESSAGE}")
        async with self._send_lock:
            while True:
                self._check_sendable()
                if self._allowance > 0:
                    break
                if self._allowance_changed.is_set():
                    self._allowance_changed = anyio.Event()
                await self._allowance_changed.wait()
            writer = self._connection._writer
            for size, piece in split(message, self._chunk_limit):
                self._check_sendable()
                self._allowance -= len(piece)
                await writer.send(TunnelTransfer(self.id, size, piece))

    def _check_sendable(self) -> None:
        if self._closing:
            raise anyio.ClosedResourceError("the tunnel is closed")
        if self._ended is not None:
            raise anyio.BrokenResourceError(self._ended or "the far end closed the tunnel")

    async def receive(self) -> bytes:
        """The next message.

        Cancellation: loses nothing: the next ``receive()`` gets the message a
        cancelled one did not.

        Raises:
            anyio.EndOfStream: the far end closed and everything was read.
            anyio.BrokenResourceError: the tunnel broke (the reason says why).
        """
        message = await self._messages.receive()
        self._to_return += len(message)
        if self._to_return >= self._window // 4 or not len(self._messages):
            if self._ended is None and not self._closing and self._to_return:
                self._assembler.grant(self._to_return)
                self._connection._writer.send_nowait(TunnelAllow(self.id, self._to_return))
            self._to_return = 0
        return message

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.receive()
            except anyio.EndOfStream:
                return

    async def aclose(self) -> None:
        """Close this end: the far end reads what was sent, then its end closes.

        Waits for the node to confirm the close (10 s at most). Cancellation:
        the close is sent before the wait, so after a cancelled ``aclose()``
        this end sends nothing more, but the far end may not have closed yet
        (leaving ``async with`` shields the whole close instead).
        """
        if not self._closing and self._ended is None:
            self._closing = True
            with contextlib.suppress(anyio.BrokenResourceError):
                self._connection._writer.send_nowait(TunnelClose(self.id))
            with anyio.move_on_after(_CLOSE_TIMEOUT):
                await self._done.wait()
        self._closing = True
        self._messages.close()
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> RelayTunnel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()

    # -------------------------------------------------- from the reader task

    def _allow(self, size: int) -> None:
        self._allowance += size
        self._allowance_changed.set()

    def _chunk(self, size: int, data: bytes) -> None:
        message, discarded = self._assembler.chunk(size, data)
        if discarded:  # the node abandoned a message: its bytes come back
            self._assembler.grant(discarded)
            self._connection._writer.send_nowait(TunnelAllow(self.id, discarded))
        if message is not None:
            self._messages.push(message)

    def _end(self, reason: str) -> None:
        if self._ended is None:
            self._ended = reason
            self._messages.close(reason)
            self._allowance_changed.set()
            self._done.set()


class Connection:
    """A connection to the local node's relay (from :func:`connect` or :func:`register`).

    The calls of an embedded :class:`~iris_trio.Node`, on anyio (trio or
    asyncio). A connection the node closes or loses makes every waiting call
    raise ``anyio.BrokenResourceError`` with the reason. Example::

        async with iris_trio.connect() as client:
            await client.publish("news", b"hello")
            reply = await client.request("echo", b"hi", timeout=5)
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        cluster: str,
        *,
        event_capacity: int,
        tunnel_window: int,
        tunnel_backlog: int,
    ) -> None:
        self._stream = stream
        self.cluster = cluster
        self._backend = current_backend()
        self._fd = _eager_fd(stream)
        self._writer = PacketWriter(stream.send, _QUEUED_BYTES, fd=self._fd)
        # When waiters stop waiting for the node's answer (see _expire_waiters):
        # one task for every request, not a cancel scope each.
        self._expiries: list[tuple[float, int, _Waiter]] = []
        self._expiry_order = itertools.count()
        self._sweep_at = math.inf
        self._sweep_wake = self._backend.event()
        self._reader = PacketReader("node")
        self._ids = itertools.count(1)
        self._pending: dict[int, _Waiter] = {}
        self._opening: dict[int, _Waiter] = {}
        self._tunnels: dict[int, RelayTunnel] = {}
        self._topics: dict[str, set[Inbox[bytes]]] = {}
        self._event_capacity = event_capacity
        self._tunnel_window = tunnel_window
        self._tunnel_backlog = tunnel_backlog
        self._requests: Inbox[RelayRequest] = Inbox()
        self._broadcasts: Inbox[bytes] = Inbox(event_capacity)
        self._incoming_tunnels: Inbox[RelayTunnel] = Inbox()
        self._closed: str | None = None  # why the connection ended, once it did
        self._closing: str | None = None  # why this side sent CLOSE, once it did
        self._serving = 0  # serve() loops running
        self._sends = 0
        self._close_confirmed = anyio.Event()

    # --------------------------------------------------------------- sending

    async def request(self, cluster: str, data: bytes, timeout: float | None = None) -> bytes:
        """Send ``data`` to one member of ``cluster`` and return its reply.

        Cancellation: stops the wait, not the request: a member may still run
        it, and its answer is dropped when it comes.

        Raises:
            NoRespondersError: the cluster has no member.
            RemoteError: the member's handler failed.
            RequestTimeoutError: ``timeout`` (default 30 s) passed.
            TypeError / MessageTooLargeError: ``data`` is not bytes or too large.
            anyio.BrokenResourceError: the connection to the node ended.
        """
        check_message(data)
        milliseconds = _milliseconds(timeout)
        waiter = _Waiter(self._backend.event())
        request_id = next(self._ids)
        self._pending[request_id] = waiter
        try:
            await self._send(Request(request_id, cluster, data, milliseconds))
            self._expire_at(milliseconds / 1000 + _GRACE, waiter)
            await waiter.done.wait()
        finally:
            del self._pending[request_id]
        answer = waiter.packet
        if answer is None:
            self._check_open()
            raise RequestTimeoutError(f"no answer from cluster {cluster!r} in time")
        assert isinstance(answer, ReplyDelivery)
        if answer.timed_out:
            raise RequestTimeoutError(f"no answer from cluster {cluster!r} in time")
        if answer.success:
            return answer.reply
        if answer.fault.startswith(NO_RESPONDERS_FAULT):
            raise NoRespondersError(answer.fault[len(NO_RESPONDERS_FAULT) :])
        type_name, message = split_fault(answer.fault)
        raise RemoteError(message, type_name)

    async def broadcast(self, cluster: str, data: bytes) -> None:
        """Send ``data`` to every member of ``cluster``.

        It waits while the connection's send queue is full. Cancellation: the
        broadcast may have been queued (and so sent) or not.

        Raises:
            TypeError / MessageTooLargeError: ``data`` is not bytes or too large.
            anyio.BrokenResourceError: the connection to the node ended.
        """
        check_message(data)
        await self._send(Broadcast(cluster, data))

    async def publish(self, topic: str, data: bytes) -> None:
        """Send ``data`` to every subscriber of ``topic``.

        Cancellation: as :meth:`broadcast`: the event may have gone or not.

        Raises:
            TypeError / MessageTooLargeError: ``data`` is not bytes or too large.
            anyio.BrokenResourceError: the connection to the node ended.
        """
        check_message(data)
        await self._send(Publish(topic, data))

    @contextlib.asynccontextmanager
    async def subscribe(
        self, topic: str, *, capacity: int = DEFAULT_EVENT_CAPACITY
    ) -> AsyncIterator[Inbox[bytes]]:
        """Receive the events of ``topic`` for the ``async with`` body.

        Returns once the node has the subscription in place. The oldest buffered
        event is dropped (and counted in ``.dropped``) when the buffer is full.

        Cancellation: cancelled while subscribing, or the body left by
        cancellation: the subscription ends (the node is told once no other
        subscription of the connection holds the topic); nothing is left behind.

        Raises:
            ConfigError: ``capacity`` < 1.
            anyio.BrokenResourceError: the connection to the node ended.
        """
        if capacity < 1:
            raise ConfigError("capacity must be at least 1")
        self._check_open()
        events: Inbox[bytes] = Inbox(capacity)
        receivers = self._topics.setdefault(topic, set())
        receivers.add(events)
        if len(receivers) == 1:
            await self._send(Subscribe(topic))
            await self._barrier()
        try:
            yield events
        finally:
            receivers.discard(events)
            events.close()
            if not receivers and self._topics.get(topic) is receivers:
                del self._topics[topic]
                if self._closed is None:
                    with contextlib.suppress(anyio.BrokenResourceError):
                        self._writer.send_nowait(Unsubscribe(topic))

    async def _barrier(self) -> None:
        """Wait until the node acted on everything sent so far.

        The node handles a connection's packets in order, and the protocol
        acknowledges only requests: a request with the shortest timeout to the
        nameless cluster (which has no members) is answered at once, after the
        packets before it.
        """
        waiter = _Waiter(self._backend.event())
        request_id = next(self._ids)
        self._pending[request_id] = waiter
        try:
            await self._send(Request(request_id, "", b"", 1))
            self._expire_at(_GRACE, waiter)
            await waiter.done.wait()
        finally:
            del self._pending[request_id]

    @contextlib.asynccontextmanager
    async def tunnel(
        self, cluster: str, *, timeout: float | None = None, window: int = DEFAULT_WINDOW
    ) -> AsyncIterator[RelayTunnel]:
        """Open a tunnel to one member of ``cluster`` for the ``async with`` body.

        Cancellation: cancelled while opening, the opening is abandoned (a
        tunnel the node opens after all is closed at once). The body left by
        cancellation closes the tunnel cleanly, shielded (see
        :class:`RelayTunnel`).

        Raises:
            RequestTimeoutError: no member took it within ``timeout`` (default 30
                s); the relay protocol reports a cluster without members so too.
            ConfigError: ``window`` < 1.
            anyio.BrokenResourceError: the connection to the node ended.
        """
        if window < 1:
            raise ConfigError("window must be at least 1 byte")
        milliseconds = _milliseconds(timeout)
        waiter = _Waiter(self._backend.event(), window)
        tunnel_id = next(self._ids)
        self._opening[tunnel_id] = waiter
        try:
            await self._send(TunnelInit(tunnel_id, cluster, milliseconds))
            with anyio.move_on_after(milliseconds / 1000 + _GRACE):
                await waiter.done.wait()
        finally:
            del self._opening[tunnel_id]
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is None:
            self._check_open()
            raise RequestTimeoutError(f"no member of {cluster!r} took the tunnel in time")
        async with tunnel:
            yield tunnel

    # ---------------------------------------------------------- as a service

    @property
    def requests(self) -> Inbox[RelayRequest]:
        """Requests to this service, oldest first (:func:`register` only)."""
        self._check_service()
        return self._requests

    @property
    def broadcasts(self) -> Inbox[bytes]:
        """Broadcasts to this service's cluster (:func:`register` only)."""
        self._check_service()
        return self._broadcasts

    @property
    def tunnels(self) -> Inbox[RelayTunnel]:
        """Tunnels opened to this service (:func:`register` only); use each in
        ``async with``."""
        self._check_service()
        return self._incoming_tunnels

    async def serve(
        self, handler: Callable[[bytes], Awaitable[bytes]], *, limit: int | None = None
    ) -> None:
        """Answer requests with ``handler`` until cancelled or the connection ends;
        at most ``limit`` at once (default 4 x CPU), each under its deadline.

        Whatever the handler does, the requester gets an answer and serving goes
        on: an exception goes to the requester as RemoteError (its type name and
        message), and so does a result that is not ``bytes`` (a TypeError).

        Example::

            async with iris_trio.register(55555, "echo") as service:
                await service.serve(echo, limit=16)

        Cancellation: when serving ends (this call is cancelled, or fails: a
        BaseException from the handler), running handlers are cancelled (their
        requesters get RemoteError) and the service leaves its cluster by
        closing the connection: the requests it received and never handed to
        the handler are failed at once (RemoteError), the node sends those
        still queued for it to other members, and the connection's own
        requests in flight still get their answers; anything else then raises
        ``anyio.BrokenResourceError``.

        Raises:
            ConfigError: a plain client (from :func:`connect`) has no requests.
        """
        requests = self.requests  # ConfigError for a plain client
        workers = limit or 4 * (os.cpu_count() or 1)
        ended = self._backend.event()
        broken: list[anyio.BrokenResourceError] = []
        self._serving += 1
        try:
            # A pool of workers, each taking a request only when it is free
            # (a request taken is always in a handler's hands), rather than a
            # task per request.
            async with anyio.create_task_group() as tasks:
                for _ in range(workers):
                    tasks.start_soon(self._serve_worker, handler, requests, ended, broken)
                await ended.wait()
                if broken:  # running handlers are cancelled
                    raise broken[0]
        finally:
            self._serving -= 1
            if not self._serving:
                self._stop_serving()

    async def _serve_worker(
        self,
        handler: Callable[[bytes], Awaitable[bytes]],
        requests: Inbox[RelayRequest],
        ended: EventLike,
        broken: list[anyio.BrokenResourceError],
    ) -> None:
        """One of serve()'s workers: handle requests one at a time until the
        connection ends, then set ``ended`` (if it broke, with the error in
        ``broken`` for serve() to raise; the others finish their requests)."""
        deadline_scope = self._backend.deadline_scope
        while True:
            try:
                request = await requests.receive()
            except anyio.EndOfStream:  # the connection closed cleanly
                ended.set()
                return
            except anyio.BrokenResourceError as exc:
                if not ended.is_set():
                    broken.append(exc)
                    ended.set()
                return
            await _handle(handler, request, deadline_scope)

    def _stop_serving(self) -> None:
        """The serving loop is gone: leave the cluster now (see :meth:`serve`)."""
        if self._closed is not None or self._closing is not None:
            return
        self._closing = _STOPPED_SERVING
        unhandled: list[RelayRequest] = []
        with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                unhandled.append(self._requests.receive_nowait())
        self._requests.close(_STOPPED_SERVING)
        with contextlib.suppress(anyio.BrokenResourceError):
            for request in unhandled:  # never seen by a handler: failed, not lost
                request._answered = True
                self._writer.send_nowait(Reply(request._id, False, fault=_NOT_HANDLED))
            # The node stops handing requests to this connection as it reads CLOSE;
            # it fails those handed over and not answered (a handler may have
            # begun them), and answers CLOSE once the client's own work is done.
            self._writer.send_nowait(ClientClose())

    def _check_service(self) -> None:
        if not self.cluster:
            raise ConfigError("only a registered service (iris_trio.register) receives these")

    def _check_open(self) -> None:
        if self._closed is not None:
            raise anyio.BrokenResourceError(self._closed or "the connection is closed")
        if self._closing is not None:
            raise anyio.BrokenResourceError(self._closing)

    # ---------------------------------------------------------- connection

    async def _handshake(self) -> None:
        await self._stream.send(encode(ClientInit(MAGIC_CLIENT, VERSION, self.cluster)))
        while True:
            try:
                data = await self._stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                raise HandshakeError("the node closed the relay connection") from exc
            packets = self._reader.feed(data)
            if not packets:
                continue
            first = packets[0]
            if isinstance(first, Deny):
                raise HandshakeError(f"the node refused: {first.reason}")
            if not isinstance(first, NodeInit) or first.magic != MAGIC_RELAY:
                raise HandshakeError(f"not an Iris relay: {first!r}")
            self._dispatch(packets[1:])
            return

    async def _read(self) -> None:
        reason = "the relay connection was lost"
        try:
            if self._fd is not None:
                await self._read_socket(self._fd)
            while self._closed is None:
                data = await self._stream.receive()
                self._writer.note_read()
                self._dispatch(self._reader.feed(data))
        except (
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            trio.ClosedResourceError,
            OSError,
        ):
            pass
        except ProtocolError as exc:
            reason = f"the node broke the protocol: {exc}"
        self._end(reason)

    async def _read_socket(self, fd: int) -> None:
        """Under trio, read the socket directly (without the stream's layers):
        it yields only when nothing is there to read, or every ``_YIELD_EVERY``
        packets, so that what arrived meanwhile is read in the same turn.

        Raises:
            anyio.EndOfStream: the node closed the connection.
            OSError / trio.ClosedResourceError: the connection broke or was closed.
        """
        unyielded = 0
        drained = False
        while self._closed is None:
            data, waited = await read_ready(fd, _READ_SIZE, drained=drained)
            drained = len(data) < _READ_SIZE
            if waited:
                unyielded = 0
                if self._closed is not None:  # (it closed while this waited)
                    return
            if not data:
                raise anyio.EndOfStream
            self._writer.note_read()
            packets = self._reader.feed(data)
            self._dispatch(packets)
            unyielded += len(packets)
            if unyielded >= _YIELD_EVERY:
                unyielded = 0
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def _write(self) -> None:
        # A failed write means the connection is going: the reader learns why
        # (the node's CLOSE reason, or the end of the stream) and ends it.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await self._writer.run()

    async def _send(self, packet: Packet) -> None:
        """Queue ``packet``; once the connection is going, raise why it ended.

        Yields to other tasks at least every 64 calls (a burst still goes out
        in large writes, and the reader is never starved by a sending loop).
        """
        if self._closing is not None:  # the node reads nothing after our CLOSE
            raise anyio.BrokenResourceError(self._closing)
        try:
            await self._writer.send(packet)
            self._sends += 1
            if self._sends % _YIELD_EVERY == 0:
                await self._backend.cancel_shielded_checkpoint()
        except anyio.BrokenResourceError:
            with anyio.move_on_after(1.0):
                await self._close_confirmed.wait()
            self._check_open()
            raise

    def _expire_at(self, delay: float, waiter: _Waiter) -> None:
        """Stop ``waiter``'s wait ``delay`` seconds from now, with no answer."""
        when = self._backend.current_time() + delay
        expiries = self._expiries
        if len(expiries) > 2 * len(self._pending) + 1024:  # mostly finished calls
            live = {id(waiter) for waiter in self._pending.values()}
            expiries[:] = [entry for entry in expiries if id(entry[2]) in live]
            heapq.heapify(expiries)
        heapq.heappush(expiries, (when, next(self._expiry_order), waiter))
        if when < self._sweep_at:
            self._sweep_wake.set()

    async def _expire_waiters(self) -> None:
        """Wake each request that waited too long for the node's answer (its
        timeout and a grace period), at its deadline: one task for all."""
        backend, expiries = self._backend, self._expiries
        while True:
            now = backend.current_time()
            while expiries and expiries[0][0] <= now:
                heapq.heappop(expiries)[2].done.set()
            self._sweep_at = expiries[0][0] if expiries else math.inf
            self._sweep_wake = backend.event()
            with backend.deadline_scope(self._sweep_at):
                await self._sweep_wake.wait()

    def _end(self, reason: str) -> None:
        """The connection is over: wake everything that waits on it."""
        if self._closed is None:
            self._closed = reason
        self._close_confirmed.set()
        for waiter in [*self._pending.values(), *self._opening.values()]:
            waiter.done.set()
        for tunnel in self._tunnels.values():
            tunnel._end(reason or "the connection closed")
        for receivers in self._topics.values():
            for events in receivers:
                events.close(reason)
        self._requests.close(reason)
        self._broadcasts.close(reason)
        self._incoming_tunnels.close(reason)
        self._writer.close()

    async def _close(self) -> None:
        """Graceful close: CLOSE, and wait for the node to confirm."""
        if self._closed is None:
            if self._closing is None:
                self._closing = "the connection is closed"
                with contextlib.suppress(anyio.BrokenResourceError):
                    self._writer.send_nowait(ClientClose())
            with anyio.move_on_after(_CLOSE_TIMEOUT):
                await self._close_confirmed.wait()
        self._end("")

    def _dispatch(self, packets: list[Packet]) -> None:
        for packet in packets:
            kind = type(packet)
            if kind is ReplyDelivery:
                assert isinstance(packet, ReplyDelivery)
                self._answer(self._pending.get(packet.id), packet)
            elif kind is Publish:
                assert isinstance(packet, Publish)
                for events in self._topics.get(packet.topic, ()):
                    events.push(packet.event)
            elif kind is TunnelTransfer:
                assert isinstance(packet, TunnelTransfer)
                tunnel = self._tunnels.get(packet.tunnel_id)
                if tunnel is not None:
                    tunnel._chunk(packet.size, packet.chunk)
            elif kind is TunnelAllow:
                assert isinstance(packet, TunnelAllow)
                tunnel = self._tunnels.get(packet.tunnel_id)
                if tunnel is not None:
                    tunnel._allow(packet.allowance)
            else:
                self._dispatch_rare(packet)

    def _dispatch_rare(self, packet: Packet) -> None:
        if isinstance(packet, RequestDelivery):
            deadline = anyio.current_time() + packet.timeout_ms / 1000
            self._requests.push(RelayRequest(self, packet.id, packet.request, deadline))
        elif isinstance(packet, BroadcastDelivery):
            self._broadcasts.push(packet.message)
        elif isinstance(packet, TunnelBuild):
            self._accept_tunnel(packet)
        elif isinstance(packet, TunnelConfirmed):
            self._tunnel_confirmed(packet)
        elif isinstance(packet, TunnelClosed):
            tunnel = self._tunnels.pop(packet.tunnel_id, None)
            if tunnel is not None:
                tunnel._end(packet.reason)
        elif isinstance(packet, NodeClose):
            self._closed = packet.reason or self._closing or "the connection is closed"
            self._end(self._closed)
        else:
            raise ProtocolError(f"unexpected {type(packet).__name__} from the node")

    @staticmethod
    def _answer(waiter: _Waiter | None, packet: Packet) -> None:
        if waiter is not None and not waiter.done.is_set():
            waiter.packet = packet
            waiter.done.set()

    def _accept_tunnel(self, packet: TunnelBuild) -> None:
        tunnel_id = next(self._ids)
        self._writer.send_nowait(TunnelConfirm(packet.build_id, tunnel_id))
        tunnel = self._new_tunnel(tunnel_id, self._tunnel_window, packet.chunk_limit)
        if not self.cluster or len(self._incoming_tunnels) >= self._tunnel_backlog:
            tunnel._closing = True  # too many waiting: closed at once
            self._writer.send_nowait(TunnelClose(tunnel_id))
            return
        self._incoming_tunnels.push(tunnel)

    def _tunnel_confirmed(self, packet: TunnelConfirmed) -> None:
        waiter = self._opening.get(packet.tunnel_id)
        if packet.timed_out:
            self._answer(waiter, packet)
        elif waiter is None or waiter.done.is_set():  # the opener gave up meanwhile
            self._writer.send_nowait(TunnelClose(packet.tunnel_id))
        else:
            self._new_tunnel(packet.tunnel_id, waiter.window, packet.chunk_limit)
            self._answer(waiter, packet)

    def _new_tunnel(self, tunnel_id: int, window: int, chunk_limit: int) -> RelayTunnel:
        """A tunnel the node knows by ``tunnel_id`` now: grant it ``window``."""
        tunnel = RelayTunnel(self, tunnel_id, window, chunk_limit)
        self._tunnels[tunnel_id] = tunnel
        self._writer.send_nowait(TunnelAllow(tunnel_id, window))
        return tunnel


async def _handle(
    handler: Callable[[bytes], Awaitable[bytes]],
    request: RelayRequest,
    deadline_scope: Callable[[float], contextlib.AbstractContextManager[object]],
) -> None:
    try:
        with deadline_scope(request.deadline):
            try:
                result = await handler(request.data)
                if type(result) is not bytes:
                    raise TypeError(f"the handler returned {type(result).__name__}, not bytes")
                check_message(result)  # MessageTooLargeError
            except Exception as exc:  # the handler's failure goes to the requester
                # Typed like str(RemoteError): the requester's RemoteError (iris_trio's
                # client or node) gets the type name back.
                text = str(exc)
                name = type(exc).__name__
                await request.fail(f"{name}: {text}" if text else name)
            else:
                await request.reply(result)
    except anyio.BrokenResourceError:
        pass  # the connection ended: nobody to answer


def _eager_fd(stream: anyio.abc.ByteStream) -> int | None:
    """The socket's descriptor where writing to it directly keeps the order of
    bytes: under trio, whose sends complete only once the socket took everything
    (asyncio's transports may still buffer)."""
    if sniffio.current_async_library() != "trio":
        return None
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    return None if raw is None else raw.fileno()


def _milliseconds(timeout: float | None) -> int:
    seconds = DEFAULT_TIMEOUT if timeout is None else timeout
    if seconds <= 0:
        raise RequestTimeoutError("the timeout was not positive")
    return max(1, math.ceil(seconds * 1000))


@contextlib.asynccontextmanager
async def _open(
    port: int,
    cluster: str,
    host: str,
    event_capacity: int,
    tunnel_window: int,
    tunnel_backlog: int,
) -> AsyncIterator[Connection]:
    stream = await anyio.connect_tcp(host, port)
    async with stream:
        connection = Connection(
            stream,
            cluster,
            event_capacity=event_capacity,
            tunnel_window=tunnel_window,
            tunnel_backlog=tunnel_backlog,
        )
        await connection._handshake()
        failed = False
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(connection._read)
                tasks.start_soon(connection._write)
                tasks.start_soon(connection._expire_waiters)
                try:
                    yield connection
                except BaseException:
                    failed = True
                    raise
                finally:
                    if not failed:
                        with anyio.CancelScope(shield=True):
                            await connection._close()
                    connection._end("")
                    tasks.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the body's own exception leaves unwrapped
            if len(group.exceptions) == 1:
                lone = group.exceptions[0]
                raise lone from lone.__cause__
            raise


def connect(
    port: int = DEFAULT_PORT,
    *,
    host: str = "127.0.0.1",
    event_capacity: int = DEFAULT_EVENT_CAPACITY,
    tunnel_window: int = DEFAULT_WINDOW,
) -> contextlib.AbstractAsyncContextManager[Connection]:
    """Connect to the node's relay on ``port`` as a plain client (``async with``).

    Example (plain asyncio; trio works the same)::

        async def main() -> None:
            async with iris_trio.connect() as client:
                print(await client.request("echo", b"hi", timeout=5))

        asyncio.run(main())

    Leaving the body normally closes the connection gracefully: CLOSE, then
    the node's confirmation once the connection's own requests are answered
    (10 s at most), shielded from cancellation.

    Cancellation: leaving the body by cancellation (or any exception) drops
    the connection at once, without that exchange: waiting calls end, and the
    node sees the client go (its subscriptions end; requests it still had to
    answer as a service go to other members or fail). Cancelled while
    connecting, nothing is left open.

    Raises:
        OSError: no node listens there.
        HandshakeError: the node refused (another protocol version).
    """
    return _open(port, "", host, event_capacity, tunnel_window, 0)


def register(
    port: int,
    cluster: str,
    *,
    host: str = "127.0.0.1",
    event_capacity: int = DEFAULT_EVENT_CAPACITY,
    tunnel_window: int = DEFAULT_WINDOW,
    tunnel_backlog: int = 128,
) -> contextlib.AbstractAsyncContextManager[Connection]:
    """Connect as a member of ``cluster``: the connection receives its requests
    (``.requests`` / :meth:`Connection.serve`), broadcasts and tunnels, and can
    do everything a plain client does. ``async with``; raises like :func:`connect`.

    Example::

        async def echo(data: bytes) -> bytes:
            return data

        async with iris_trio.register(55555, "echo") as service:
            await service.serve(echo)

    Cancellation: as :func:`connect`: leaving the body by cancellation drops
    the connection, and so the membership (see :meth:`Connection.serve` for
    the requests in hand).

    Raises:
        ConfigError: ``cluster`` is empty.
        OSError / HandshakeError: as :func:`connect`.
    """
    if not cluster:
        raise ConfigError("a service needs a cluster name")
    return _open(port, cluster, host, event_capacity, tunnel_window, tunnel_backlog)
