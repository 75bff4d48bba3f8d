"""Public testing helpers: in-process links and networks over memory streams."""

from ._links import memory_link_pair as memory_link_pair
