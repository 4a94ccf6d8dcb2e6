"""The TCP toxics' stages: what each toxic type does to one direction's bytes.

Theory of operation. A direction of a proxied connection (``_tcp.Pipe``)
is a chain of hops: a stage per toxic that applies to it, then the sink,
which writes to the other socket. Each stage gets bytes (``push``) and the
end of the stream (``push_eof``) from the hop before it and hands them on to
``next`` when its toxic says so. ``STAGES`` maps each toxic type to its
stage; ``_toxics.TCP_TYPES`` holds the types' attributes.

Stages that delay (latency, bandwidth, slicer, slow_close) are ``_Timed``:
a FIFO of (release time, chunk or EOF) with one timer armed at its head.
Order is kept because no release time is earlier than the one before it.
What a stage holds is declared to its pipe (``pipe.hold``), which stops
reading its source past a cap: a delay holds a bounded amount.

A stage reads its toxic's attributes as each chunk arrives, so a change
through the API applies to what comes next; ``updated`` re-arms a timer
that depends on them. Removed, a stage passes on at once what it held
(``detach``); when its connection ends, it drops it (``discard``).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from ._toxics import TCP_TYPES, Toxic

if TYPE_CHECKING:
    from .._timers import Timer
    from ._tcp import Pipe

#: The bandwidth toxic releases at most this many seconds' worth of bytes at once.
BANDWIDTH_SLICE_S = 0.1


class Hop:
    """Anything a stage hands bytes to: the next stage, or the sink."""

    __slots__ = ()

    def push(self, data: bytes) -> None:
        """Take ``data``, the next bytes of the stream."""
        raise NotImplementedError

    def push_eof(self) -> None:
        """Take the end of the stream (after every byte pushed before it)."""
        raise NotImplementedError


class Sink(Hop):
    """The end of a pipe: writes to the transport the pipe flows to."""

    __slots__ = ("pipe",)

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe

    def push(self, data: bytes) -> None:
        pipe = self.pipe
        if pipe.done or not data:
            return
        pipe.bytes_out += len(data)
        pipe.totals[1] += len(data)
        pipe.sink.write(data)

    def push_eof(self) -> None:
        pipe = self.pipe
        if not pipe.done:
            pipe.conn.eof_delivered(pipe)


class Stage(Hop):
    """One toxic on one direction of one connection; by default it passes all on."""

    __slots__ = ("next", "pipe", "toxic")

    def __init__(self, pipe: Pipe, toxic: Toxic) -> None:
        self.pipe = pipe
        self.toxic = toxic
        self.next: Hop = pipe.sink_hop

    def start(self) -> None:
        """The stage is in the chain: arm what runs from now (``timeout``)."""

    def push(self, data: bytes) -> None:
        self.next.push(data)

    def push_eof(self) -> None:
        self.next.push_eof()

    def updated(self) -> None:
        """The toxic's attributes changed (re-arm a timer that depends on them)."""

    def detach(self) -> None:
        """The toxic is removed: pass on at once whatever is held, in order."""

    def discard(self) -> None:
        """The connection is ending: drop what is held, stop the timers."""


