"""What the TCP and the UDP proxy share: a name, two addresses, a toxic table, a record.

Theory of operation. A proxy listens on one address and forwards each
client to one upstream address; its toxics (``_toxics.py``) say what to do
to the traffic on the way. ``ProxyBase`` keeps the table and the bookkeeping
that the HTTP API (``_api.py``) and the summary line read, and leaves what a
toxic does to the traffic to its subclass, through three hooks called after
the table has changed: ``_toxic_added``, ``_toxic_updated``,
``_toxic_removed``. Each applies the change to the clients already there, so
a toxic added, changed or removed through the API acts mid-stream.

Records. Every client (a TCP connection, or a UDP source address in the NAT
table) has a row: its five-tuples on both sides, what went each way, which
toxics it drew and what they did. Rows of clients still there are built when
somebody asks (``GET /proxies/NAME``, at most ``MAX_ROWS`` of them, the
newest); the last ``MAX_RECENT`` rows of clients that left are kept as they
were when they left. Totals are counters kept as things happen, so a
summary is O(1) whatever the number of clients.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._toxics import Toxic, ToxicTable, ToxicType, make_toxic, update_toxic

if TYPE_CHECKING:
    from .._loop import Loop

#: Rows of clients still there shown by ``GET /proxies/NAME`` at most (the newest).
MAX_ROWS = 256
#: Rows of clients that left, kept (the most recent).
MAX_RECENT = 64


class ProxyBase:
    """A proxy's name, toxics, random numbers and records; TCP and UDP fill in the rest.

    Args:
        name: the proxy's name in the API (``/proxies/NAME``).
        loop: the loop it runs on.
        types: the toxic types it can apply.
        seed: seeds its random choices (toxicity draws, jitter, netsim links);
            None: a random seed, shown in its document.
    """

    #: ``tcp`` or ``udp``.
    protocol = ""

    def __init__(
        self, name: str, loop: Loop, types: Mapping[str, ToxicType], seed: int | None
    ) -> None:
        self.name = name
        self.loop = loop
        self.toxics = ToxicTable(types)
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 31)
        self.random = random.Random(self.seed)
        self.started = loop.time()
        #: Clients seen, whether or not they were served.
        self.clients_seen = 0
        #: Why clients ended, counted.
        self.ended: Counter[str] = Counter()
        #: Toxics applied to a client (drawn by their toxicity), by toxic name.
        self.applied: Counter[str] = Counter()
        #: Toxics that did what they do to a connection (closed it, reset it, ...).
        self.fired: Counter[str] = Counter()
        #: Failures to reach the upstream server, by errno name.
        self.upstream_errors: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=MAX_RECENT)

    # -- the API calls these ---------------------------------------------------

    def add_toxic(self, doc: Mapping[str, Any]) -> Toxic:
        """Add the toxic ``doc`` describes; it applies to clients already there too.

        Raises:
            ToxicError: a bad description, or its name is taken.
        """
        toxic = make_toxic(doc, self.toxics.types)
        self.add(toxic)
        return toxic

    def add(self, toxic: Toxic) -> None:
        """Add a toxic made already (``make_toxic``, ``parse_toxic_spec``).

        Raises:
            ToxicError: its name is taken, or the type is not this proxy's.
        """
        from ._toxics import ToxicError

        if toxic.type not in self.toxics.types:
            raise ToxicError(
                f"a {self.protocol} proxy has no {toxic.type} toxic; "
                f"its types are {', '.join(self.toxics.types)}"
            )
        self.toxics.add(toxic)
        self._toxic_added(toxic)

    def update_toxic(self, name: str, doc: Mapping[str, Any]) -> Toxic:
        """Change the toxic ``name``; clients already there get the change from now on.

        Raises:
            KeyError: no such toxic.
            ToxicError: an impossible change (nothing changed then).
        """
        toxic = self.toxics.get(name)
        if toxic is None:
            raise KeyError(name)
        update_toxic(toxic, doc, self.toxics.types)
        self._toxic_updated(toxic)
        return toxic

    def remove_toxic(self, name: str) -> Toxic:
        """Remove the toxic ``name``; what it held goes on its way at once.

        Raises:
            KeyError: no such toxic.
        """
        toxic = self.toxics.remove(name)
        self._toxic_removed(toxic)
        return toxic

    def draw(self, toxic: Toxic) -> bool:
        """Whether ``toxic`` applies to one more client (its toxicity, drawn)."""
        applies = toxic.toxicity >= 1.0 or self.random.random() < toxic.toxicity
        if applies:
            self.applied[toxic.name] += 1
        return applies

    # -- documents -------------------------------------------------------------

    def document(self, clients: bool = True) -> dict[str, Any]:
        """The proxy as the API shows it: toxiproxy's fields, then fivetuple's.

        Args:
            clients: with the rows of its clients (``GET /proxies/NAME``).
        """
        doc: dict[str, Any] = {
            "name": self.name,
            "listen": self.listen_address.split("://", 1)[1],
            "upstream": self.upstream_address.split("://", 1)[1],
            "enabled": True,
            "toxics": [toxic.document() for toxic in self.toxics],
            "protocol": self.protocol,
            "seed": self.seed,
            "uptime_s": round(self.loop.time() - self.started, 3),
            "stats": self.statistics(),
        }
        if clients:
            rows = self.rows(MAX_ROWS)
            doc["clients"] = rows
            doc["recent"] = list(self.recent)
        return doc

    def counters(self) -> dict[str, Any]:
        """The counters both kinds of proxy keep."""
        return {
            "clients_seen": self.clients_seen,
            "ended": dict(self.ended),
            "toxics_applied": dict(self.applied),
            "toxics_fired": dict(self.fired),
            "upstream_errors": dict(self.upstream_errors),
        }

    # -- what a subclass provides -------------------------------------------

    def start(self) -> None:
        """Bind the listening socket and begin forwarding.

        Raises:
            SetupError: the address is in use (or cannot be used).
        """
        raise NotImplementedError

    def serve_forever(self, ready: Callable[[], None] | None = None) -> int:
        """Run the loop until SIGINT or SIGTERM; ``ready`` is called once the signal
        handlers are in place. Returns the exit status."""
        raise NotImplementedError

    def close(self) -> None:
        """End every client now (at exit)."""
        raise NotImplementedError

    @property
    def listen_address(self) -> str:
        """Where it listens: ``tcp://HOST:PORT`` or ``udp://HOST:PORT``."""
        raise NotImplementedError

    @property
    def upstream_address(self) -> str:
        """Where it forwards to: ``tcp://HOST:PORT`` or ``udp://HOST:PORT``."""
        raise NotImplementedError

    def statistics(self) -> dict[str, Any]:
        """Totals: clients, bytes and datagrams each way, what the toxics did."""
        raise NotImplementedError

    def rows(self, limit: int) -> list[dict[str, Any]]:
        """Rows of the clients still there, the newest ``limit``."""
        raise NotImplementedError

    def summary(self) -> str:
        """One line for the log at exit: what was done to whom, in total."""
        raise NotImplementedError

    def _toxic_added(self, toxic: Toxic) -> None:
        raise NotImplementedError

    def _toxic_updated(self, toxic: Toxic) -> None:
        raise NotImplementedError

    def _toxic_removed(self, toxic: Toxic) -> None:
        raise NotImplementedError
