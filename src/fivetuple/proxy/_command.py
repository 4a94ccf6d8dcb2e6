"""``fivetuple proxy LISTEN UPSTREAM``: the command's work, behind ``cli.py``'s options.

Theory of operation. ``run_proxy`` checks what was asked (both addresses of
one protocol, options that apply to it, toxics that can be), builds one
``TcpProxy`` or ``UdpProxy`` and, with ``--admin``, the API on the same
loop, prints the ready line and runs until SIGINT or SIGTERM (a TCP proxy's
first signal lets queued bytes flush for ``SHUTDOWN_GRACE_S``, a second
exits at once). At exit it logs one summary line: what was done to whom.
Every mistake is a ``SetupError`` with one line naming it, which the command
line prints before exiting 2.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._address import SCHEMES, is_udp, parse_target
from .._log import event
from .._loop import Loop
from .._server import Server
from ..errors import SetupError
from ..netsim import LinkConfig
from ._api import start_api
from ._base import ProxyBase
from ._tcp import TcpProxy
from ._toxics import (
    NETSIM,
    STREAMS,
    Toxic,
    ToxicError,
    check_name,
    netsim_attributes,
    parse_toxic_spec,
)
from ._udp import UdpProxy

logger = logging.getLogger("fivetuple")

#: Options of the command that only a UDP proxy takes (its NAT table).
UDP_TABLE_OPTIONS = ("max_clients", "client_idle")
#: Options that are no impairment (every other ``_impairment_options`` one is).
NOT_IMPAIRMENTS = ("seed", *UDP_TABLE_OPTIONS)
#: Bytes of IP and UDP headers a datagram costs on the wire (for netsim's rate).
UDP_OVERHEAD = {4: 28, 6: 48}


def _endpoint(target: str, what: str) -> tuple[str, int]:
    """(host, port) of ``tcp://HOST:PORT`` or ``udp://HOST:PORT``."""
    scheme = target.partition("://")[0]
    if scheme not in ("tcp", "udp"):
        kinds = ", ".join(f"{s}://" for s in SCHEMES if s not in ("tcp", "udp"))
        raise SetupError(
            f"{what} {target!r}: a proxy forwards tcp:// or udp:// (not {kinds} or tls://: "
            "TLS passes through a tcp:// proxy untouched); e.g. tcp://127.0.0.1:7000"
        )
    _, (host, port) = parse_target(target)
    return host, port


def build_proxy(
    listen: str,
    upstream: str,
    *,
    name: str = "proxy",
    toxics: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    given: Mapping[str, str] | None = None,
    link_config: Callable[[dict[str, Any], int], LinkConfig] | None = None,
    loop: Loop,
) -> ProxyBase:
    """The proxy the command line describes, not started yet.

    Args:
        listen: ``tcp://HOST:PORT`` or ``udp://HOST:PORT`` to listen on.
        upstream: where to forward to, of the same protocol.
        name: the proxy's name in the API.
        toxics: toxics in their command-line form (``parse_toxic_spec``).
        options: the command's other options by name (impairments, seed, the
            UDP table's size and idle timeout).
        given: the options given on the command line: name -> flag.
        link_config: makes a ``netsim.LinkConfig`` of the impairment options
            and a per-datagram overhead in bytes (``cli._link_config_of``).
        loop: the loop it is to run on.

    Raises:
        SetupError: anything impossible, in one line.
    """
    options = dict(options or {})
    given = dict(given or {})
    try:
        check_name(name)
    except ToxicError as exc:
        raise SetupError(f"--name {exc}") from None
    udp = is_udp(listen)
    if udp != is_udp(upstream):
        raise SetupError(
            f"LISTEN {listen} and UPSTREAM {upstream} must both be tcp:// or both udp://"
        )
    host, port = _endpoint(listen, "LISTEN")
    upstream_host, upstream_port = _endpoint(upstream, "UPSTREAM")
    if upstream_port == 0:
        raise SetupError(f"UPSTREAM {upstream}: port 0 is nowhere; give the server's port")
    impairments = [flag for option, flag in given.items() if option not in NOT_IMPAIRMENTS]
    table = [flag for option, flag in given.items() if option in UDP_TABLE_OPTIONS]
    seed = options.get("seed")
    proxy: ProxyBase
    if not udp:
        if impairments or table:
            raise SetupError(
                f"{', '.join(impairments + table)}: udp:// only (netsim's packet impairments); "
                "a TCP proxy takes toxics, e.g. --toxic latency:latency=100 or "
                "--toxic bandwidth:rate=100 (docs/proxy.md)"
            )
        proxy = TcpProxy(name, host, port, (upstream_host, upstream_port), loop=loop, seed=seed)
    else:
        proxy = UdpProxy(
            name, host, port, (upstream_host, upstream_port), loop=loop, seed=seed,
            max_clients=options.get("max_clients", 1024),
            idle_timeout=options.get("client_idle", 60.0),
        )  # fmt: skip
    try:
        for spec in toxics:
            proxy.add(parse_toxic_spec(spec, proxy.toxics.types))
        if impairments and link_config is not None:
            overhead = UDP_OVERHEAD[6 if ":" in upstream_host else 4]
            config = link_config(options, overhead)
            for stream in STREAMS:
                attributes = netsim_attributes(config)
                proxy.add(Toxic(f"{NETSIM}_{stream}", NETSIM, stream, 1.0, attributes))
    except ToxicError as exc:
        raise SetupError(str(exc)) from None
    return proxy


def run_proxy(
    listen: str,
    upstream: str,
    *,
    name: str = "proxy",
    toxics: Sequence[str] = (),
    admin: tuple[str, int] | None = None,
    options: Mapping[str, Any] | None = None,
    given: Mapping[str, str] | None = None,
    link_config: Callable[[dict[str, Any], int], LinkConfig] | None = None,
) -> int:
    """Run ``fivetuple proxy`` until SIGINT or SIGTERM; returns the exit status.

    Prints ``proxy NAME listening on LISTEN -> UPSTREAM`` once ready (and
    ``admin on http://HOST:PORT`` with ``admin``), and logs a summary at exit.
    Arguments are ``build_proxy``'s; ``admin`` is where the API listens.

    Raises:
        SetupError: anything impossible (a bad address or toxic, an address in use).
    """
    loop = Loop()
    api: Server | None = None
    proxy: ProxyBase | None = None
    try:
        proxy = build_proxy(
            listen, upstream, name=name, toxics=toxics, options=options, given=given,
            link_config=link_config, loop=loop,
        )  # fmt: skip
        try:
            proxy.start()
        except SetupError as exc:
            raise SetupError(exc.naming({"port": "LISTEN port"})) from None
        if admin is not None:
            try:
                api = start_api({name: proxy}, loop, *admin)
            except SetupError as exc:
                raise SetupError(exc.naming({"port": "--admin port"})) from None
        return _serve(proxy, api)
    finally:
        if proxy is not None:
            proxy.close()
        if api is not None:
            api.shutdown()
        loop.close()


def _serve(proxy: ProxyBase, api: Server | None) -> int:
    line = f"proxy {proxy.name} listening on {proxy.listen_address} -> {proxy.upstream_address}"

    def ready() -> None:
        print(line, flush=True)
        if api is not None:
            print(f"admin on {api.addresses[0].replace('tcp://', 'http://', 1)}", flush=True)
        event(logger, logging.INFO, "start", line, pid=os.getpid())

    status = proxy.serve_forever(ready)
    event(logger, logging.INFO, "summary", proxy.summary(), proxy=proxy.name)
    event(logger, logging.INFO, "stop", f"stopped, exit status {status}", status=status)
    return status
