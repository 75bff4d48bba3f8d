"""The exception types of iris_trio.

Every error iris_trio raises on its own account derives from :class:`IrisError`.
Timeouts are trio's (:class:`trio.TooSlowError` or plain cancellation) and
resource errors are trio's (:class:`trio.ClosedResourceError`,
:class:`trio.BrokenResourceError`, :class:`trio.EndOfChannel`), so that code
written against trio channels and streams works unchanged.

Errors split the way sans-IO libraries split them: :class:`ProtocolError` and
:class:`HandshakeError` mean the *remote side* did something wrong; the
``ValueError`` subclasses mean the *local caller* asked for something invalid.
"""

from __future__ import annotations

import trio

__all__ = [
    "ConfigError",
    "HandshakeError",
    "InternalError",
    "IrisError",
    "KeyFormatError",
    "MessageTooLargeError",
    "NoRespondersError",
    "ProtocolError",
    "RemoteError",
    "RequestLostError",
    "RequestTimeoutError",
]


class IrisError(Exception):
    """Root of every exception raised by iris_trio itself.

    Example::

        try:
            reply = await node.request("calc", b"2 3")
        except iris_trio.IrisError as exc:  # any of iris_trio's own errors
            log.warning("calc failed: %s", exc)
    """


class ProtocolError(IrisError):
    """A peer sent bytes that violate the wire protocol.

    Raised by the pure decoders; the transport turns it into closing that one
    link. It never means the local node is broken. Neither a node's calls nor
    the relay client's raise it (the link or connection goes, with the
    reason); it reaches code that decodes wire bytes itself.

    Example::

        try:
            packets = iris_trio.relay.codec.PacketReader("node").feed(data)
        except iris_trio.ProtocolError:
            ...  # the peer is at fault: drop its connection, not the process
    """


class HandshakeError(IrisError):
    """The secure handshake with a peer failed or timed out.

    Typical causes: a different network key, network name or protocol version
    on the other side, a peer that is not an iris_trio node, or a peer that
    stalled past the handshake deadline. No application data is ever accepted
    from a peer whose handshake failed. A node never raises it from its calls
    (the link is dropped and logged); :func:`iris_trio.connect` does, when the
    node refuses the relay client.

    Example::

        try:
            async with iris_trio.connect() as client:
                ...
        except iris_trio.HandshakeError as exc:
            print("the node refused:", exc)
    """


class MessageTooLargeError(IrisError, ValueError):
    """A message or frame exceeds its configured size limit (local misuse).

    A ``ValueError``, raised at once, before anything is sent.

    Example::

        if len(data) > iris_trio.MAX_MESSAGE_SIZE:
            ...  # a tunnel carries any size: send it through node.tunnel()
        await node.publish("news", data)  # else MessageTooLargeError
    """


class KeyFormatError(IrisError, ValueError):
    """A key file or key value could not be parsed.

    Example::

        try:
            key = iris_trio.NetworkKey.from_file("/etc/iris/network.key")
        except iris_trio.KeyFormatError as exc:
            sys.exit(f"bad key file: {exc}")
    """


class ConfigError(IrisError, ValueError):
    """A configuration value is out of range or inconsistent.

    A ``ValueError``, raised before anything starts (or is sent).

    Example::

        try:
            async with iris_trio.join("calc", discovery="lan"):  # dev network
                ...
        except iris_trio.ConfigError as exc:
            print(exc)  # the dev network discovers on loopback only: ...
    """


class NoRespondersError(IrisError):
    """The cluster has no member: raised at once, not after the timeout.

    Example::

        try:
            reply = await node.request("calc", b"2 3")
        except iris_trio.NoRespondersError:
            reply = None  # nobody serves "calc" now
    """


class RemoteError(IrisError):
    """The member's handler failed.

    Attributes:
        message: the handler's error text.
        type_name: the name of the exception type the handler raised (``""`` when
            the member did not say, e.g. a relay client or ``Request.fail()``).

    ``str()`` of it reads like Python's own ``"ValueError: bad input"``.

    Example::

        try:
            await node.request("calc", b"two three")
        except iris_trio.RemoteError as exc:
            print(exc.type_name, exc.message)  # ValueError invalid literal ...
    """

    def __init__(self, message: str, type_name: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if type_name else message)
        self.message = message
        self.type_name = type_name


class RequestLostError(IrisError):
    """A request (or tunnel opening) was lost with a node that held it: the member
    handling it, or a node on its way to one, left or died. It may have run, so
    it is not sent again (requests run at most once); raised at once, not after
    the timeout.

    Example::

        try:
            await node.request("ledger", b"credit 10")
        except iris_trio.RequestLostError:
            ...  # it may have run: check before sending it again
    """


class RequestTimeoutError(IrisError, trio.TooSlowError, TimeoutError):
    """No answer came within the request's timeout (or a tunnel was not taken in
    time). A :class:`trio.TooSlowError` and a builtin :class:`TimeoutError`, so
    that trio code and asyncio code (the relay client) each catch it their way.
    A deadline of the caller's own cancel scope cancels instead (trio's
    ``Cancelled``, caught by that scope); only ``timeout=`` raises this.

    Example::

        try:
            reply = await node.request("slow", b"", timeout=0.5)
        except iris_trio.RequestTimeoutError:
            reply = None  # the member may still run it
    """


class InternalError(IrisError):
    """A node's own task failed unexpectedly (a bug in iris_trio, not a network
    failure); the original exception is its ``__cause__``. The node is stopped.

    It leaves ``join()`` (or ``serve_node()``) and so ends the body.

    Example::

        try:
            async with iris_trio.join("calc") as node:
                await node.serve(handler)
        except iris_trio.InternalError as exc:
            log.critical("iris_trio failed", exc_info=exc.__cause__)
            raise
    """
