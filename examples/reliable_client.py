"""A reliable-UDP client: sends lines, prints their echoes, then closes cleanly.

    python examples/reliable_client.py 127.0.0.1 7000 hello world   # the arguments
    printf 'one\\ntwo\\n' | python examples/reliable_client.py 127.0.0.1 7000
    python examples/reliable_client.py 127.0.0.1 7000               # type; Ctrl-D ends

Each line is one reliable message (in order, exactly once) and each echo is
printed as it comes back. Once the input is over and every echo is back, the
client closes the connection: the server is told, and the client exits 0. It
exits 1 if the connection ended any other way (no server there ends with
``handshake-timeout`` after ``--handshake-timeout`` seconds), 2 on a bad
address. Ctrl-C aborts: the server is told at once, and nothing more is awaited.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable

from fivetuple import Loop, SetupError, connect_reliable
from fivetuple.reliable import (
    ConnectionConfig,
    ConnectionTerminated,
    Event,
    MessageReceived,
)


def read_lines(loop: Loop, on_line: Callable[[bytes], None], on_end: Callable[[], None]) -> None:
    """Hand each line of stdin to ``on_line`` on the loop, then call ``on_end`` there.

    Reading a terminal, a pipe or a file alike takes a blocking read, so it is
    done in a thread, which gives each line to the loop's own thread with
    ``call_soon_threadsafe``: the connection is only ever touched by the loop.
    It reads the descriptor with ``os.read``, not ``sys.stdin``: a daemon thread
    blocked inside ``sys.stdin``'s buffer would abort the interpreter at exit.
    """

    def run() -> None:
        pending = b""
        while chunk := os.read(0, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                loop.call_soon_threadsafe(on_line, line.removesuffix(b"\r"))
        if pending:
            loop.call_soon_threadsafe(on_line, pending)
        loop.call_soon_threadsafe(on_end)

    threading.Thread(target=run, name="stdin", daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser(description="Send lines over reliable UDP; print the echoes.")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("lines", nargs="*", help="the lines to send (default: read stdin)")
    parser.add_argument("--handshake-timeout", type=float, default=10.0, metavar="S")
    args = parser.parse_args()
    loop = Loop()
    sent = echoed = 0
    input_over = False

    def close_when_done() -> None:
        if input_over and echoed == sent:
            client.close()  # graceful: the server is told; closing twice does nothing

    def on_line(line: bytes) -> None:
        nonlocal sent
        if client.ended is None and not input_over:
            client.send(line)  # queued; leaves at the end of this loop iteration
            sent += 1

    def on_input_end() -> None:
        nonlocal input_over
        input_over = True
        close_when_done()

    def on_event(event: Event) -> None:
        nonlocal echoed
        if isinstance(event, MessageReceived):
            print(event.message.decode(errors="replace"), flush=True)
            echoed += 1
            close_when_done()
        elif isinstance(event, ConnectionTerminated) and event.reason != "closed":
            detail = f" ({event.detail})" if event.detail else ""
            print(f"reliable_client: connection ended: {event.reason}{detail}", file=sys.stderr)

    config = ConnectionConfig(handshake_timeout_s=args.handshake_timeout)
    try:
        client = connect_reliable(loop, args.host, args.port, on_event=on_event, config=config)
    except SetupError as exc:
        print(f"reliable_client: {exc}", file=sys.stderr)
        loop.close()
        return 2
    if args.lines:
        for line in args.lines:
            on_line(line.encode())
        on_input_end()
    else:
        read_lines(loop, on_line, on_input_end)
    loop.add_signal_handler(signal.SIGINT, client.abort, "interrupted")
    end = client.wait_closed()  # runs the loop until the connection is over
    loop.close()
    return 0 if end is not None and end.reason == "closed" else 1


if __name__ == "__main__":
    sys.exit(main())
