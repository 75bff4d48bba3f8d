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
    """Root of every exception raised by iris_trio itself."""


class ProtocolError(IrisError):
    """A peer sent bytes that violate the wire protocol.

    Raised by the pure decoders; the transport turns it into closing that one
    link. It never means the local node is broken.
    """


class HandshakeError(IrisError):
    """The secure handshake with a peer failed or timed out.

    Typical causes: a different network key, network name or protocol version
    on the other side, a peer that is not an iris_trio node, or a peer that
    stalled past the handshake deadline. No application data is ever accepted
    from a peer whose handshake failed.
    """


class MessageTooLargeError(IrisError, ValueError):
    """A message or frame exceeds its configured size limit (local misuse)."""


class KeyFormatError(IrisError, ValueError):
    """A key file or key value could not be parsed."""


class ConfigError(IrisError, ValueError):
    """A configuration value is out of range or inconsistent."""


class NoRespondersError(IrisError):
    """The cluster has no member: raised at once, not after the timeout."""


class RemoteError(IrisError):
    """The member's handler failed.

    Attributes:
        message: the handler's error text.
        type_name: the name of the exception type the handler raised (``""`` when
            the member did not say, e.g. a relay client or ``Request.fail()``).

    ``str()`` of it reads like Python's own ``"ValueError: bad input"``.
    """

    def __init__(self, message: str, type_name: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if type_name else message)
        self.message = message
        self.type_name = type_name


class RequestLostError(IrisError):
    """A request (or tunnel opening) was lost with a node that held it: the member
    handling it, or a node on its way to one, left or died. It may have run, so
    it is not sent again (requests run at most once); raised at once, not after
    the timeout."""


class RequestTimeoutError(IrisError, trio.TooSlowError, TimeoutError):
    """No answer came within the request's timeout (or a tunnel was not taken in
    time). A :class:`trio.TooSlowError` and a builtin :class:`TimeoutError`, so
    that trio code and asyncio code (the relay client) each catch it their way."""


class InternalError(IrisError):
    """A node's own task failed unexpectedly (a bug in iris_trio, not a network
    failure); the original exception is its ``__cause__``. The node is stopped."""
