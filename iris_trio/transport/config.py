"""Link configuration: every limit and deadline of a secure link in one frozen record."""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from ..wire.frames import DEFAULT_MAX_FRAME_SIZE

__all__ = ["LinkConfig"]


@dataclasses.dataclass(frozen=True, slots=True)
class LinkConfig:
    """Limits and deadlines of secure links (all times in seconds).

    Attributes:
        handshake_timeout: the whole handshake must finish within this time.
        max_frame_size: largest frame sent or accepted (encoded bytes).
        send_queue_frames: frames a link queues before senders wait.
        send_queue_bytes: bytes a link queues before senders wait (one frame of
            any allowed size is always admitted into an empty queue).
        receive_queue_frames: frames buffered for :meth:`Link.receive` before
            the link stops reading from the socket (pull mode only).
        coalesce_bytes: most bytes the writer joins into one ``send_all``; the
            secure stream cuts them into records of at most 64 KiB.
        write_timeout: a ``send_all`` that makes no progress for this long
            breaks the link.
        keepalive_interval: an idle link sends a keepalive this often.
        idle_timeout: a link that receives nothing for this long is broken
            (the peer is dead or the path is cut).
        close_timeout: how long a graceful close may spend flushing.
        rekey_interval: records per direction between two Noise rekeys.
    """

    handshake_timeout: float = 3.0
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    send_queue_frames: int = 8192
    send_queue_bytes: int = 16 * 1024 * 1024
    receive_queue_frames: int = 1024
    coalesce_bytes: int = 256 * 1024
    write_timeout: float = 10.0
    keepalive_interval: float = 1.0
    idle_timeout: float = 5.0
    close_timeout: float = 2.0
    rekey_interval: int = 1 << 20

    def __post_init__(self) -> None:
        positive = (
            "handshake_timeout",
            "write_timeout",
            "keepalive_interval",
            "idle_timeout",
            "close_timeout",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        counts = (
            "send_queue_frames",
            "send_queue_bytes",
            "receive_queue_frames",
            "coalesce_bytes",
            "rekey_interval",
        )
        for name in counts:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.max_frame_size < 1024:
            raise ConfigError("max_frame_size must be at least 1024 bytes")
        if self.idle_timeout <= self.keepalive_interval:
            raise ConfigError("idle_timeout must exceed keepalive_interval")
