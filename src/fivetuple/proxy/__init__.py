"""A TCP and UDP fault-injection proxy: toxiproxy's toxics, netsim's impairments.

``fivetuple proxy LISTEN UPSTREAM`` forwards every client to one upstream
server and does harm on the way: for TCP, toxics in toxiproxy's vocabulary
(latency, bandwidth, slicer, timeout, reset_peer, limit_data, slow_close,
per direction, with a probability); for UDP, netsim's link model (loss,
bursts, duplication, reordering, corruption, delay, rate) per client and
direction. An HTTP API shaped like toxiproxy's changes them while it runs,
and every client has a record of what was done to it. See docs/proxy.md.

The implementation is in the underscored modules: ``_toxics`` (the table of
toxic types and their checks), ``_stages`` (what each TCP toxic does),
``_tcp`` and ``_udp`` (the proxies), ``_api`` (the HTTP API), ``_command``
(the command line's work).
"""

from __future__ import annotations

from ._api import ProxyApi, start_api
from ._base import ProxyBase
from ._command import build_proxy, run_proxy
from ._tcp import TcpProxy
from ._toxics import (
    TCP_TYPES,
    UDP_TYPES,
    Toxic,
    ToxicError,
    make_toxic,
    parse_toxic_spec,
)
from ._udp import UdpProxy

__all__ = [
    "TCP_TYPES",
    "UDP_TYPES",
    "ProxyApi",
    "ProxyBase",
    "TcpProxy",
    "Toxic",
    "ToxicError",
    "UdpProxy",
    "build_proxy",
    "make_toxic",
    "parse_toxic_spec",
    "run_proxy",
    "start_api",
]
