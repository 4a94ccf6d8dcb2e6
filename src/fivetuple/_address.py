"""Addresses: parsing targets, resolving names, and writing addresses for people.

Theory of operation. Every address a person types or reads passes through
here, so that the command line, the logs, the admin table and the load
generator spell them alike:

- a *target* is what a person types to reach something: ``tcp://HOST:PORT``,
  ``udp://HOST:PORT``, ``rudp://HOST:PORT`` (reliable UDP; an IPv6 host in
  brackets) or ``unix://PATH``;
- ``resolve_address`` turns a host and port into the (family, sockaddr) the
  socket calls take, through getaddrinfo, with one clear line on failure;
- ``format_address`` writes a local address with its scheme
  (``tcp://[::1]:7000``), ``format_peer`` a remote one without
  (``127.0.0.1:52114``, ``unix:(unnamed)``).

Nothing here opens a socket that stays open; binding is ``_bind.py``.
"""

from __future__ import annotations

import socket
from typing import Any

from .errors import SetupError

#: The schemes a target may have.
SCHEMES = ("tcp", "udp", "rudp", "unix")
_AF_UNIX = getattr(socket, "AF_UNIX", None)


def parse_target(target: str) -> tuple[int, Any]:
    """``tcp://HOST:PORT``, ``tls://HOST:PORT``, ``udp://HOST:PORT``,
    ``rudp://HOST:PORT`` (IPv6 in brackets) or ``unix://PATH`` -> (family,
    address). Whether it is UDP is ``is_udp(target)``, TLS (over TCP)
    ``is_tls(target)``, reliable UDP ``is_rudp(target)``.

    The family is ``AF_INET6`` for a bracketed host, ``AF_UNIX`` for a path and
    ``AF_UNSPEC`` for any other host (a name or an IPv4 address: resolving
    decides).

    Raises:
        SetupError: the target is not of that form.
    """
    if target.startswith("unix://") and len(target) > 7:
        return socket.AF_UNIX, target[7:]
    if target.startswith(("tcp://", "udp://", "tls://", "rudp://")):
        rest = target.partition("://")[2]
        host, sep, port = rest.rpartition(":")
        if sep and port.isdigit() and host and int(port) <= 65535:
            if host.startswith("[") and host.endswith("]"):
                return socket.AF_INET6, (host[1:-1], int(port))
            return socket.AF_UNSPEC, (host, int(port))
    raise SetupError(
        f"target {target!r} is not tcp://HOST:PORT, tls://HOST:PORT, udp://HOST:PORT, "
        "rudp://HOST:PORT or unix://PATH; "
        "e.g. tcp://127.0.0.1:7000"
    )


def is_udp(target: str) -> bool:
    """Whether ``target`` names a UDP port (``udp://HOST:PORT``)."""
    return target.startswith("udp://")


def is_rudp(target: str) -> bool:
    """Whether ``target`` names a reliable-UDP server (``rudp://HOST:PORT``, fivetuple.reliable)."""
    return target.startswith("rudp://")


def is_tls(target: str) -> bool:
    """Whether ``target`` names a TLS server (``tls://HOST:PORT``, TLS over TCP)."""
    return target.startswith("tls://")


def resolve_address(
    host: str, port: int, socktype: int, *, passive: bool = True
) -> tuple[int, Any]:
    """(family, sockaddr) for ``host``:``port``, TCP or UDP: to bind, or (``passive=False``) to reach.

    The first address getaddrinfo gives is taken; ``passive_addresses`` gives all.

    Raises:
        SetupError: unknown host, or a port out of range.
    """
    try:
        if passive:
            infos = socket.getaddrinfo(host or None, port, type=socktype, flags=socket.AI_PASSIVE)
        else:
            infos = socket.getaddrinfo(host, port, type=socktype)
    except socket.gaierror as exc:
        raise SetupError(
            f"cannot resolve host {host!r} ({exc.strerror}); "
            "use an IP address such as 127.0.0.1 or ::1, or a name this machine knows"
        ) from None
    except OverflowError:
        raise SetupError(
            f"{{port}} {port} is out of range; use 0-65535", params=("port",)
        ) from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def passive_addresses(host: str, port: int) -> list[tuple[int, Any]]:
    """Every distinct (family, sockaddr) ``host`` names for listening (IPv4, IPv6).

    Raises:
        SetupError: unknown host, or a port out of range.
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, OverflowError):
        return [resolve_address(host, port, socket.SOCK_STREAM)]  # raises the one-line error
    seen: dict[tuple[int, Any], None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen[family, sockaddr] = None
    return list(seen)


def format_address(family: int, sockaddr: Any, scheme: str = "tcp") -> str:
    """tcp://host:port (or ``scheme``://) with IPv6 hosts in brackets, or unix://path."""
    if family == _AF_UNIX:
        return f"unix://{sockaddr}"
    host, port = sockaddr[0], sockaddr[1]
    return (
        f"{scheme}://[{host}]:{port}" if family == socket.AF_INET6 else f"{scheme}://{host}:{port}"
    )


def format_peer(peer: Any) -> str:
    """A remote address as people read it: address:port, [v6]:port, or unix:path."""
    if isinstance(peer, tuple):
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    if peer is None:
        return "(peer gone)"
    if isinstance(peer, bytes):
        peer = peer.decode(errors="replace")
    return f"unix:{peer}" if peer else "unix:(unnamed)"


def split_address(addr: Any) -> tuple[str, int | None]:
    """(host, port) of an IP sockaddr, or (path, None) of a Unix one."""
    if isinstance(addr, tuple):
        return str(addr[0]), int(addr[1])
    if isinstance(addr, bytes):
        return addr.decode(errors="replace") or "(unnamed)", None
    return (addr or "(unnamed)") if isinstance(addr, str) else "?", None
