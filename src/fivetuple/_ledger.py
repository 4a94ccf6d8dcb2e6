"""The server's ledger: what all of its connections add up to, kept as it changes.

Theory of operation. Per-connection caps do not bound a server: 500 clients
each a little under their own cap can still take gigabytes. So every
connection of a server reports, as it changes, the bytes it holds in user
space: its queued output (the transport's write queue) and its partial input
(what a codec or an application buffered while waiting for the rest of a
message). The ledger sums them against one memory budget, as Redis's
``maxmemory-clients`` does. When the sum passes the limit, the connections
holding the most are closed, biggest first, with the reason
``memory-budget``, until the sum is back under the low mark; everyone else is
served. Enforcing waits for the end of the loop iteration (``call_soon``), so
a transport is never aborted from inside its own ``write()``; within one
iteration the overshoot is bounded by what one iteration can read and queue.

Only connections holding something are in ``holders``, so finding the biggest
costs O(holders log holders), and it happens only when the budget is blown:
each time, at least ``limit - low mark`` bytes must be freed, so a client that
keeps pushing the server over the limit pays for every scan with closed
connections of its own.

The ledger also keeps the counts that the admin endpoint and ``statistics()``
show (connections paused each way), so that observing costs O(1), not
O(connections). A transport outside any server shares ``UNACCOUNTED``, a
ledger with no budget, so that no path needs to ask "is there a ledger".

Bytes moved are the kernel's to count (``TCP_INFO``; see ``_kernel.py``):
counting them in Python costs two integer allocations per round trip (about
700 instructions, 4% of an echo's, measured with callgrind), and summing
every connection's kernel counters for each ``/stats`` cost 130 ms at 5,000
connections. ``LiveBytes`` takes the middle way: once somebody asks, it
sweeps the live connections a bounded batch per tick, keeping each one's last
reading, so the total is O(1) to read, monotonic, and at most one sweep old.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from logging import WARNING
from typing import TYPE_CHECKING

from ._address import format_peer
from ._log import event

if TYPE_CHECKING:
    from ._loop import Loop
    from ._timers import Timer
    from ._transport import Transport

logger = logging.getLogger("fivetuple")

#: Default server-wide budget for buffered input and queued output.
DEFAULT_MEMORY_BUDGET_BYTES = 256 * 1024 * 1024
#: After enforcing, the held bytes are brought down to this fraction of the limit,
#: so that a server at its limit does not scan its holders on every new byte.
LOW_MARK_FRACTION = 0.875


class Ledger:
    """The memory budget and the O(1) counters of one server's connections.

    Args:
        loop: the server's loop (enforcement runs as a callback on it); None
            only without a limit.
        limit_bytes: the budget; None means no limit (bytes are still counted).
        send_timeout_s: queued output the kernel sent nothing of for this long
            ends its connection as ``slow-reader``; None: never.
    """

    __slots__ = (
        "_enforce_pending",
        "_loop",
        "closed_for_budget",
        "enforcements",
        "held_bytes",
        "holders",
        "limit_bytes",
        "peak_held_bytes",
        "reading_paused",
        "send_timeout_s",
        "writing_paused",
    )

    def __init__(
        self,
        loop: Loop | None,
        limit_bytes: int | None = DEFAULT_MEMORY_BUDGET_BYTES,
        send_timeout_s: float | None = None,
    ) -> None:
        if loop is None and limit_bytes is not None:
            raise ValueError("a ledger with a limit needs a loop to enforce it on")
        self._loop = loop
        self.limit_bytes = limit_bytes
        self.send_timeout_s = send_timeout_s
        #: Bytes held now by every connection together (queued output + partial input).
        self.held_bytes = 0
        self.peak_held_bytes = 0
        #: The connections holding at least one byte.
        self.holders: set[Transport] = set()
        self.reading_paused = 0
        self.writing_paused = 0
        #: Times the budget was blown, and connections closed to bring it back.
        self.enforcements = 0
        self.closed_for_budget = 0
        self._enforce_pending = False

    def charge(self, transport: Transport, delta: int, held: int) -> None:
        """``transport`` now holds ``held`` bytes, ``delta`` more than before."""
        total = self.held_bytes = self.held_bytes + delta
        if held:
            self.holders.add(transport)
        else:
            self.holders.discard(transport)
        if total > self.peak_held_bytes:
            self.peak_held_bytes = total
        limit = self.limit_bytes
        if limit is not None and total > limit and not self._enforce_pending:
            assert self._loop is not None
            self._enforce_pending = True
            self._loop.call_soon(self._enforce)

    def _enforce(self) -> None:

        self._enforce_pending = False
        limit = self.limit_bytes
        if limit is None or self.held_bytes <= limit:
            return
        self.enforcements += 1
        target = int(limit * LOW_MARK_FRACTION)
        over = self.held_bytes
        victims = sorted(self.holders, key=_held_by, reverse=True)
        closed = 0
        biggest = victims[0] if victims else None
        biggest_held = _held_by(biggest) if biggest is not None else 0
        for transport in victims:
            if self.held_bytes <= target:
                break
            transport.abort("memory-budget")  # releases its charge at once
            closed += 1
        self.closed_for_budget += closed
        remote = format_peer(biggest.peer) if biggest is not None else "-"
        event(
            logger, WARNING, "memory-budget",
            f"memory budget: {over} bytes held by connections, over the limit of {limit}; "
            f"closed the {closed} holding the most (the biggest, {remote}, held {biggest_held} bytes)",
            held=over, limit=limit, closed=closed, biggest=remote, biggest_held=biggest_held,
        )  # fmt: skip


def _held_by(transport: Transport) -> int:
    return transport.get_write_buffer_size() + transport.get_input_buffer_size()


#: The ledger of transports that belong to no server: counts, never limits.
UNACCOUNTED = Ledger(None, None)

#: How often, and how many connections at a time, ``LiveBytes`` reads.
SAMPLE_EVERY_S = 0.1
SAMPLE_BATCH = 500
#: ``LiveBytes`` stops sweeping when nobody has asked for this long.
SAMPLE_IDLE_S = 60.0


class LiveBytes:
    """Bytes in and out of every connection, ever: O(1) to read, bounded to keep.

    Closed connections are added once, as they close (``closed``). Live ones
    are read from the kernel ``SAMPLE_BATCH`` at a time every
    ``SAMPLE_EVERY_S`` (a few ms of work at most per tick), but only while
    somebody asks (``totals``): a server nobody observes reads nothing.

    Args:
        loop: the server's loop.
        connections: returns the live transports (a fresh list).
    """

    def __init__(self, loop: Loop, connections: Callable[[], list[Transport]]) -> None:
        self._loop = loop
        self._connections = connections
        self._samples: dict[Transport, tuple[int, int]] = {}
        self._sweep: list[Transport] = []
        self._timer: Timer | None = None
        self._asked = 0.0
        self._live_in = self._live_out = 0
        self._closed_in = self._closed_out = 0

    def totals(self) -> tuple[int, int]:
        """(bytes in, bytes out) of every connection so far; starts the sweeps."""
        self._asked = self._loop.time()
        if self._timer is None:
            self._tick()
        return self._closed_in + self._live_in, self._closed_out + self._live_out

    def closed(self, transport: Transport) -> None:
        """``transport`` has ended: count its final bytes, forget its sample."""
        counters = transport.counters()
        self._closed_in += counters.bytes_in
        self._closed_out += counters.bytes_out
        sample = self._samples.pop(transport, None)
        if sample is not None:
            self._live_in -= sample[0]
            self._live_out -= sample[1]

    def _tick(self) -> None:
        self._timer = None
        if not self._sweep:
            if self._loop.time() - self._asked > SAMPLE_IDLE_S:
                return  # nobody looks: stop (what was read stays, so totals never go back)
            self._sweep = self._connections()
            if not self._sweep:
                return  # nothing to read: the next ``totals`` starts again
        batch, self._sweep = self._sweep[:SAMPLE_BATCH], self._sweep[SAMPLE_BATCH:]
        samples = self._samples
        for transport in batch:
            if transport.close_reason is not None:
                continue  # ending: its bytes are counted once, when it has closed
            counters = transport.counters()
            before_in, before_out = samples.get(transport, (0, 0))
            samples[transport] = (counters.bytes_in, counters.bytes_out)
            self._live_in += counters.bytes_in - before_in
            self._live_out += counters.bytes_out - before_out
        self._timer = self._loop.call_later(SAMPLE_EVERY_S, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
