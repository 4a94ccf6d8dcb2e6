"""The smallest end-to-end check: an echo server answers on every backend."""

from __future__ import annotations

from fivetuple.apps import Echo
from helpers import connect, every_backend, recv_exactly, running_server


@every_backend
def test_echo_round_trip(backend: str) -> None:
    with running_server(Echo, backend=backend) as server:
        assert server.loop.backend == backend
        with connect(server) as client:
            client.sendall(b"ping")
            assert recv_exactly(client, 4) == b"ping"
