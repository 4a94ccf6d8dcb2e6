"""The TCP proxy: each client connection, one upstream connection, toxics between them.

Theory of operation. The listener is an ordinary ``Server``; each client it
accepts gets a ``_Conn``, which connects to the upstream address
(``open_connection``) and stops reading the client until that connection is
up (or closes the client, counting why, if it cannot be made: refused,
unreachable, timed out). Then bytes flow through two ``Pipe``s, one per
direction: ``upstream`` (client to server) and ``downstream`` (back).

A pipe is a chain: its source transport's bytes go to the first *stage*,
each stage hands them to the next when its toxic says so, and the last hands
them to the *sink*, which writes them to the other transport. One stage per
toxic that applies to this connection (each toxic's ``toxicity`` is drawn
once, when it meets the connection), made from the stage table ``STAGES``
keyed by toxic type. A stage that delays (latency, bandwidth, slicer,
slow_close) keeps a FIFO of (release time, chunk) with one timer at its
head; order is kept because each release time is at least the previous one.
The end of the stream (the source's EOF) travels the same chain behind the
last byte, and the sink turns it into a half-close (``write_eof``), or a
close once the other direction has ended too.

Mid-stream changes. Stages read their toxic's attributes when a chunk
arrives, so an update applies to what comes next. A toxic added later gets a
stage at the end of each open connection's chain; one removed has its stage
unlinked and whatever it held passed on at once, in order (toxiproxy's
"don't drop data on the floor"): data held downstream of it is older than
data held upstream of it, so nothing overtakes.

Flow control. Nothing grows without bound. A pipe stops reading its source
while the sink's write buffer is above its high-water mark (the sink's
protocol gets ``pause_writing``) or while its stages hold more than
``HELD_HIGH_BYTES``, and reads again once the sink has drained and they hold
at most ``HELD_LOW_BYTES``. So a latency of L seconds passes at most about
``HELD_HIGH_BYTES / L`` bytes a second per direction: a window, as TCP's own.

Endings. A peer's reset (or any socket error) is passed on as a reset to the
other side; an orderly close as an EOF after the bytes still on their way.
A toxic can end a connection too: ``timeout`` closes both sides, ``reset_peer``
resets the side its stream flows to (SO_LINGER 0 then close: the kernel sends
RST, the peer reads ECONNRESET) and closes the other, ``limit_data`` passes an
EOF after its last byte and closes both sides when it arrives.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._address import format_address, format_peer, resolve_address
from .._connector import open_connection
from .._protocol import Protocol
from .._server import Server
from .._transport import Transport
from ._base import ProxyBase
from ._stages import STAGES, Hop, Sink, Stage
from ._toxics import DOWNSTREAM, TCP_TYPES, UPSTREAM, Toxic

if TYPE_CHECKING:
    from .._loop import Loop

logger = logging.getLogger("fivetuple")

#: A direction stops reading its source while its stages hold more than this.
HELD_HIGH_BYTES = 1024 * 1024
#: ... and reads again once they hold this much or less (and the sink has drained).
HELD_LOW_BYTES = HELD_HIGH_BYTES // 4
#: Seconds a proxy's shutdown lets queued bytes flush before it aborts what is left.
SHUTDOWN_GRACE_S = 2.0
_LINGER_RESET = struct.pack("ii", 1, 0)


class Pipe:
    """One direction of one connection: source transport -> stages -> sink transport.

    ``totals`` is the proxy's [bytes in, bytes out] of this direction, kept as
    bytes move.
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "conn",
        "cut",
        "done",
        "dropped",
        "eof_in",
        "head",
        "held",
        "loop",
        "sink",
        "sink_hop",
        "sink_paused",
        "source",
        "source_paused",
        "stages",
        "stream",
        "totals",
    )

    def __init__(
        self, conn: _Conn, stream: str, source: Transport, sink: Transport, totals: list[int]
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.loop = conn.proxy.loop
        self.source = source
        self.sink = sink
        self.totals = totals
        self.sink_hop = Sink(self)
        self.head: Hop = self.sink_hop
        self.stages: list[Stage] = []
        self.bytes_in = self.bytes_out = self.held = self.dropped = 0
        self.sink_paused = self.source_paused = False
        #: The source's EOF has entered the chain.
        self.eof_in = False
        #: A toxic ended this direction (limit_data): the connection closes at its EOF.
        self.cut = False
        #: Nothing more goes this way (delivered to the end, or the sink is gone).
        self.done = False

    # -- the chain ------------------------------------------------------------

    def add_stage(self, toxic: Toxic) -> None:
        """Put a stage for ``toxic`` at the end of the chain, in front of the sink."""
        stage = STAGES[toxic.type](self, toxic)
        if self.stages:
            self.stages[-1].next = stage
        else:
            self.head = stage
        self.stages.append(stage)
        stage.start()

    def remove_stage(self, toxic: Toxic) -> None:
        """Unlink the stage of ``toxic`` (if any); what it held goes on at once."""
        index = next((i for i, each in enumerate(self.stages) if each.toxic is toxic), None)
        if index is None:
            return
        stage = self.stages[index]
        if index:
            self.stages[index - 1].next = stage.next
        else:
            self.head = stage.next
        del self.stages[index]
        if not self.done:
            stage.detach()

    def stage_of(self, toxic: Toxic) -> Stage | None:
        """This direction's stage for ``toxic``, if it drew it."""
        for stage in self.stages:
            if stage.toxic is toxic:
                return stage
        return None

    # -- bytes ----------------------------------------------------------------

    def push(self, data: bytes) -> None:
        """Bytes read from the source."""
        self.bytes_in += len(data)
        self.totals[0] += len(data)
        if self.cut or self.done:
            self.dropped += len(data)
            return
        self.head.push(data)

    def push_eof(self) -> None:
        """The source's EOF (once)."""
        if not self.eof_in and not self.done:
            self.eof_in = True
            self.head.push_eof()

    def random_uniform(self, low: float, high: float) -> float:
        """A number from the proxy's seeded random numbers (latency jitter)."""
        return self.conn.proxy.random.uniform(low, high)

    def random_int(self, low: int, high: int) -> int:
        """A whole number from the proxy's seeded random numbers (slicer sizes)."""
        return self.conn.proxy.random.randint(low, high)

    # -- flow control -----------------------------------------------------------

    def hold(self, delta: int) -> None:
        """The stages hold ``delta`` bytes more (or fewer)."""
        self.held += delta
        self._flow()

    def set_sink_paused(self, paused: bool) -> None:
        """The sink's write buffer went above its high-water mark (or drained)."""
        self.sink_paused = paused
        self._flow()

    def _flow(self) -> None:
        if self.source_paused:
            if not self.sink_paused and self.held <= HELD_LOW_BYTES:
                self.source_paused = False
                self.source.resume_reading()
        elif self.sink_paused or self.held > HELD_HIGH_BYTES:
            self.source_paused = True
            self.source.pause_reading()

    def finish(self) -> None:
        """Nothing more can go this way: drop what the stages hold, stop their timers."""
        if self.done:
            return
        self.done = True
        for stage in self.stages:
            stage.discard()
        self.held = 0

    def row(self) -> dict[str, Any]:
        """This direction's part of the connection's row."""
        return {
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "held": self.held,
            "dropped": self.dropped,
            "toxics": [stage.toxic.name for stage in self.stages],
        }


class _Side(Protocol):
    """The protocol of one of a connection's two sockets (the client's, or upstream's)."""

    __slots__ = ("conn", "is_client", "proxy")

    def __init__(self, proxy: TcpProxy, conn: _Conn | None, is_client: bool) -> None:
        self.proxy = proxy
        self.conn = conn
        self.is_client = is_client

    def connection_made(self, transport: Transport) -> None:
        if self.conn is None:
            self.conn = self.proxy.accepted(transport)
        else:
            self.conn.upstream_made(transport)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        assert conn is not None
        pipe = conn.up if self.is_client else conn.down
        if pipe is not None:
            pipe.push(data)

    def eof_received(self) -> bool:
        conn = self.conn
        assert conn is not None
        pipe = conn.up if self.is_client else conn.down
        if pipe is not None:
            pipe.push_eof()
        return True  # the other direction may go on: the sink closes when both are done

    def pause_writing(self) -> None:
        self._sink_paused(True)

    def resume_writing(self) -> None:
        self._sink_paused(False)

    def _sink_paused(self, paused: bool) -> None:
        conn = self.conn
        pipe = None if conn is None else conn.down if self.is_client else conn.up
        if pipe is not None:
            pipe.set_sink_paused(paused)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.conn is not None:
            self.conn.side_lost(self.is_client, exc)


class _Conn:
    """One proxied connection: the client's transport, upstream's, and a pipe each way."""

    __slots__ = (
        "client",
        "client_addr",
        "client_lost",
        "down",
        "end",
        "id",
        "listen_addr",
        "opened_at",
        "proxy",
        "up",
        "upstream",
        "upstream_local",
        "upstream_lost",
    )

    def __init__(self, proxy: TcpProxy, client: Transport) -> None:
        self.proxy = proxy
        self.id = client.id
        self.client = client
        self.upstream: Transport | None = None
        self.up: Pipe | None = None
        self.down: Pipe | None = None
        self.opened_at = proxy.loop.time()
        self.client_addr = format_peer(client.peer)
        self.listen_addr = format_peer(client.get_extra_info("sockname"))
        self.upstream_local = ""
        self.client_lost = False
        #: The upstream side is over (lost, or never made).
        self.upstream_lost = False
        #: Why the connection ended, once known (else the client's close reason).
        self.end: str | None = None

    # -- the upstream connection --------------------------------------------

    def upstream_made(self, transport: Transport) -> None:
        self.upstream = transport
        self.upstream_local = format_peer(transport.get_extra_info("sockname"))
        if self.client_lost:
            transport.close()
            return
        proxy = self.proxy
        self.up = Pipe(self, UPSTREAM, self.client, transport, proxy.totals[UPSTREAM])
        self.down = Pipe(self, DOWNSTREAM, transport, self.client, proxy.totals[DOWNSTREAM])
        for toxic in proxy.toxics:
            self.attach(toxic)
        self.client.resume_reading()

    def upstream_failed(self, exc: OSError) -> None:
        self.upstream_lost = True
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        self.end = f"upstream-{name}"
        self.proxy.upstream_failed(exc, name)
        if self.client_lost:
            self.proxy.conn_ended(self)
        else:
            self.client.close()

    # -- toxics -------------------------------------------------------------

    def attach(self, toxic: Toxic) -> None:
        """Give ``toxic`` a stage in its direction, if it draws this connection."""
        pipe = self.up if toxic.stream == UPSTREAM else self.down
        if pipe is not None and not pipe.done and self.proxy.draw(toxic):
            pipe.add_stage(toxic)

    def detach(self, toxic: Toxic) -> None:
        """Remove ``toxic``'s stage, if it has one."""
        pipe = self.up if toxic.stream == UPSTREAM else self.down
        if pipe is not None:
            pipe.remove_stage(toxic)

    def updated(self, toxic: Toxic) -> None:
        """``toxic``'s attributes changed."""
        pipe = self.up if toxic.stream == UPSTREAM else self.down
        stage = None if pipe is None or pipe.done else pipe.stage_of(toxic)
        if stage is not None:
            stage.updated()

    def toxic_fired(self, toxic: Toxic) -> None:
        """``toxic`` did its thing to this connection: counted, and the end's reason."""
        self.proxy.fired[toxic.name] += 1
        if self.end is None:
            self.end = toxic.type

    def end_by_toxic(self, toxic: Toxic) -> None:
        """``timeout``: close both sides; what the stages hold is dropped."""
        self.toxic_fired(toxic)
        self._finish_pipes()
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()

    def reset_by_toxic(self, toxic: Toxic, pipe: Pipe) -> None:
        """``reset_peer``: reset the side ``pipe`` flows to, close the other."""
        self.toxic_fired(toxic)
        self._finish_pipes()
        _reset(pipe.sink)
        pipe.source.close()

    # -- endings ------------------------------------------------------------

    def eof_delivered(self, pipe: Pipe) -> None:
        """``pipe``'s EOF reached its sink: half-close it, or close if all is done."""
        pipe.done = True
        other = self.down if pipe is self.up else self.up
        if pipe.cut or other is None or other.done:
            self._finish_pipes()
            pipe.sink.close()
            if pipe.cut:
                pipe.source.close()
        else:
            pipe.sink.write_eof()

    def side_lost(self, is_client: bool, exc: BaseException | None) -> None:
        """One of the two sockets has closed (``exc``: why, if not in order)."""
        if is_client:
            self.client_lost = True
            into, out, other = self.down, self.up, self.upstream
        else:
            self.upstream_lost = True
            into, out, other = self.up, self.down, self.client
        if into is not None:
            into.finish()
        if exc is not None:  # a reset or an error: the other side gets a reset at once
            if self.end is None:
                lost = self.client if is_client else self.upstream
                side = "client" if is_client else "upstream"
                self.end = f"{side}-{(lost.close_reason if lost else None) or 'error'}"
            if out is not None:
                out.finish()
            if other is not None:
                _reset(other)
        elif out is not None and not out.done:
            out.push_eof()  # what is still on its way goes on; the other side closes after it
        elif other is not None:
            other.close()
        if self.client_lost and self.upstream_lost:
            self.proxy.conn_ended(self)

    def _finish_pipes(self) -> None:
        for pipe in (self.up, self.down):
            if pipe is not None:
                pipe.finish()

    def row(self) -> dict[str, Any]:
        """What the API shows of this connection."""
        state = "connecting" if self.upstream is None and not self.upstream_lost else "open"
        if self.client_lost and self.upstream_lost:
            state = "closed"
        return {
            "id": self.id,
            "protocol": "tcp",
            "client": self.client_addr,
            "listen": self.listen_addr,
            "upstream_local": self.upstream_local,
            "upstream": format_peer(self.proxy.upstream_addr),
            "state": state,
            "age_s": round(self.proxy.loop.time() - self.opened_at, 3),
            "upstream_stream": None if self.up is None else self.up.row(),
            "downstream_stream": None if self.down is None else self.down.row(),
            "end": self.end if state == "closed" else None,
        }


def _reset(transport: Transport) -> None:
    """Close ``transport`` with a reset: SO_LINGER 0, so close() sends RST."""
    sock = transport.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    transport.abort()


class TcpProxy(ProxyBase):
    """A TCP proxy with toxics: listens on ``host``:``port``, forwards to ``upstream``.

    Args:
        name: its name in the API (``/proxies/NAME``).
        host: the address to listen on (``127.0.0.1``, ``::1``, ...).
        port: the port to listen on (0: the kernel picks one).
        upstream: (host, port) of the server to forward to.
        loop: the loop to run on.
        seed: seeds the toxicity draws, latency jitter and slicer sizes.

    Raises:
        SetupError: the upstream host cannot be resolved.
    """

    protocol = "tcp"

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        upstream: tuple[str, int],
        *,
        loop: Loop,
        seed: int | None = None,
    ) -> None:
        super().__init__(name, loop, TCP_TYPES, seed)
        self.upstream_family, self.upstream_addr = resolve_address(
            upstream[0], upstream[1], socket.SOCK_STREAM, passive=False
        )
        self.server = Server(
            lambda: _Side(self, None, True), host, port, loop=loop, grace=SHUTDOWN_GRACE_S
        )
        self._conns: dict[int, _Conn] = {}
        #: [bytes read, bytes written] of each direction, over every connection.
        self.totals: dict[str, list[int]] = {UPSTREAM: [0, 0], DOWNSTREAM: [0, 0]}
        self._warned: set[str] = set()

    def start(self) -> None:
        """Listen.

        Raises:
            SetupError: the address is in use (or cannot be used).
        """
        self.server.start()

    def serve_forever(self, ready: Callable[[], None] | None = None) -> int:
        """Run until SIGINT or SIGTERM: the first lets queued bytes flush for
        ``SHUTDOWN_GRACE_S``, a second exits at once. Returns the exit status."""
        return self.server.serve_forever(ready=ready)

    @property
    def listen_address(self) -> str:
        """Where it listens: ``tcp://HOST:PORT``."""
        return self.server.addresses[0]

    @property
    def upstream_address(self) -> str:
        """Where it forwards to: ``tcp://HOST:PORT``."""
        return format_address(self.upstream_family, self.upstream_addr, "tcp")

    # -- connections --------------------------------------------------------

    def accepted(self, transport: Transport) -> _Conn:
        """A client connected: hold its bytes until upstream is reached."""
        conn = _Conn(self, transport)
        self._conns[conn.id] = conn
        self.clients_seen += 1
        transport.pause_reading()
        open_connection(
            self.loop,
            self.upstream_family,
            self.upstream_addr,
            _Side(self, conn, False),
            on_failed=conn.upstream_failed,
        )
        return conn

    def upstream_failed(self, exc: OSError, name: str) -> None:
        """Upstream could not be reached: counted, and logged once per errno."""
        self.upstream_errors[name] += 1
        if name not in self._warned:
            self._warned.add(name)
            logger.warning(
                "proxy %s: upstream %s: %s (%s); each client is closed while it lasts "
                "(logged once, counted in GET /proxies/%s)",
                self.name, self.upstream_address, exc.strerror or exc, name, self.name,
                extra={"event": "upstream-error", "fields": {"proxy": self.name, "errno": name}},
            )  # fmt: skip

    def conn_ended(self, conn: _Conn) -> None:
        """Both sockets of ``conn`` have closed: its row goes to the recent ones."""
        if self._conns.pop(conn.id, None) is None:
            return
        if conn.end is None:  # no toxic, no reset: orderly, unless the listener ended it
            reason = conn.client.close_reason
            conn.end = "eof" if reason in (None, "eof", "local") else reason
        self.ended[conn.end] += 1
        self.recent.append(conn.row())

    # -- toxics -------------------------------------------------------------

    def _toxic_added(self, toxic: Toxic) -> None:
        for conn in list(self._conns.values()):
            conn.attach(toxic)

    def _toxic_updated(self, toxic: Toxic) -> None:
        for conn in list(self._conns.values()):
            conn.updated(toxic)

    def _toxic_removed(self, toxic: Toxic) -> None:
        for conn in list(self._conns.values()):
            conn.detach(toxic)

    # -- records ------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """Totals: connections, bytes each way, what the toxics and upstream did."""
        up, down = self.totals[UPSTREAM], self.totals[DOWNSTREAM]
        return {
            "connections": len(self._conns),
            **self.counters(),
            "bytes_from_clients": up[0],
            "bytes_to_upstream": up[1],
            "bytes_from_upstream": down[0],
            "bytes_to_clients": down[1],
        }

    def rows(self, limit: int) -> list[dict[str, Any]]:
        """Rows of the open connections, the newest ``limit``."""
        conns = list(self._conns.values())[-limit:]
        return [conn.row() for conn in conns]

    def summary(self) -> str:
        """One line: connections, bytes each way, toxics applied, upstream failures."""
        up, down = self.totals[UPSTREAM], self.totals[DOWNSTREAM]
        line = (
            f"proxy {self.name}: {self.clients_seen} connections, "
            f"{up[1]} bytes to upstream, {down[1]} bytes to clients"
        )
        if self.applied:
            line += "; toxics applied: " + ", ".join(f"{k} {v}" for k, v in self.applied.items())
        if self.fired:
            line += "; fired: " + ", ".join(f"{k} {v}" for k, v in self.fired.items())
        if self.upstream_errors:
            line += "; upstream failed: " + ", ".join(
                f"{k} {v}" for k, v in self.upstream_errors.items()
            )
        return line

    def close(self) -> None:
        """Abort every connection, both sides (at exit)."""
        for conn in list(self._conns.values()):
            conn.client.abort("shutdown")
            if conn.upstream is not None:
                conn.upstream.abort("shutdown")
