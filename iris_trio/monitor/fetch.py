"""Fetch a page from a node's monitor (``iris-trio status`` and ``top``): one
GET over h11 on a trio stream."""

from __future__ import annotations

import dataclasses
import urllib.parse
from typing import Final

import h11
import trio

from .._command import connect_failure
from ..errors import IrisError

__all__ = ["MonitorUnavailableError", "Page", "fetch", "monitor_url"]

_MAX_BODY: Final = 16 << 20
_READ_SIZE: Final = 65536


class MonitorUnavailableError(IrisError):
    """No monitor answered at that address: nothing listens there
    (``listening`` False), or what answered was not HTTP (``listening`` True)."""

    def __init__(self, message: str, *, listening: bool) -> None:
        super().__init__(message)
        self.listening = listening


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """A response: status code, headers (names in lower case) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


def monitor_url(text: str) -> str:
    """The monitor ``text`` names: ``http://HOST:PORT`` (any path, such as a
    page's, is left out), ``HOST:PORT`` or a bare ``PORT`` (on 127.0.0.1).
    Returns ``http://HOST:PORT``.

    Raises:
        ValueError: ``text`` is none of those (the message says why).
    """
    given = text
    text = text.strip()
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "http":
        raise ValueError(f"{given!r}: the monitor speaks plain http://, not {parts.scheme}://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{given!r} has no valid port (1 to 65535)") from None
    if not parts.hostname or port is None or port == 0:
        raise ValueError(f"{given!r} is not HOST:PORT of a monitor (e.g. 127.0.0.1:55556)")
    host = parts.hostname
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def fetch(url: str, *, accept: str = "*/*") -> Page:
    """GET ``url`` (``http://host:port/path``) and return the whole response.

    The caller's cancel scope bounds the wait. A checkpoint.

    Raises:
        MonitorUnavailableError: nothing listens there, the connection broke,
            or the answer was not HTTP (or larger than 16 MiB).
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        reason = connect_failure(exc)
        raise MonitorUnavailableError(
            f"no monitor at {host}:{port} ({reason})", listening=False
        ) from None
    async with stream:
        try:
            return await _exchange(stream, parts.netloc, target, accept)
        except (h11.ProtocolError, trio.BrokenResourceError, OSError) as exc:
            raise MonitorUnavailableError(
                f"{host}:{port} is not a monitor: it does not answer in HTTP ({exc})",
                listening=True,
            ) from None


async def _exchange(stream: trio.SocketStream, host: str, target: str, accept: str) -> Page:
    connection = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=target,
        headers=[("Host", host), ("Accept", accept), ("Connection", "close")],
    )
    await stream.send_all(connection.send(request) + connection.send(h11.EndOfMessage()))
    response: h11.Response | None = None
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(bytes(await stream.receive_some(_READ_SIZE)))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY:
                raise h11.RemoteProtocolError("response body beyond 16 MiB")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    if response is None:
        raise h11.RemoteProtocolError("the connection closed before a response")
    headers = {
        name.decode("ascii", "replace").lower(): value.decode("latin-1")
        for name, value in response.headers
    }
    return Page(response.status_code, headers, bytes(body))
