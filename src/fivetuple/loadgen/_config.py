"""What a bench run was asked to do, checked once, with one-line errors."""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass

from .._address import is_rudp, is_tls
from ..errors import SetupError
from ._message import MIN_SIZE

MODES = ("echo", "hold", "connect")
#: The largest UDP payload over IPv4 (65,535 - 20 IP - 8 UDP).
MAX_DATAGRAM_BYTES = 65_507


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """One run of ``fivetuple bench``; see ``fivetuple bench --help``."""

    target: str
    mode: str = "echo"
    conns: int = 50
    size: int = 64
    pipeline: int = 1
    duration: float = 10.0
    rate: float | None = None
    #: Worker processes; None: as few as keep each under its descriptor limit (``_plan``).
    procs: int | None = None
    #: Source addresses; (): none, or as many as the ports need (TCP to 127.0.0.0/8, ``_plan``).
    source_addrs: tuple[str, ...] = ()
    connect_rate: float | None = None
    connect_timeout: float = 10.0
    reply_timeout: float = 5.0
    backend: str | None = None
    #: UDP: the share of datagrams, in percent, that may be lost before the
    #: run counts as failed (exit status 1). 0: any loss fails it.
    max_loss_pct: float = 0.0
    #: The server's processes, for its memory per connection; (): found by the target's port.
    server_pids: tuple[int, ...] = ()
    #: hold: connections picked at random that send verified echoes during the hold.
    sample: int = 0
    #: The seed of that pick; None: ``run_bench`` draws one and says it.
    seed: int | None = None
    # TLS (tls:// targets). Options, not an ssl.SSLContext: a context cannot be
    # pickled, so each worker builds its own from them (``_tls.client_context_for``).
    #: Accept any certificate for any name.
    insecure: bool = False
    #: PEM file of the CAs to trust instead of the system's.
    ca: str | None = None
    #: PEM files of a client certificate and its key (mutual TLS).
    cert: str | None = None
    key: str | None = None
    #: The name sent in SNI and checked against the certificate; None: the target's host.
    sni: str | None = None
    #: Protocols offered for ALPN, most preferred first.
    alpn: tuple[str, ...] = ()
    #: connect: offer each connection the session of the worker's last one.
    tls_resume: bool = False
    #: rudp:// echo: each connection sends this many bytes as one stream, a
    #: window ahead of its echo, and verifies the echo (goodput; None: round trips).
    bulk: int | None = None

    @property
    def udp(self) -> bool:
        """Whether the target is ``udp://`` (one connected UDP socket per "connection")."""
        return self.target.startswith("udp://")

    @property
    def rudp(self) -> bool:
        """Whether the target is ``rudp://`` (one reliable-UDP connection per connection)."""
        return is_rudp(self.target)

    @property
    def tls(self) -> bool:
        """Whether the target is ``tls://`` (TLS over TCP)."""
        return is_tls(self.target)

    def tls_flags(self) -> list[str]:
        """The TLS options given, as their flags (for the error that refuses them)."""
        given = {
            "--insecure": self.insecure,
            "--ca": self.ca is not None,
            "--cert": self.cert is not None,
            "--key": self.key is not None,
            "--sni": self.sni is not None,
            "--alpn": bool(self.alpn),
            "--tls-resume": self.tls_resume,
        }
        return [flag for flag, on in given.items() if on]

    def check(self) -> None:
        """Raises SetupError naming the first option that cannot work."""
        if self.mode not in MODES:
            raise SetupError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.conns < 1:
            raise SetupError("--conns must be at least 1")
        if self.size < MIN_SIZE:
            raise SetupError(
                f"--size must be at least {MIN_SIZE} bytes (each message carries a "
                "sequence number and a checksum)"
            )
        if self.pipeline < 1:
            raise SetupError("--pipeline must be at least 1")
        if not self.duration > 0:
            raise SetupError("--duration must be more than 0 seconds")
        if self.rate is not None and not self.rate > 0:
            raise SetupError("--rate must be more than 0 messages per second")
        if self.connect_rate is not None and not self.connect_rate > 0:
            raise SetupError("--connect-rate must be more than 0 connections per second")
        if self.procs is not None and not 1 <= self.procs <= 256:
            raise SetupError("--procs must be between 1 and 256")
        if self.procs is not None and self.procs > self.conns:
            raise SetupError(f"--procs {self.procs} is more than --conns {self.conns}")
        if self.sample < 0:
            raise SetupError("--sample must be 0 or more connections")
        if self.sample and self.mode != "hold":
            raise SetupError(
                f"--sample applies to bench hold; bench {self.mode} "
                + ("verifies every message already" if self.mode == "echo" else "sends nothing")
            )
        if self.sample > self.conns:
            raise SetupError(f"--sample {self.sample} is more than --conns {self.conns}")
        if not 0 <= self.max_loss_pct <= 100:
            raise SetupError("--max-loss must be a percentage from 0 to 100")
        flags = self.tls_flags()
        if flags and not self.tls:
            raise SetupError(
                f"{' '.join(flags)}: TLS options apply to tls:// targets, not {self.target}; "
                "use tls://HOST:PORT or leave them out"
            )
        if self.tls_resume and self.mode != "connect":
            raise SetupError(
                f"--tls-resume applies to bench connect (a new connection each time), "
                f"not bench {self.mode}, whose connections each shake hands once"
            )
        if self.bulk is not None and not self.rudp:
            raise SetupError(
                f"--bulk applies to rudp:// targets, not {self.target}: "
                "e.g. fivetuple bench echo rudp://127.0.0.1:7000 --bulk 20M"
            )
        if self.bulk is not None and self.bulk < 1:
            raise SetupError("--bulk must be at least 1 byte")
        if self.bulk is not None and self.rate is not None:
            raise SetupError(
                "--rate paces round trips; --bulk sends as fast as the connection allows: "
                "give one or the other"
            )
        if self.rudp:
            if self.mode != "echo":
                raise SetupError(
                    f"bench {self.mode} needs a tcp:// or unix:// target; for rudp:// use "
                    "bench echo (round trips, or --bulk SIZE for goodput)"
                )
            if self.source_addrs:
                raise SetupError("--source-addrs applies to tcp:// and udp:// targets")
        if self.udp:
            if self.mode != "echo":
                raise SetupError(
                    f"bench {self.mode} needs a tcp:// or unix:// target: UDP has no "
                    "connections to hold or open; use bench echo for UDP"
                )
            if self.size > MAX_DATAGRAM_BYTES:
                raise SetupError(
                    f"--size {self.size} is over {MAX_DATAGRAM_BYTES:,} bytes, the largest "
                    "UDP datagram; use a tcp:// target for larger messages"
                )


