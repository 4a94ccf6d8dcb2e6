"""A reliable-UDP echo server: every message a client sends comes back to it.

Run it, then the client in another terminal:

    python examples/reliable_echo_server.py --port 7000
    python examples/reliable_client.py 127.0.0.1 7000 hello world

It prints one line when it is ready and one per connection opened or ended.
Ctrl-C or SIGTERM stops it, and each client still connected is told (it ends
with ``peer-closed``). Exit status: 0, or 2 when the address cannot be bound.
"""

from __future__ import annotations

import argparse
import signal
import sys

from fivetuple import Loop, SetupError, serve_reliable
from fivetuple.reliable import Connected, ConnectionTerminated, Event, MessageReceived


def main() -> int:
    parser = argparse.ArgumentParser(description="A reliable-UDP echo server.")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    parser.add_argument("--port", type=int, default=7000, help="the UDP port (0: any free one)")
    args = parser.parse_args()
    loop = Loop()

    def on_event(event: Event) -> None:
        # Every event carries its connection's id (cid): the server answers by it.
        if isinstance(event, Connected):
            host, port = server.connection(event.cid).peer_addr
            print(f"{event.cid:016x} connected from {host} port {port}", flush=True)
        elif isinstance(event, MessageReceived):
            server.send(event.cid, event.message)  # leaves when this callback returns
        elif isinstance(event, ConnectionTerminated):
            print(f"{event.cid:016x} ended: {event.reason}", flush=True)

    try:
        server = serve_reliable(loop, args.host, args.port, on_event=on_event)
    except SetupError as exc:  # address in use, permission denied, unknown host
        print(f"reliable_echo_server: {exc}", file=sys.stderr)
        loop.close()
        return 2
    host, port = server.address
    print(f"listening on {host} port {port} (reliable UDP)", flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, loop.stop)
    loop.run()  # until a signal
    server.close()  # each client still connected is sent a CLOSE
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
