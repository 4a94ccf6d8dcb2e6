"""``fivetuple link``: two network namespaces joined by netsim's link model on real IP packets.

Side a (10.77.0.1) and side b (10.77.0.2) are network namespaces, each with a
TUN device; a userspace forwarder reads every IP packet from one TUN, passes
it through ``fivetuple.netsim``'s link model (``LiveLink``, one per
direction) and writes what arrives into the other. See docs/link.md.
"""

from ._control import SIDES
from ._forward import READ_BATCH, Direction, DirectionStats, Forwarder
from ._run import (
    A_ADDRESS,
    B_ADDRESS,
    DEFAULT_NAME,
    TUN_MTU,
    TUN_NAME,
    ready_line,
    run_in,
    run_link,
)

__all__ = [
    "A_ADDRESS",
    "B_ADDRESS",
    "DEFAULT_NAME",
    "READ_BATCH",
    "SIDES",
    "TUN_MTU",
    "TUN_NAME",
    "Direction",
    "DirectionStats",
    "Forwarder",
    "ready_line",
    "run_in",
    "run_link",
]
