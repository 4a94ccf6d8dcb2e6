"""Instructions per echo round trip on the engine, counted by callgrind (repeatable on a noisy VM).

One loop, one loopback TCP pair, the client in the same process: the client sends
64 bytes (a 60-byte message and its 4-byte header with ``--codec length``), the loop
runs once, the client reads the echo. Run it twice under callgrind with two counts;
the difference divided by the difference of counts is the cost of one round trip,
start-up excluded. ``PYTHONPATH`` picks the source tree, so two trees compare in one
sitting::

    for n in 2000 12000; do
        PYTHONPATH=src valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            python bench/round_trip_instructions.py $n [--codec length] 2>&1 | grep Collected
    done

usage: python bench/round_trip_instructions.py COUNT [--codec length|lines|packets]
"""

from __future__ import annotations

import argparse
import socket
import struct

from fivetuple import Loop
from fivetuple._transport import Transport
from fivetuple.apps import Echo, make_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("count", type=int)
    parser.add_argument("--codec", choices=["length"], default=None)
    args = parser.parse_args()
    loop = Loop("epoll")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    accepted, _ = listener.accept()
    protocol = make_app("echo", args.codec)() if args.codec else Echo()
    Transport(loop, accepted, protocol).start()
    message = struct.pack(">I", 60) + b"x" * 60 if args.codec else b"x" * 64
    for _ in range(args.count):
        client.send(message)
        loop.run_once()
        client.recv(100)


if __name__ == "__main__":
    main()
