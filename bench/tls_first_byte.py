"""Time to the first echoed byte: TCP, TCP + TLS 1.3 (full and resumed), TCP + TLS 1.2.

What the seeds say of TLS, made concrete: its handshake is more round trips in
front of the first byte of the application. The client here counts the round
trips it has to wait for rather than guessing them: it drives its TLS through
an ``ssl.SSLObject`` over memory BIOs on a blocking socket, and every time it
has nothing to send and must wait for the server's bytes is one round trip.
connect() is one more (SYN, SYN-ACK); the echo of the first byte is the last.

On loopback a round trip costs microseconds, so the milliseconds below are
mostly CPU (key exchange, signature, certificate checks); over a path with a
round trip time of R, each counted round trip adds R.

The server is ``fivetuple serve echo`` (with ``--tls-cert/--tls-key``), pinned
to CPU 0 when taskset exists; the client runs here. Loopback only; bounded by
``--count``.

usage: python bench/tls_first_byte.py [--count 200] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from harness import (
    RunningServer,
    command_line,
    serve_echo_argv,
    throwaway_cert,
    write_marked_block,
)

MESSAGE = b"x"
RECV_BYTES = 65536


class Counted:
    """One connection's first byte: seconds from connect() and round trips waited."""

    def __init__(self, port: int, context: ssl.SSLContext | None, session: object = None) -> None:
        start = time.perf_counter()
        self.sock = socket.create_connection(("127.0.0.1", port))  # 1 round trip: SYN, SYN-ACK
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.round_trips = 1
        self._sent = False  # something went out since the last wait: the next wait is a round trip
        self.tls: ssl.SSLObject | None = None
        if context is not None:
            self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = context.wrap_bio(
                self.incoming, self.outgoing, server_hostname="localhost", session=session
            )  # type: ignore[arg-type]
            self._handshake()
        self._send(MESSAGE)
        got = self._receive()
        self.seconds = time.perf_counter() - start
        assert got == MESSAGE, got
        self.resumed = bool(self.tls and self.tls.session_reused)

    def _handshake(self) -> None:
        assert self.tls is not None
        while True:
            try:
                self.tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                self._send_records()
                self._wait_for_server()

    def _wait_for_server(self) -> None:
        """Block for the server's bytes: a round trip if the client sent since it
        last waited, else more of the same flight (a second TCP segment)."""
        data = self.sock.recv(RECV_BYTES)
        if not data:
            raise ConnectionError("the server closed")
        self.round_trips += self._sent
        self._sent = False
        self.incoming.write(data)

    def _send_records(self) -> None:
        records = self.outgoing.read()
        if records:
            self.sock.sendall(records)
            self._sent = True

    def _send(self, data: bytes) -> None:
        if self.tls is None:
            self.sock.sendall(data)
            self._sent = True
            return
        self.tls.write(data)
        self._send_records()  # with the client's Finished, if still due

    def _receive(self) -> bytes:
        if self.tls is None:
            data = self.sock.recv(RECV_BYTES)
            self.round_trips += self._sent
            return data
        while True:
            try:
                data = self.tls.read(RECV_BYTES)
                if data:
                    return data
            except ssl.SSLWantReadError:
                pass
            self._wait_for_server()  # session tickets come first, in the same flight

    def session(self) -> object:
        return self.tls.session if self.tls is not None else None

    def close(self) -> None:
        self.sock.close()


def client_context(ca: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.minimum_version = context.maximum_version = version
    return context


def measure(
    port: int, context: ssl.SSLContext | None, count: int, resume: bool
) -> dict[str, float]:
    seconds, trips, resumed = [], [], 0
    session = None
    for _ in range(count):
        conn = Counted(port, context, session if resume else None)
        seconds.append(conn.seconds)
        trips.append(conn.round_trips)
        resumed += conn.resumed
        if resume:
            # A TLS 1.3 ticket arrives after the handshake: keep the session of a
            # connection that has read its echo.
            session = conn.session()
        conn.close()
    return {
        "ms": median(seconds) * 1000,
        "trips": median(trips),
        "resumed": resumed,
        "count": count,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="connections per row")
    parser.add_argument("--write", type=Path, help="record the table in this markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = throwaway_cert(Path(tmp))
        rows = []
        with RunningServer(serve_echo_argv("--tls-cert", str(cert), "--tls-key", str(key))) as tls:
            tls13 = client_context(cert, ssl.TLSVersion.TLSv1_3)
            tls12 = client_context(cert, ssl.TLSVersion.TLSv1_2)
            rows.append(
                ("TCP + TLS 1.3, full handshake", measure(tls.port, tls13, args.count, False))
            )
            rows.append(
                ("TCP + TLS 1.3, resumed (PSK ticket)", measure(tls.port, tls13, args.count, True))
            )
            rows.append(
                ("TCP + TLS 1.2, full handshake", measure(tls.port, tls12, args.count, False))
            )
            rows.append(
                (
                    "TCP + TLS 1.2, resumed (session ticket)",
                    measure(tls.port, tls12, args.count, True),
                )
            )
        with RunningServer(serve_echo_argv()) as plain:
            rows.insert(0, ("TCP", measure(plain.port, None, args.count, False)))
    lines = [
        "| connection | round trips to the first echoed byte | median ms on loopback | resumed |",
        "|---|---:|---:|---:|",
    ]
    for name, row in rows:
        resumed = f"{row['resumed']:.0f} of {row['count']:.0f}"
        lines.append(f"| {name} | {row['trips']:.0f} | {row['ms']:.2f} | {resumed} |")
    table = "\n".join(lines)
    body = (
        f"{table}\n\n`{command_line(__file__, sys.argv[1:])}`; server "
        "`fivetuple serve echo` on CPU 0, ECDSA P-256 certificate, the client counting "
        "the round trips it waited for (connect() is one)."
    )
    print(body)
    if args.write:
        write_marked_block(args.write, "tls-first-byte", body, "Time to the first byte, TLS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
