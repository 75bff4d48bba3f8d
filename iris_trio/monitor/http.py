"""A small read-only HTTP/1.1 server on h11 over trio streams.

h11 parses and frames (sans-IO); this module only moves bytes and enforces the
limits: request head size, body size, idle and write timeouts, connections at
once. A malformed request gets its 4xx answer and closes that connection only;
a failure while serving one connection is logged and ends that connection, never
the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import http
import logging
from collections.abc import Callable
from typing import Final

import h11
import trio

from .._version import __version__

__all__ = ["HttpLimits", "HttpRequest", "HttpResponse", "serve_http"]

log = logging.getLogger("iris_trio.monitor")

_SERVER: Final = f"iris-trio/{__version__}".encode("ascii")
_READ_SIZE: Final = 16384


@dataclasses.dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds of the HTTP server (per connection unless said otherwise).

    Attributes:
        connections: connections served at once; more are closed on arrival.
        head_bytes: the largest request line and headers (431 beyond).
        body_bytes: the largest request body (413 beyond; the server reads none).
        idle_timeout: seconds a connection may take to send its next request.
        write_timeout: seconds a response may take to be written.
    """

    connections: int = 64
    head_bytes: int = 16384
    body_bytes: int = 65536
    idle_timeout: float = 30.0
    write_timeout: float = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class HttpRequest:
    """A request as the handler sees it: method, path (no query), query, headers
    (names in lower case)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete response: status, body, content type and extra headers."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


#: Answers a request at once (no waiting: the data served is a snapshot).
Handler = Callable[[HttpRequest], HttpResponse]


class _BodyTooLargeError(Exception):
    """The client sent a body beyond the limit."""


class _HeadTooLargeError(Exception):
    """The request line and headers exceed the limit (h11 bounds only a head
    that arrives in pieces; one that arrives whole is measured here)."""


class _ClosedError(Exception):
    """The client closed the connection (or went silent past the idle timeout)."""


def _text(status: int, message: str) -> HttpResponse:
    return HttpResponse(status, (message + "\n").encode("utf-8"))


class _Connection:
    """One client connection: requests answered in order until it closes."""

    def __init__(self, stream: trio.abc.Stream, handler: Handler, limits: HttpLimits) -> None:
        self._stream = stream
        self._handler = handler
        self._limits = limits
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.head_bytes)

    async def run(self) -> None:
        while True:
            try:
                request = await self._read_request()
            except _ClosedError:
                return
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                await self._send_error(status, f"bad request: {exc}")
                return
            except _BodyTooLargeError:
                await self._send_error(413, "a request body is not accepted here")
                return
            except _HeadTooLargeError:
                await self._send_error(431, "request line and headers too large")
                return
            try:
                response = self._handler(request)
            except Exception:  # a bug in a page: that request fails, not the server
                log.exception("monitor: %s %s failed", request.method, request.path)
                response = _text(500, "internal error (logged by the node)")
            await self._send(response, head_only=request.method == "HEAD")
            if self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
                return
            self._h11.start_next_cycle()

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                data = await self._stream.receive_some(_READ_SIZE)
                self._h11.receive_data(bytes(data))  # b"": the client closed its side
            elif event is h11.PAUSED or isinstance(event, h11.Event):
                return event

    async def _read_request(self) -> HttpRequest:
        with trio.move_on_after(self._limits.idle_timeout):
            event = await self._next_event()
            if not isinstance(event, h11.Request):
                raise _ClosedError  # ConnectionClosed (or PAUSED, which cannot come first)
            head = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
            if head > self._limits.head_bytes:
                raise _HeadTooLargeError
            body = 0
            while True:
                part = await self._next_event()
                if isinstance(part, h11.Data):
                    body += len(part.data)
                    if body > self._limits.body_bytes:
                        raise _BodyTooLargeError
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    raise _ClosedError
            target = event.target.decode("ascii", "replace")
            path, _, query = target.partition("?")
            headers = {
                name.decode("ascii", "replace").lower(): value.decode("latin-1")
                for name, value in event.headers
            }
            return HttpRequest(event.method.decode("ascii", "replace"), path, query, headers)
        raise _ClosedError  # idle for too long

    async def _send(self, response: HttpResponse, *, head_only: bool = False) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Server", _SERVER.decode("ascii")),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *response.headers,
        ]
        try:
            reason = http.HTTPStatus(response.status).phrase.encode("ascii")
        except ValueError:
            reason = b""
        data = self._h11.send(
            h11.Response(status_code=response.status, headers=headers, reason=reason)
        )
        if not head_only and response.body:
            data += self._h11.send(h11.Data(data=response.body))
        data += self._h11.send(h11.EndOfMessage())
        with trio.move_on_after(self._limits.write_timeout) as scope:
            await self._stream.send_all(data)
        if scope.cancelled_caught:
            raise _ClosedError

    async def _send_error(self, status: int, message: str) -> None:
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = _text(status, message)
        response = dataclasses.replace(response, headers=(("Connection", "close"),))
        with contextlib.suppress(_ClosedError, trio.BrokenResourceError, trio.ClosedResourceError):
            await self._send(response)


async def _serve_client(
    stream: trio.SocketStream, handler: Handler, limits: HttpLimits, slots: trio.Semaphore
) -> None:
    try:
        slots.acquire_nowait()
    except trio.WouldBlock:
        log.debug("monitor: too many connections; one closed on arrival")
        await stream.aclose()
        return
    try:
        async with stream:
            await _Connection(stream, handler, limits).run()
    except (trio.BrokenResourceError, trio.ClosedResourceError, _ClosedError):
        pass  # the client went away: nothing to answer
    except Exception:  # a bug: it ends this connection, not the server or the node
        log.exception("monitor: a connection failed")
    finally:
        slots.release()


async def serve_http(
    handler: Handler,
    listeners: list[trio.SocketListener],
    *,
    limits: HttpLimits | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``listeners`` until cancelled (closes them then);
    reports the listeners through ``task_status`` once serving.

    Args:
        handler: answers each request at once (it must not wait).
        listeners: bound listeners (they belong to this call from now on).
        limits: see :class:`HttpLimits`.
    """
    limits = limits or HttpLimits()
    slots = trio.Semaphore(limits.connections)

    async def serve_client(stream: trio.SocketStream) -> None:
        await _serve_client(stream, handler, limits, slots)

    await trio.serve_listeners(serve_client, listeners, task_status=task_status)
