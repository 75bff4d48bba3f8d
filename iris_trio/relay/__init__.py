"""The Iris relay protocol (v1.0-draft2): how Iris client libraries talk to a node.

:func:`serve_relay` serves it for a node on loopback (the ``iris-trio node``
daemon runs it); :mod:`iris_trio.relay.client` is the anyio client. The wire
format is the sans-IO :mod:`iris_trio.relay.codec`.
"""

from .limits import RelayLimits as RelayLimits
from .server import DEFAULT_PORT as DEFAULT_PORT
from .server import Relay as Relay
from .server import RelayStatistics as RelayStatistics
from .server import serve_relay as serve_relay
