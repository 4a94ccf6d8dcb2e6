"""The PROXY protocol in front of an application's protocol: clients behind a balancer.

Theory of operation. A layer-4 balancer (HAProxy in ``mode tcp``) hides the
client: the server's socket is connected to the balancer. With ``send-proxy``
(v1) or ``send-proxy-v2`` the balancer writes a PROXY header first, naming
the client (HAProxy's doc/proxy-protocol.txt); ``proxied(factory, policy)``
makes each connection read it before anything else (DESIGN.md: "The PROXY
protocol is a codec, in front of the app's own codec"). The engine knows
nothing of it: a ``ProxiedProtocol`` stands in for the application's protocol
until the header is whole, and then

- sets ``transport.proxied_peer`` to the client's address, so that
  ``transport.peer``, ``get_extra_info("peername")``, ``statistics()`` (and
  with it the admin table, whose ``via_addr``/``via_port`` keep the
  balancer's) and every log line that names the peer name the client;
- hands the connection to the application's protocol
  (``transport.set_protocol``): it gets ``connection_made`` then, and the
  bytes that came after the header as its first ``data_received``, and from
  then on its callbacks directly, with nothing in between on the data path.

A LOCAL header (the balancer's own health check), a v1 ``UNKNOWN`` or an
UNSPEC family keeps the real endpoints, as the spec says. A LOCAL connection
is handed over only with its first byte after the header: HAProxy's
``check-send-proxy`` health checks connect, send LOCAL and close, and an
application that greets (chat's welcome and its "joined"/"left" to the
room) would otherwise greet the balancer every couple of seconds. One that
closes first is an ordinary ``eof`` the application never sees.

Refusals. The spec (section 5) asks a receiver to take the header only from
known sources and never to guess whether one is there. So each connection is
closed, counted under its reason, and logged once per reason per server
(then only counted, so that a scanner cannot flood the log) when:

    =================  ================================================
    close reason       why
    =================  ================================================
    proxy-untrusted    the socket's peer is not in ``trusted`` (checked
                       at the accept, before a byte is read)
    proxy-error        the first bytes are not a PROXY header (a client
                       that talks first: ``bad-signature``), or a
                       malformed one (the codec's reason is logged), or
                       the peer closed inside the header (``truncated``)
    proxy-timeout      no whole header within ``header_timeout`` (3 s:
                       the spec's "at least 3 seconds to cover a TCP
                       retransmit")
    =================  ================================================

A peer that connects and closes without sending a byte (a balancer's plain
TCP check) is an ordinary ``eof``. The application's protocol never sees a
refused connection: it gets no ``connection_made``, so no ``connection_lost``.

Cost. Until the header is whole a connection holds a ``ProxyParser`` and one
timer, and declares the header bytes it holds to the server's memory budget;
afterwards the transport holds the client's address (one tuple), and nothing
else remains.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any

from ._address import format_peer
from ._log import EVENTS, event
from ._protocol import Protocol
from .codecs._proxy import MAX_PROXY_HEADER_BYTES, ProxyHeader, ProxyParser
from .errors import RemoteProtocolError, SetupError

if TYPE_CHECKING:
    from ._timers import Timer
    from ._transport import Transport

logger = logging.getLogger("fivetuple")

#: Seconds a connection has to deliver its whole PROXY header (the spec: at least 3).
HEADER_TIMEOUT_S = 3.0
#: Who may send a header unless told otherwise: this machine only.
DEFAULT_TRUSTED = ("127.0.0.0/8", "::1/128")
#: Distinct refusal reasons logged per server (then only counted).
_LOGGED_REASONS_MAX = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """The networks ``cidrs`` names (``10.0.0.0/8``, ``::1``; a bare address is one host).

    Raises:
        SetupError: one is not an address or network (a network with host
            bits set, ``10.0.0.1/8``, is refused: it is usually a typo).
    """
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip()))
        except ValueError as exc:
            raise SetupError(
                f"{{trusted}} {cidr!r} is not an address or network ({exc}); "
                "give one such as 10.0.0.0/8, 192.0.2.7 or ::1",
                params=("trusted",),
            ) from None
    return tuple(networks)


class ProxyPolicy:
    """Who may send a PROXY header, how long it may take, and how big it may be.

    One per server: it also remembers which refusals it has logged.

    Args:
        trusted: networks (CIDR) whose connections must begin with a header;
            any other peer is refused. A Unix socket's peer, on this machine,
            is always trusted.
        header_timeout: seconds from the accept to the header's last byte.
        max_header_bytes: the largest version 2 header accepted.

    Raises:
        SetupError: a network that does not parse, or a timeout not above 0.
    """

    __slots__ = ("_logged", "header_timeout", "max_header_bytes", "trusted")

    def __init__(
        self,
        trusted: Iterable[str] = DEFAULT_TRUSTED,
        *,
        header_timeout: float = HEADER_TIMEOUT_S,
        max_header_bytes: int = MAX_PROXY_HEADER_BYTES,
    ) -> None:
        if not header_timeout > 0:
            raise SetupError(
                f"{{header_timeout}} must be more than 0 seconds, not {header_timeout}",
                params=("header_timeout",),
            )
        self.trusted = parse_trusted(trusted)
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self._logged: set[str] = set()

    def trusts(self, peer: Any) -> bool:
        """Whether ``peer`` (a socket's peer address) may send a PROXY header."""
        if not isinstance(peer, tuple):
            return isinstance(peer, (str, bytes))  # a Unix socket: this machine
        try:
            address = ipaddress.ip_address(peer[0])
        except ValueError:  # an IPv6 scope ("fe80::1%eth0"): not in any network given
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener's IPv4 client
        return any(address in network for network in self.trusted)

    def first_time(self, key: str) -> bool:
        """True the first time ``key`` is asked about (at most a bounded number of keys)."""
        if key in self._logged or len(self._logged) >= _LOGGED_REASONS_MAX:
            return False
        self._logged.add(key)
        return True


def proxied(
    factory: Callable[[], Protocol], policy: ProxyPolicy | None = None
) -> Callable[[], Protocol]:
    """Wrap a protocol factory: every connection must begin with a PROXY header.

    Args:
        factory: makes the application's protocol, one per connection.
        policy: trusted networks and limits (default: loopback only, 3 s).

    Returns:
        A factory for ``Server``: each protocol reads the header, then hands
        the connection to one ``factory`` made.
    """
    policy = policy if policy is not None else ProxyPolicy()

    def make() -> Protocol:
        return ProxiedProtocol(factory(), policy)

    return make


class ProxiedProtocol(Protocol):
    """Reads a connection's PROXY header, then gives the connection to ``app``.

    Args:
        app: the application's protocol for this connection.
        policy: the server's ``ProxyPolicy``.
    """

    __slots__ = ("_app", "_local", "_parser", "_policy", "_timer", "_transport")

    def __init__(self, app: Protocol, policy: ProxyPolicy) -> None:
        self._app = app
        self._policy = policy
        self._parser: ProxyParser | None = None  # set while the header is awaited
        self._timer: Timer | None = None
        self._local: ProxyHeader | None = None  # a LOCAL header, until its first byte

    def connection_made(self, transport: Transport) -> None:
        self._transport = transport
        peer = transport.peer
        if peer is None:  # reset before it was accepted: there is nobody to judge
            transport.abort("reset")
            return
        if not self._policy.trusts(peer):
            self._refuse(
                "proxy-untrusted", "untrusted", f"{format_peer(peer)} is not a trusted balancer"
            )
            return
        self._parser = ProxyParser(self._policy.max_header_bytes)
        self._timer = transport.loop.call_later(self._policy.header_timeout, self._expired)

    def data_received(self, data: bytes) -> None:
        if self._local is not None:  # the balancer's own connection has something to say
            self._hand_over(self._local, data)
            return
        parser = self._parser
        if parser is None:  # refused: the transport is closing
            return
        parser.receive_data(data)
        try:
            header = parser.next_event()
        except RemoteProtocolError as exc:
            self._refuse("proxy-error", exc.reason, f"malformed PROXY header ({exc.reason}): {exc}")
            return
        if isinstance(header, ProxyHeader):
            rest = parser.trailing_data
            if header.command == "local" and not rest:
                self._stop()
                self._transport.set_input_buffer_size(0)
                self._local = header  # a health check, unless a byte follows
                return
            self._hand_over(header, rest)
        else:
            self._transport.set_input_buffer_size(parser.held_bytes)

    def eof_received(self) -> bool | None:
        parser = self._parser
        if parser is not None and parser.held_bytes:
            self._refuse(
                "proxy-error",
                "truncated",
                f"the peer closed after {parser.held_bytes} bytes of a PROXY header",
            )
        return None  # nothing sent at all (a connect-only health check): a plain eof

    def connection_lost(self, exc: BaseException | None) -> None:
        # The application's protocol never saw connection_made: it hears nothing.
        self._stop()

    def _stop(self) -> None:
        self._parser = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        parser = self._parser
        if parser is not None and not self._transport.is_closing():
            self._refuse(
                "proxy-timeout",
                "timeout",
                f"no whole PROXY header in {self._policy.header_timeout:g}s "
                f"({parser.held_bytes} bytes of one came)",
            )

    def _refuse(self, reason: str, why: str, message: str) -> None:
        """Close the connection as ``reason``; log it if ``reason``/``why`` is new here."""
        self._stop()
        transport = self._transport
        if self._policy.first_time(f"{reason}:{why}"):
            remote = format_peer(transport.peer)
            event(
                logger, WARNING, reason,
                f"closing connection {transport.id} from {remote}: {message}; later "
                "refusals for the same reason are only counted",
                conn=transport.id, remote=remote, why=why,
            )  # fmt: skip
        transport.abort(reason)

    def _hand_over(self, header: ProxyHeader, rest: bytes) -> None:
        """The header is whole: the client's address in, the application's protocol on."""
        self._stop()
        self._local = None
        transport = self._transport
        transport.set_input_buffer_size(0)
        balancer = transport.peer
        if header.source is not None:  # LOCAL, UNKNOWN, UNSPEC: the real endpoints stay
            transport.proxied_peer = header.source
        if EVENTS.isEnabledFor(INFO):
            remote, via = format_peer(transport.peer), format_peer(balancer)
            event(
                EVENTS, INFO, "proxy", f"{remote} via {via}",
                conn=transport.id, remote=remote, via=via, version=header.version,
                command=header.command,
            )  # fmt: skip
        app = self._app
        transport.set_protocol(app)
        app.connection_made(transport)
        if rest and not transport.is_closing():
            app.data_received(rest)
