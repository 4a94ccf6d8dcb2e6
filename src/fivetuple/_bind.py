"""Binding: the socket, SO_REUSEADDR, bind and listen ritual, and its errors.

Theory of operation. ``bind_tcp`` and ``bind_unix`` perform the ritual the
socket texts describe: socket, SO_REUSEADDR, bind, listen(backlog),
non-blocking; ``bind_udp`` stops after bind (UDP has no listen). The kernel
then completes TCP handshakes by itself and queues finished connections (up
to the backlog) until they are accepted (``_listener.py``).

Every failure becomes one ``SetupError`` line that names the address, what
went wrong and what to do (``bind_error``); the parameters it names
(``{port}``, ``{unix}``) are the library's, which a command line renames to
its flags (``SetupError.naming``).
"""

from __future__ import annotations

import errno
import os
import socket
import stat

from ._address import format_address, passive_addresses, resolve_address
from .errors import SetupError

#: Binding every address of a name on one port chosen by the kernel: attempts
#: before giving up when the port it chose for the first is taken for another.
_SAME_PORT_ATTEMPTS = 8
# Linux values; the socket module does not name them. With them set, ICMP
# errors about unconnected peers are reported (and queued, naming the peer)
# instead of silently dropped.
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)


def bind_tcp(
    host: str,
    port: int,
    backlog: int,
    *,
    dual_stack: bool | None = None,
    reuseport: bool = False,
) -> socket.socket:
    """Create a listening TCP socket on ``host``:``port`` (the first address it names).

    ``host`` ``"::"`` listens dual-stack (IPv6 and IPv4-mapped) unless
    ``dual_stack`` is False; any other IPv6 address is IPv6 only. Port 0 lets
    the kernel pick a free port. ``reuseport`` sets SO_REUSEPORT: sockets of
    one user bound to one address and port each get their own accept queue,
    and the kernel spreads new connections over them by a hash of the peer's
    address and port (a supervisor's worker slots, ``_supervisor.py``).

    Raises:
        SetupError: unknown host, address in use, permission denied, ...
    """
    family, sockaddr = resolve_address(host, port, socket.SOCK_STREAM)
    where = format_address(family, sockaddr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # A restarted server must be able to bind while the connections of its
        # previous run linger in TIME_WAIT (2 x MSL, up to a minute); without
        # SO_REUSEADDR bind() fails with "Address already in use" until then.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            both = host == "::" if dual_stack is None else dual_stack
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if both else 1)
        # Accepted sockets inherit TCP_NODELAY from the listener on Linux; the
        # server sets it again where they do not.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, where, port) from None
    return sock


def bind_tcp_all(
    host: str, port: int, backlog: int, *, reuseport: bool = False
) -> list[socket.socket]:
    """Listening TCP sockets on every address ``host`` names, all on one port.

    ``localhost`` is the loopback of both families (127.0.0.1 and ::1, RFC
    6761), whatever /etc/hosts says, so that a client that tries ``::1``
    first (curl, browsers) finds the server; ``::`` is one dual-stack socket.
    Port 0: the kernel picks a port for the first, and the others take it too.
    ``reuseport``: SO_REUSEPORT on each (``bind_tcp``).

    Raises:
        SetupError: unknown host, address in use, permission denied, ...
    """
    if host == "localhost":
        hosts = ["127.0.0.1", "::1"] if ipv6_available() else ["127.0.0.1"]
    else:
        hosts = [sockaddr[0] for _, sockaddr in passive_addresses(host, port)]
    if len(hosts) == 1:
        return [bind_tcp(host, port, backlog, reuseport=reuseport)]
    for _ in range(_SAME_PORT_ATTEMPTS):  # each family its own socket: no dual-stack
        socks = [bind_tcp(hosts[0], port, backlog, dual_stack=False, reuseport=reuseport)]
        chosen = socks[0].getsockname()[1]
        try:
            socks += [
                bind_tcp(other, chosen, backlog, dual_stack=False, reuseport=reuseport)
                for other in hosts[1:]
            ]
        except SetupError:
            for sock in socks:
                sock.close()
            if port:
                raise
            continue  # the port the kernel chose is taken for another address: again
        return socks
    raise SetupError(
        f"cannot find one free port on every address of {host}; name a {{port}}", params=("port",)
    )


def ipv6_available() -> bool:
    """True if this machine can bind the IPv6 loopback address."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def bind_unix(path: str, backlog: int, mode: int | None = None) -> socket.socket:
    """Create a listening Unix domain stream socket at ``path``.

    A stale socket file (left by a server that died) is removed; a socket that
    a live server still answers on is not. ``mode`` sets the file's permission
    bits (who may connect) before ``listen()``, so no client can connect while
    the umask's bits are in force; None leaves the umask's.

    Raises:
        SetupError: the path is in use, is not a socket, or cannot be created.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SetupError(f"cannot use {path}: {exc.strerror}") from None
    else:
        if not stat.S_ISSOCK(mode):
            raise SetupError(
                f"{path} exists and is not a socket; remove it or choose another {{unix}} path",
                params=("unix",),
            )
        if _unix_socket_answers(path):
            raise SetupError(
                f"unix socket {path} is in use by a running server; "
                "stop it or choose another {unix} path",
                params=("unix",),
            )
        os.unlink(path)  # stale: nobody is listening behind it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        sock.bind(path)
        bound = True
        if mode is not None:
            os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if bound:  # ours, and not listening: leave nothing behind
            try:
                os.unlink(path)
            except OSError:
                pass
        if exc.errno == errno.EACCES:
            raise SetupError(
                f"permission denied to create {path}; choose a writable directory"
            ) from None
        raise SetupError(f"cannot listen on unix://{path}: {exc.strerror or exc}") from None
    return sock


def _unix_socket_answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_udp(host: str, port: int, *, reuseport: bool = False) -> socket.socket:
    """A UDP socket bound to ``host``:``port`` (``::`` is dual-stack).

    ``reuseport`` sets SO_REUSEPORT: UDP sockets of one user on one address
    and port share its datagrams, each peer's going to one socket by a hash
    of its address and port.

    Raises:
        SetupError: unknown host, address in use, permission denied, ...
    """
    family, sockaddr = resolve_address(host, port, socket.SOCK_DGRAM)
    where = format_address(family, sockaddr, "udp")
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        if family == socket.AF_INET or host == "::":
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, where, port, "-lunp") from None
    return sock


def bind_error(exc: OSError, where: str, port: int, ss_flags: str = "-ltnp") -> SetupError:
    """The one line a person sees when bind() or listen() fails on ``where``.

    ``ss_flags`` names the sockets that ``ss`` should list (``-lunp`` for UDP).
    """
    if exc.errno == errno.EADDRINUSE:
        return SetupError(
            f"address {where} is already in use; stop the program using it "
            f"(ss {ss_flags} 'sport = :{port}' shows it) or choose another {{port}}",
            params=("port",),
        )
    if exc.errno == errno.EACCES:
        return SetupError(
            f"permission denied to listen on {where}; ports below 1024 need root or "
            "CAP_NET_BIND_SERVICE: choose a {port} of 1024 or above",
            params=("port",),
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return SetupError(
            f"address {where} is not an address of this machine; "
            "use 127.0.0.1, ::1 or 0.0.0.0 (ip -br addr lists the others)"
        )
    return SetupError(f"cannot listen on {where}: {exc.strerror or exc}")
