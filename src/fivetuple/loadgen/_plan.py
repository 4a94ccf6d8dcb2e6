"""How many processes and which source addresses a bench needs (issue 14).

Theory of operation. Two limits cap the connections of one run, and both
are chosen here, before any worker starts, when the user did not choose:

- descriptors: a process holds at most RLIMIT_NOFILE descriptors (the hard
  limit, once ``raise_nofile`` has lifted the soft one to it). A worker
  needs one per connection, ``SPARE_FDS`` for itself (loop, pipe, stdio) and
  one for each pipe of the workers forked before it (fork copies the
  parent's descriptors). ``--procs`` defaults to the fewest processes whose
  share fits; an explicit ``--procs`` that is too small is kept, with a note.
- ports: to one destination, a source address has the ephemeral port range
  (``net.ipv4.ip_local_port_range``) of ports, less those that sockets of
  this machine already hold on that address or on the wildcard address
  (counted in /proc/net/tcp and tcp6), less ``SPARE_PORTS`` for everyone
  else. Only ``PORT_FILL`` of those are planned for: connect() searches the
  range for a port whose four-tuple is free, and that search slows as the
  range fills (19,000 connections from one address: 2,400 connections/s;
  from four: 21,000/s, see /work/notes/hold.md), while loopback addresses
  cost nothing. For a TCP target in 127.0.0.0/8, when ``--conns`` is more
  than that share of the default source address (127.0.0.1), consecutive
  addresses from
  127.0.0.2 on (skipping the target's own address: harmless to use, but
  its ports are the server's and its clients') are picked until their
  ports add up; 127.0.0.1 itself is left to the rest of the machine, whose
  tests and clients connect from it. Any other target has one source
  address unless ``--source-addrs`` says otherwise: a note says so.

``FIVETUPLE_BENCH_PORT_RANGE`` (a number of ports) overrides the range's size
and turns off the count of ports in use, so that a test can make a few
hundred connections need several source addresses.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: Descriptors a worker keeps for itself (the loop, its pipe, stdio).
SPARE_FDS = 32
#: Ports of each source address left to the rest of the machine.
SPARE_PORTS = 512
#: The share of a source address's free ports that the plan fills (see above).
PORT_FILL = 0.25
#: The size of the ephemeral port range, for tests (see the module docstring).
PORT_RANGE_ENV = "FIVETUPLE_BENCH_PORT_RANGE"
PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: Linux's default range (32768-60999), where PORT_RANGE_FILE cannot be read.
DEFAULT_PORT_RANGE = (32768, 60999)
#: The first address picked, and the most that can be picked (127.0.0.2 to 127.255.255.254).
FIRST_SOURCE = ipaddress.IPv4Address("127.0.0.2")
MAX_SOURCES = 65_536
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(frozen=True, slots=True)
class Plan:
    """What was chosen: processes and source addresses, and whether by us."""

    procs: int
    procs_auto: bool
    source_addrs: tuple[str, ...]
    sources_auto: bool
    nofile: int
    ports_per_source: int | None
    notes: tuple[str, ...] = field(default=())

    def line(self) -> str:
        """One line for stderr: what was chosen and why."""
        why = f"RLIMIT_NOFILE {self.nofile:,}"
        procs = f"{self.procs} process{'es' if self.procs != 1 else ''}"
        procs += f" (automatic: {why})" if self.procs_auto else " (--procs)"
        if self.source_addrs:
            addrs = self.source_addrs
            span = addrs[0] if len(addrs) == 1 else f"{addrs[0]}-{addrs[-1]}"
            how = "--source-addrs"
            if self.sources_auto:
                how = f"automatic: {self.ports_per_source or 0:,} connections each at most"
            sources = f"{len(addrs)} source address{'es' if len(addrs) != 1 else ''} {span} ({how})"
        else:
            sources = "the default source address"
        return f"bench: {procs}, {sources}"

    def to_json(self) -> dict[str, object]:
        addrs = self.source_addrs
        return {
            "procs": self.procs,
            "procs_auto": self.procs_auto,
            "nofile": self.nofile,
            "source_addrs": len(addrs),
            "source_first": addrs[0] if addrs else None,
            "source_last": addrs[-1] if addrs else None,
            "sources_auto": self.sources_auto,
            "ports_per_source": self.ports_per_source,
        }


def fds_needed(conns: int, procs: int) -> int:
    """Descriptors the busiest of ``procs`` workers needs for ``conns`` in all."""
    return -(-conns // procs) + SPARE_FDS + procs


def auto_procs(conns: int, nofile: int) -> int:
    """The fewest processes (at most ``conns``) whose share of ``conns`` fits in ``nofile``."""
    procs = max(1, -(-conns // max(1, nofile - SPARE_FDS)))
    while procs < conns and fds_needed(conns, procs) > nofile:
        procs += 1
    return procs


def port_range() -> tuple[int, int, bool]:
    """(first, last, overridden): the ephemeral port range, or its size from
    PORT_RANGE_ENV (then first is 0 and ports in use are not counted)."""
    size = os.environ.get(PORT_RANGE_ENV)
    if size and size.isdigit():
        return 0, int(size) - 1, True
    try:
        low, high = (int(x) for x in PORT_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = DEFAULT_PORT_RANGE
    return low, high, False


def _hex_address(text: str) -> str:
    """/proc/net/tcp's local address (little-endian hex words) -> the address."""
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words).ipv4_mapped or ipaddress.IPv6Address(words))


