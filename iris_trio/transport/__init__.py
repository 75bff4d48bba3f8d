"""Transport: secure links over trio streams (TCP in production, memory in tests)."""

from .base import Transport as Transport
from .config import LinkConfig as LinkConfig
from .handshake import HandshakeResult as HandshakeResult
from .handshake import perform_handshake as perform_handshake
from .link import Link as Link
from .link import LinkStatistics as LinkStatistics
from .link import open_link as open_link
from .listener import LinkListener as LinkListener
from .listener import ListenerStatistics as ListenerStatistics
from .listener import serve_tcp_links as serve_tcp_links
from .memory import MemoryNetwork as MemoryNetwork
from .secure_stream import SecureStream as SecureStream
from .tcp import TcpTransport as TcpTransport
from .tcp import connect_tcp_link as connect_tcp_link
