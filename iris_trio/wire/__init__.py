"""Wire format: CBOR frames and length framing. Pure: no I/O, no trio."""

from .frames import (
    DEFAULT_MAX_FRAME_SIZE as DEFAULT_MAX_FRAME_SIZE,
)
from .frames import (
    WIRE_VERSION as WIRE_VERSION,
)
from .frames import (
    Frame as Frame,
)
from .frames import (
    FrameCodec as FrameCodec,
)
from .frames import (
    Hello as Hello,
)
from .frames import (
    Keepalive as Keepalive,
)
from .frames import (
    Payload as Payload,
)
from .frames import (
    frame_kind as frame_kind,
)
from .framing import MAX_RECORD_SIZE as MAX_RECORD_SIZE
from .framing import LengthPrefixedReader as LengthPrefixedReader
