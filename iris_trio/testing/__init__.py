"""Public testing helpers: in-process links, in-memory networks and clusters.

``open_cluster(n)`` runs n nodes as one overlay over a :class:`MemoryNetwork`,
under a real clock or trio's ``MockClock`` (``autojump_clock``), so services
built on iris_trio can be tested in one trio run, without sockets.
"""

from ..transport.memory import MemoryNetwork as MemoryNetwork
from ._links import memory_link_pair as memory_link_pair
from .cluster import Cluster as Cluster
from .cluster import open_cluster as open_cluster