def proc_net_rows(
    files: Iterable[str] = ("/proc/net/tcp", "/proc/net/tcp6"),
) -> list[list[str]]:
    """The rows of /proc/net/tcp and tcp6, split into fields (headers left out)."""
    rows: list[list[str]] = []
    for name in files:
        try:
            with open(name) as f:
                next(f, None)
                rows += [line.split() for line in f]
        except OSError:
            continue
    return rows


def ports_in_use(low: int, high: int) -> dict[str, set[int]]:
    """Local address -> the ports in [low, high] that sockets hold on it
    (the wildcard address under "0.0.0.0" and "::")."""
    used: dict[str, set[int]] = {}
    for row in proc_net_rows():
        if len(row) < 2:
            continue
        addr, _, port_hex = row[1].partition(":")
        port = int(port_hex, 16)
        if low <= port <= high:
            used.setdefault(_hex_address(addr), set()).add(port)
    return used


def free_ports(
    address: str, low: int, high: int, used: dict[str, set[int]], spare: int = SPARE_PORTS
) -> int:
    """Ports of ``address`` free for connections to one destination, less ``spare``."""
    taken = used.get(address, set()) | used.get("0.0.0.0", set()) | used.get("::", set())
    return max(0, high - low + 1 - len(taken) - spare)


def loopback_v4(host: str) -> ipaddress.IPv4Address | None:
    """The target's address if it is IPv4 loopback (127.0.0.0/8), else None."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv4Address) and address in _LOOPBACK:
        return address
    return None


def auto_sources(conns: int, target_host: str) -> tuple[tuple[str, ...], int | None, str | None]:
    """Source addresses for ``conns`` connections to ``target_host``.

    Returns:
        (addresses, free ports of each, note): no addresses when the default
        source address has ports enough, or when the target is not IPv4
        loopback (then the note says why none were picked).
    """
    low, high, overridden = port_range()
    used = {} if overridden else ports_in_use(low, high)
    spare = 0 if overridden else SPARE_PORTS
    if conns <= free_ports("127.0.0.1", low, high, used, spare) * PORT_FILL:
        return (), None, None
    target = loopback_v4(target_host)
    if target is None or not free_ports("", low, high, used, spare):
        return (
            (),
            None,
            (
                f"note: {conns:,} connections are more than one source address has free "
                f"ephemeral ports for; add --source-addrs with addresses of this machine"
            ),
        )
    picked: list[str] = []
    reach = 0
    candidate = FIRST_SOURCE
    while reach < conns and len(picked) < MAX_SOURCES and candidate in _LOOPBACK:
        if candidate != target:
            free = int(free_ports(str(candidate), low, high, used, spare) * PORT_FILL)
            if free:
                picked.append(str(candidate))
                reach += free
        candidate += 1
    return tuple(picked), reach // max(1, len(picked)), None


def make_plan(
    conns: int,
    procs: int | None,
    source_addrs: tuple[str, ...],
    nofile: int,
    *,
    tcp_host: str | None,
) -> Plan:
    """Choose what the user left open.

    Args:
        conns: the connections asked for.
        procs: --procs, or None to choose.
        source_addrs: --source-addrs, or () to choose (TCP to loopback only).
        nofile: the descriptor limit each worker will have.
        tcp_host: the target's host for a TCP target, None for UDP and Unix.
    """
    notes: list[str] = []
    chosen = procs if procs is not None else auto_procs(conns, nofile)
    if procs is not None and fds_needed(conns, procs) > nofile:
        notes.append(
            f"note: {-(-conns // procs):,} connections per process is more than RLIMIT_NOFILE "
            f"{nofile:,} allows; expect a descriptor limit (use --procs "
            f"{auto_procs(conns, nofile)})"
        )
    sources, per_source, auto = source_addrs, None, False
    if not source_addrs and tcp_host is not None:
        sources, per_source, note = auto_sources(conns, tcp_host)
        auto = bool(sources)
        if note:
            notes.append(note)
    elif source_addrs:
        low, high, _ = port_range()
        if -(-conns // len(source_addrs)) > high - low + 1:
            notes.append(
                f"note: {-(-conns // len(source_addrs)):,} connections per source address "
                f"are more than its {high - low + 1:,} ephemeral ports; expect "
                "EADDRNOTAVAIL (add addresses to --source-addrs)"
            )
    return Plan(chosen, procs is None, sources, auto, nofile, per_source, tuple(notes))