def parse_pids(values: tuple[str, ...]) -> tuple[int, ...]:
    """``--server-pid`` values (each a PID or a comma list) -> the PIDs.

    Raises:
        SetupError: not a positive number, or no such process.
    """
    pids: list[int] = []
    for value in values:
        for part in value.split(","):
            text = part.strip()
            if not text.isdigit() or int(text) < 1:
                raise SetupError(f"--server-pid {value!r}: {text!r} is not a process id")
            if not os.path.exists(f"/proc/{text}") and sys.platform == "linux":
                raise SetupError(f"--server-pid {text}: no such process")
            pids.append(int(text))
    return tuple(dict.fromkeys(pids))


def parse_source_addrs(text: str) -> tuple[str, ...]:
    """``127.0.0.2-127.0.0.254`` or ``a,b,c`` (or one address) -> the addresses.

    Raises:
        SetupError: not addresses, a range that runs backwards, or not loopback.
    """
    addresses: list[str] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            low = ipaddress.ip_address(first)
            high = ipaddress.ip_address(last) if sep else low
        except ValueError:
            raise SetupError(
                f"--source-addrs {text!r}: {part!r} is not an address or a range "
                "such as 127.0.0.2-127.0.0.254"
            ) from None
        if low.version != high.version or int(high) < int(low):
            raise SetupError(f"--source-addrs {text!r}: the range {part!r} runs backwards")
        if int(high) - int(low) >= 65536:
            raise SetupError(f"--source-addrs {text!r}: more than 65,536 addresses")
        addresses += [str(type(low)(n)) for n in range(int(low), int(high) + 1)]
    return tuple(addresses)