class _Timed(Stage):
    """A stage that releases chunks (and the EOF, ``None``) at times it chooses, in order."""

    __slots__ = ("_last", "_queue", "_timer")

    def __init__(self, pipe: Pipe, toxic: Toxic) -> None:
        super().__init__(pipe, toxic)
        self._queue: deque[tuple[float, bytes | None]] = deque()
        self._timer: Timer | None = None
        #: The latest release time given so far: none may be earlier (order).
        self._last = 0.0

    def _schedule(self, when: float, data: bytes | None, now: float) -> None:
        if when < self._last:
            when = self._last
        self._last = when
        if not self._queue and when <= now:
            self._out(data)
            return
        self._queue.append((when, data))
        if data:
            self.pipe.hold(len(data))
        if self._timer is None:
            self._timer = self.pipe.loop.call_at(self._queue[0][0], self._release)

    def _out(self, data: bytes | None) -> None:
        if data is None:
            self.next.push_eof()
        else:
            self.next.push(data)

    def _release(self) -> None:
        self._timer = None
        pipe = self.pipe
        queue = self._queue
        now = pipe.loop.time()
        while queue and queue[0][0] <= now:
            _, data = queue.popleft()
            if data:
                pipe.hold(-len(data))
            self._out(data)
            if pipe.done:
                return
        if queue:
            self._timer = pipe.loop.call_at(queue[0][0], self._release)

    def push_eof(self) -> None:
        self._schedule(self._last, None, self.pipe.loop.time())

    def detach(self) -> None:
        self._cancel()
        queue, self._queue = self._queue, deque()
        for _, data in queue:
            if data:
                self.pipe.hold(-len(data))
            self._out(data)

    def discard(self) -> None:
        self._cancel()
        self._queue.clear()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Latency(_Timed):
    """``latency``: each chunk leaves latency +/- jitter ms after it came (never earlier
    than the one before it)."""

    __slots__ = ()

    def push(self, data: bytes) -> None:
        attributes = self.toxic.attributes
        delay = attributes["latency"]
        jitter = attributes["jitter"]
        if jitter:
            delay += self.pipe.random_uniform(-jitter, jitter)
        now = self.pipe.loop.time()
        self._schedule(now + max(delay, 0.0) / 1000.0, data, now)


class _Bandwidth(_Timed):
    """``bandwidth``: chunks leave as a link of ``rate`` KB/s would let them, in slices
    of at most ``BANDWIDTH_SLICE_S`` worth."""

    __slots__ = ()

    def push(self, data: bytes) -> None:
        rate = self.toxic.attributes["rate"] * 1000.0
        now = self.pipe.loop.time()
        when = max(now, self._last)
        if rate <= 0:  # toxiproxy's rule: a rate of 0 is no limit
            self._schedule(when, data, now)
            return
        piece = max(1, int(rate * BANDWIDTH_SLICE_S))
        for start in range(0, len(data), piece):
            chunk = data[start : start + piece]
            when += len(chunk) / rate
            self._schedule(when, chunk, now)


class _Slicer(_Timed):
    """``slicer``: each chunk in pieces of average_size +/- size_variation bytes,
    ``delay`` microseconds apart."""

    __slots__ = ()

    def push(self, data: bytes) -> None:
        attributes = self.toxic.attributes
        average = attributes["average_size"]
        variation = attributes["size_variation"]
        delay = attributes["delay"] / 1e6
        now = self.pipe.loop.time()
        when = max(now, self._last)
        start = 0
        while start < len(data):
            size = average + (self.pipe.random_int(-variation, variation) if variation else 0)
            piece = data[start : start + max(size, 1)]
            start += len(piece)
            self._schedule(when, piece, now)
            when += delay
        self._last = when  # the next chunk's first piece comes delay after this one's last


class _SlowClose(_Timed):
    """``slow_close``: bytes pass; the EOF is held ``delay`` ms."""

    __slots__ = ()

    def push(self, data: bytes) -> None:
        self.next.push(data)  # nothing is ever queued ahead of a chunk: only the EOF, last

    def push_eof(self) -> None:
        now = self.pipe.loop.time()
        self._schedule(now + self.toxic.attributes["delay"] / 1000.0, None, now)


