"""A node's monitor: read-only HTTP pages for operators.

``/healthz`` (joined or not), ``/status`` (JSON), ``/metrics`` (Prometheus) and
``/`` (a live dashboard that needs no internet), served by :func:`serve_monitor`
on h11 over trio: in the node's own nursery when the node is started with
``monitor=`` (``serve_node``, ``join``, ``iris-trio node --monitor``), or beside
it. See docs/operations.md.
"""

from .fetch import MonitorUnavailableError as MonitorUnavailableError
from .fetch import Page as Page
from .fetch import fetch as fetch
from .fetch import monitor_url as monitor_url
from .http import HttpLimits as HttpLimits
from .rates import RateMeter as RateMeter
from .server import DEFAULT_MONITOR_ADDRESS as DEFAULT_MONITOR_ADDRESS
from .server import DEFAULT_MONITOR_PORT as DEFAULT_MONITOR_PORT
from .server import Monitor as Monitor
from .server import MonitorAddressError as MonitorAddressError
from .server import bind_monitor as bind_monitor
from .server import monitor_of as monitor_of
from .server import serve_monitor as serve_monitor
