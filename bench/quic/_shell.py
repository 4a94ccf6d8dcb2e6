"""The I/O glue for one sans-IO endpoint on a fivetuple loop: drain datagrams, re-arm one timer.

Theory of operation
-------------------
aioquic's ``QuicConnection`` and the netsim-shaped endpoints of
bench/reliable_bench.py (``KcpEndpoint``) have the same four calls:
``receive_datagram(data, addr, now)``, ``datagrams_to_send(now)``,
``get_timer()`` and ``handle_timer(now)``. ``Driver`` is the whole shell
around one of them, as ``QuicConnectionProtocol.transmit`` is in
``aioquic/asyncio/protocol.py``:

- a datagram arrives: ``receive_datagram``, then a *pump*;
- the one loop timer fires at ``get_timer()``: ``handle_timer``, then a pump;
- the application gave the endpoint work (``send_stream_data``, ``close``):
  ``pump_soon()``, one pump at the end of the loop's iteration however many
  calls came before it (aioquic's ``_transmit_soon``).

A pump first hands the endpoint's events to the application (``on_events``:
an echo answers inside it, and its answer leaves in the same pump), then
sends every ``datagrams_to_send(now)`` with ``send``, then moves the loop
timer to ``get_timer()`` if it changed. The timer is a fivetuple ``Timer``
from ``loop.call_at``: cancelled and re-armed, never more than one.

Time is ``loop.time() - epoch``: aioquic takes any clock, but KCP's
timestamps are u32 milliseconds, so its driver starts the count at zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from fivetuple import Loop, Timer

Address = Any
SendCallback = Callable[[bytes, Address], None]


class Endpoint(Protocol):
    """What a ``Driver`` drives: aioquic's ``QuicConnection`` API, and netsim's."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None: ...

    def datagrams_to_send(self, now: float) -> Iterable[tuple[bytes, Address]]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class Driver:
    """Drives one sans-IO endpoint on ``loop`` (see the module docstring).

    Args:
        loop: the fivetuple loop whose clock and timers the endpoint uses.
        endpoint: a ``QuicConnection``, or anything with the same four calls.
        send: puts one datagram on the wire (``DatagramTransport.sendto``).
        on_events: called at the start of every pump, to take the endpoint's
            events (None: the endpoint has none).
        epoch: subtracted from ``loop.time()`` to make the endpoint's clock.

    Attributes:
        datagrams_sent, bytes_sent, datagrams_received, bytes_received: UDP
            payloads through this driver.
    """

    __slots__ = (
        "_closed",
        "_loop",
        "_on_events",
        "_scheduled",
        "_send",
        "_timer",
        "_timer_at",
        "bytes_received",
        "bytes_sent",
        "datagrams_received",
        "datagrams_sent",
        "endpoint",
        "epoch",
    )

    def __init__(
        self,
        loop: Loop,
        endpoint: Endpoint,
        send: SendCallback,
        *,
        on_events: Callable[[], None] | None = None,
        epoch: float = 0.0,
    ) -> None:
        self._loop = loop
        self.endpoint = endpoint
        self._send = send
        self._on_events = on_events
        self.epoch = epoch
        self._timer: Timer | None = None
        self._timer_at: float | None = None
        self._scheduled = False
        self._closed = False
        self.datagrams_sent = 0
        self.bytes_sent = 0
        self.datagrams_received = 0
        self.bytes_received = 0

    def now(self) -> float:
        """The endpoint's clock: the loop's, less ``epoch``."""
        return self._loop.time() - self.epoch

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Feed one datagram to the endpoint, then pump."""
        self.datagrams_received += 1
        self.bytes_received += len(data)
        self.endpoint.receive_datagram(data, addr, self.now())
        self.pump()

    def pump(self) -> None:
        """Take the events, send what is due, and re-arm the timer."""
        if self._closed:
            return
        if self._on_events is not None:
            self._on_events()
        send = self._send
        for data, addr in self.endpoint.datagrams_to_send(self.now()):
            self.datagrams_sent += 1
            self.bytes_sent += len(data)
            send(data, addr)
        self._arm()

    def pump_soon(self) -> None:
        """Pump at the end of this loop iteration (once, however often this is called)."""
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._scheduled_pump)

    def close(self) -> None:
        """Stop driving: cancel the timer; later datagrams and pumps do nothing."""
        self._closed = True
        self._cancel()

    def _scheduled_pump(self) -> None:
        self._scheduled = False
        self.pump()

    def _arm(self) -> None:
        deadline = self.endpoint.get_timer()
        if deadline == self._timer_at:
            return
        self._cancel()
        if deadline is not None:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline + self.epoch, self._fire)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _fire(self) -> None:
        # Never earlier than the deadline asked for: a loop timer may fire a
        # hair early, and aioquic does nothing when handle_timer comes early.
        deadline = self._timer_at
        self._timer = None
        self._timer_at = None
        now = self.now()
        if deadline is not None and now < deadline:
            now = deadline
        self.endpoint.handle_timer(now)
        self.pump()


def run_until(loop: Loop, done: Callable[[], bool], timeout: float) -> bool:
    """Run ``loop`` until ``done()`` is true or ``timeout`` seconds have passed.

    Returns:
        ``done()`` at the end: False means the time ran out.
    """
    deadline = loop.time() + timeout
    while not done():
        left = deadline - loop.time()
        if left <= 0:
            return False
        loop.run_once(min(left, 0.05))
    return True