class _Timeout(Stage):
    """``timeout``: hold everything; after ``timeout`` ms (unless 0) close the connection.

    What it holds counts against the pipe's cap, so a stalled client stops
    being read. Removed, it lets what it held go on (toxiproxy drops it).
    """

    __slots__ = ("_eof", "_held", "_started", "_timer")

    def __init__(self, pipe: Pipe, toxic: Toxic) -> None:
        super().__init__(pipe, toxic)
        self._held: list[bytes] = []
        self._eof = False
        self._timer: Timer | None = None
        self._started = 0.0

    def start(self) -> None:
        self._started = self.pipe.loop.time()
        self._arm()

    def _arm(self) -> None:
        self._cancel()
        timeout = self.toxic.attributes["timeout"]
        if timeout > 0:
            self._timer = self.pipe.loop.call_at(self._started + timeout / 1000.0, self._fire)

    def updated(self) -> None:
        self._arm()

    def push(self, data: bytes) -> None:
        self._held.append(data)
        self.pipe.hold(len(data))

    def push_eof(self) -> None:
        self._eof = True

    def _fire(self) -> None:
        self._timer = None
        self.pipe.conn.end_by_toxic(self.toxic)

    def detach(self) -> None:
        self._cancel()
        held, self._held = self._held, []
        for data in held:
            self.pipe.hold(-len(data))
            self.next.push(data)
        if self._eof:
            self.next.push_eof()

    def discard(self) -> None:
        self._cancel()
        self._held = []

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _ResetPeer(Stage):
    """``reset_peer``: ``timeout`` ms after the first data (or EOF) reaches it, reset
    the connection; what reaches it meanwhile is dropped (toxiproxy's rule)."""

    __slots__ = ("_eof", "_first", "_timer")

    def __init__(self, pipe: Pipe, toxic: Toxic) -> None:
        super().__init__(pipe, toxic)
        self._first: float | None = None
        self._timer: Timer | None = None
        self._eof = False

    def push(self, data: bytes) -> None:
        self.pipe.dropped += len(data)
        self._trigger()

    def push_eof(self) -> None:
        self._eof = True
        self._trigger()

    def _trigger(self) -> None:
        if self._first is None:
            self._first = self.pipe.loop.time()
            self._arm()

    def _arm(self) -> None:
        self._cancel()
        if self._first is not None:
            when = self._first + self.toxic.attributes["timeout"] / 1000.0
            self._timer = self.pipe.loop.call_at(when, self._fire)

    def updated(self) -> None:
        self._arm()

    def _fire(self) -> None:
        self._timer = None
        self.pipe.conn.reset_by_toxic(self.toxic, self.pipe)

    def detach(self) -> None:
        self._cancel()
        if self._eof:
            self.next.push_eof()

    def discard(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _LimitData(Stage):
    """``limit_data``: pass ``bytes`` bytes, then an EOF; the connection closes when it
    arrives. Later bytes are dropped."""

    __slots__ = ("_cut", "_passed")

    def __init__(self, pipe: Pipe, toxic: Toxic) -> None:
        super().__init__(pipe, toxic)
        self._passed = 0
        self._cut = False

    def push(self, data: bytes) -> None:
        if self._cut:
            self.pipe.dropped += len(data)
            return
        limit = self.toxic.attributes["bytes"]
        left = limit - self._passed
        if left > 0:
            if len(data) > left:
                self.pipe.dropped += len(data) - left
                data = data[:left]
            self._passed += len(data)
            self.next.push(data)
        else:
            self.pipe.dropped += len(data)
        if self._passed >= limit and not self.pipe.done:
            self._cut = True
            self.pipe.cut = True
            self.pipe.conn.toxic_fired(self.toxic)
            self.next.push_eof()

    def push_eof(self) -> None:
        if not self._cut:
            self.next.push_eof()


#: Toxic type -> the stage that does it (one per toxic per connection direction).
STAGES: dict[str, type[Stage]] = {
    "latency": _Latency,
    "bandwidth": _Bandwidth,
    "slicer": _Slicer,
    "timeout": _Timeout,
    "reset_peer": _ResetPeer,
    "limit_data": _LimitData,
    "slow_close": _SlowClose,
}
assert set(STAGES) == set(TCP_TYPES), "a TCP toxic type without a stage (or the reverse)"
