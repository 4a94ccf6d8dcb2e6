"""Twisted echo server (Protocol + Factory + reactor.listenTCP on the epoll reactor).

usage: python twisted_echo.py [PORT]; PORT 0 (the default) picks a free port. Prints one
line "listening on tcp://127.0.0.1:PORT" when ready; SIGINT or SIGTERM stops the reactor
(Twisted installs those handlers itself) and exits with status 0.

Twisted reads up to 64 KiB per readable event. TCP_NODELAY: Twisted does not set it;
each connection sets it in connectionMade, as asyncio does by default, so that the
comparison is fair.

Twisted writes on the reactor's next turn, and a FIN means connectionLost for a
protocol that is not IHalfCloseableProtocol, so a client that sends and at once
half-closes (``printf hi | nc -q1``) may get nothing back. That is Twisted's default
and this file keeps it; ``fivetuple bench`` never half-closes while it measures.
"""

from __future__ import annotations

import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import protocol, reactor  # noqa: E402  (after the reactor install)


class Echo(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class EchoFactory(protocol.Factory):
    protocol = Echo


def main(port: int) -> None:
    listening = reactor.listenTCP(port, EchoFactory(), backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined]
    bound = listening.getHost().port

    def ready() -> None:
        print(f"listening on tcp://127.0.0.1:{bound}", flush=True)

    reactor.callWhenRunning(ready)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
