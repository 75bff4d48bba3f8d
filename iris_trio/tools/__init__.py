"""The shell tools of ``iris-trio``: the patterns through a node's relay port
(``request``, ``reply``, ``publish``, ``subscribe``, ``broadcast``) and a node's
figures from its monitor (``status``, ``top``). See docs/operations.md."""

from .messaging import main_broadcast as main_broadcast
from .messaging import main_publish as main_publish
from .messaging import main_reply as main_reply
from .messaging import main_request as main_request
from .messaging import main_subscribe as main_subscribe
from .watch import main_status as main_status
from .watch import main_top as main_top
