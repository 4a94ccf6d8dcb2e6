"""The forwarder: IP packets from one TUN, through netsim's link model, into the other.

Theory of operation. A TUN descriptor is readable while the kernel has
packets queued on the device, so it is one more descriptor on the loop. Each
direction is a ``Direction``: when its TUN is readable it reads up to
``READ_BATCH`` packets (bounded, so that the other direction and the timers
get their turn, as the listener bounds its accept batch), and puts each on
its ``LiveLink``, which decides the packet's fate with netsim's model and
calls back at its arrival time; arrival is one ``os.write`` into the other
TUN, which hands the packet to the other namespace's IP stack.

Nothing is buffered here beyond what the link holds (bounded by
``LiveLink.max_held_bytes`` and by ``--queue`` with ``--rate``). A write the
kernel refuses is counted and the packet dropped, as a full device queue
does: ``write_drops`` for a full queue (EAGAIN, ENOBUFS), ``write_errors``
for a packet the kernel will not take (a corrupted version nibble: EINVAL).
A packet the sender's kernel could not queue on its TUN (the forwarder too
slow) is dropped by the kernel and shows in ``ip -s link`` as TX dropped;
the link's owner reads that count into ``Direction.tun_drops``.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._impair import LiveLink
from .._poller import READ
from ..netsim import LinkConfig, LinkStats, Seed

if TYPE_CHECKING:
    from .._loop import Loop

#: Packets read from one TUN per readiness event.
READ_BATCH = 64
#: Bytes asked of each read: a TUN without offloads never gives more than its
#: MTU, and the largest MTU an IPv4 packet can have is 65535.
READ_BYTES = 65535


@dataclass(frozen=True, slots=True)
class DirectionStats:
    """What one direction of the link did.

    ``packets`` and ``bytes`` were read from the sending side's TUN; ``written``
    packets reached the receiving side's IP stack. ``link`` is netsim's account
    of their fates; ``overflow_drops`` were refused because the link already
    held its ``max_held_bytes``. ``tun_drops`` never reached the forwarder: the
    sending side's kernel dropped them on a full TUN queue (the forwarder fell
    behind); the link's owner fills it in (``Direction.tun_drops``).
    """

    name: str
    packets: int
    bytes: int
    written: int
    write_drops: int
    write_errors: int
    overflow_drops: int
    tun_drops: int
    link: LinkStats

    def summary(self) -> str:
        """One clause for a person: ``a->b: 120 packets (0.2 MB), delivered 114, lost 6``."""
        link = self.link
        lost = link.lost_random + link.lost_burst + link.lost_blackout
        parts = [
            f"{self.name}: {self.packets} packets ({self.bytes / 1e6:.1f} MB)",
            f"delivered {self.written}",
            f"lost {lost}",
        ]
        extra = {
            "dropped at the sending TUN": self.tun_drops,
            "queue drops": link.queue_drops,
            "mtu drops": link.mtu_drops,
            "overflow drops": self.overflow_drops,
            "duplicated": link.duplicated,
            "reordered": link.reordered,
            "corrupted": link.corrupted,
            "write drops": self.write_drops,
            "write errors": self.write_errors,
            "in flight": link.in_flight,
        }
        parts += [f"{what} {count}" for what, count in extra.items() if count]
        return ", ".join(parts)


class Direction:
    """One way through the link: read ``in_fd``, impair, write ``out_fd``.

    Args:
        loop: the loop that reads ``in_fd`` and keeps the link's time.
        name: how the summary calls this direction (``"a->b"``).
        in_fd: the sending side's TUN (non-blocking).
        out_fd: the receiving side's TUN.
        config: netsim's link model for this direction.
        seed: the seed of this direction's random choices.
    """

    __slots__ = (
        "bytes",
        "in_fd",
        "live",
        "name",
        "out_fd",
        "packets",
        "tun_drops",
        "write_drops",
        "write_errors",
    )

    def __init__(
        self, loop: Loop, name: str, in_fd: int, out_fd: int, config: LinkConfig, seed: Seed
    ) -> None:
        self.name = name
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.live = LiveLink(loop, config, seed, self._write)
        self.packets = 0
        self.bytes = 0
        self.write_drops = 0
        self.write_errors = 0
        #: Packets the sending side's kernel dropped on a full TUN queue (set by the owner).
        self.tun_drops = 0

    def handle_io(self, events: int) -> None:
        """Read up to ``READ_BATCH`` packets and put each on the link (the loop calls this)."""
        read = os.read
        fd = self.in_fd
        send = self.live.send
        count = size = 0
        try:
            for _ in range(READ_BATCH):
                packet = read(fd, READ_BYTES)
                count += 1
                size += len(packet)
                send(packet)
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            self.packets += count
            self.bytes += size

    def _write(self, packet: bytes) -> None:
        try:
            os.write(self.out_fd, packet)
        except (BlockingIOError, InterruptedError):
            self.write_drops += 1
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                self.write_drops += 1
            else:
                self.write_errors += 1

    def statistics(self) -> DirectionStats:
        """An immutable snapshot of this direction's counters."""
        link = self.live.statistics()
        return DirectionStats(
            name=self.name,
            packets=self.packets,
            bytes=self.bytes,
            written=link.delivered - self.write_drops - self.write_errors,
            write_drops=self.write_drops,
            write_errors=self.write_errors,
            overflow_drops=self.live.overflow_drops,
            tun_drops=self.tun_drops,
            link=link,
        )


class Forwarder:
    """Both directions between two TUN descriptors, on a loop.

    Args:
        loop: the loop to run on.
        fd_a: side a's TUN.
        fd_b: side b's TUN.
        config: netsim's model, the same each way (each direction has its own
            rate, queue and random stream).
        seed: directions use ``f"{seed}:a_to_b"`` and ``f"{seed}:b_to_a"``, as ``netsim.Path``.
    """

    __slots__ = ("_loop", "directions")

    def __init__(self, loop: Loop, fd_a: int, fd_b: int, config: LinkConfig, seed: Seed) -> None:
        self._loop = loop
        self.directions = (
            Direction(loop, "a->b", fd_a, fd_b, config, f"{seed}:a_to_b"),
            Direction(loop, "b->a", fd_b, fd_a, config, f"{seed}:b_to_a"),
        )
        for direction in self.directions:
            loop.add_io(direction.in_fd, direction, READ)

    def statistics(self) -> tuple[DirectionStats, DirectionStats]:
        """Snapshots of a->b and b->a."""
        a_to_b, b_to_a = self.directions
        return a_to_b.statistics(), b_to_a.statistics()

    def close(self) -> None:
        """Stop reading and drop what is still on its way (the caller closes the TUNs)."""
        for direction in self.directions:
            self._loop.remove_io(direction.in_fd)
            direction.live.close()
