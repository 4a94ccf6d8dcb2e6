"""A good TLS client's round trips while 1,000 others stall mid-handshake.

1,000 clients each send half a TLS ClientHello and then nothing (the cheapest way
to hold a TLS server's handshake state), while one good client, its handshake done,
echoes 1 KiB back and forth. The server is ``fivetuple serve echo --tls-cert ...``
with its default 10 s handshake deadline, pinned to CPU 0; this script runs
unpinned. Reported: the good client's round-trip times (median, p99, max) without the
stalled clients and with them, and how many of the stalled ones the server held.

Loopback only; bounded by ``--round-trips``.

usage: python bench/tls_stall.py [--stalled 1000] [--round-trips 2000] [--write FILE]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    RunningServer,
    command_line,
    latency_ms,
    serve_echo_argv,
    throwaway_cert,
    write_marked_block,
)

MESSAGE = b"x" * 1024


def half_client_hello(context: ssl.SSLContext) -> bytes:
    """The first half of a ClientHello, made without a socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    return hello[: len(hello) // 2]


def round_trips(client: ssl.SSLSocket, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        client.sendall(MESSAGE)
        got = 0
        while got < len(MESSAGE):
            data = client.recv(65536)
            if not data:
                raise ConnectionError("the server closed the good client")
            got += len(data)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stalled", type=int, default=1000)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--write", type=Path, help="record the table in this markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = throwaway_cert(Path(tmp))
        context = ssl.create_default_context(cafile=str(cert))
        hello = half_client_hello(context)
        with RunningServer(serve_echo_argv("--tls-cert", str(cert), "--tls-key", str(key))) as srv:
            raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with context.wrap_socket(raw, server_hostname="localhost") as good:
                round_trips(good, 200)  # warm up
                quiet = round_trips(good, args.round_trips)
                stalled = []
                base = srv.fd_count()
                try:
                    for _ in range(args.stalled):
                        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                        sock.sendall(hello)
                        stalled.append(sock)
                    # every stalled client accepted and in its handshake
                    held = srv.wait_fds(lambda n: n >= base + args.stalled, timeout=10) - base
                    busy = round_trips(good, args.round_trips)
                finally:
                    for sock in stalled:
                        sock.close()
    rows = [("none", quiet), (f"{args.stalled:,} stalled mid-handshake", busy)]
    lines = [
        "| other clients | good client's round trips | median ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, samples in rows:
        ms = latency_ms(samples)
        lines.append(
            f"| {name} | {len(samples):,} | {ms['p50_ms']:.3f} | {ms['p99_ms']:.3f} | {ms['max_ms']:.3f} |"
        )
    body = "\n".join(lines) + (
        f"\n\n`{command_line(__file__, sys.argv[1:])}`: server `fivetuple serve echo "
        f"--tls-cert ...` on CPU 0 (handshake deadline 10 s), holding {held:,} more "
        "descriptors while the stalled clients waited; 1 KiB echo over TLS 1.3."
    )
    print(body)
    if args.write:
        write_marked_block(
            args.write, "tls-stall", body, "### A good client among stalled handshakes"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
