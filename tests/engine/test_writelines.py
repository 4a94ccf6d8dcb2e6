"""``Transport.writelines``: one writev(2) for many chunks, no join, and every guarantee
of ``write`` (order, a full kernel buffer, more chunks than IOV_MAX, after close).

Real sockets (socketpair) on every backend.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

import fivetuple._transport as transport_module
from fivetuple import ClosedResourceError, Loop, Protocol, Transport
from helpers import BACKENDS

TIMEOUT_S = 5.0


@pytest.fixture(params=BACKENDS)
def loop(request: pytest.FixtureRequest) -> Iterator[Loop]:
    loop = Loop(request.param)
    yield loop
    loop.close()


@pytest.fixture
def wired(loop: Loop) -> Iterator[tuple[Transport, socket.socket]]:
    """A transport on one end of a socketpair, and the blocking other end."""
    ours, theirs = socket.socketpair()
    theirs.settimeout(TIMEOUT_S)
    transport = Transport(loop, ours, Protocol())
    transport.start()
    yield transport, theirs
    transport.abort()
    loop.run_once(0)
    theirs.close()


def read_exactly(sock: socket.socket, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = sock.recv(size - len(got))
        assert chunk, f"EOF after {len(got)} of {size} bytes"
        got += chunk
    return bytes(got)


def test_chunks_go_out_in_one_system_call_in_order(
    wired: tuple[Transport, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    transport, peer = wired
    calls: list[int] = []

    def counting_writev(fd: int, buffers: Any) -> int:
        calls.append(len(buffers))
        return os.writev(fd, buffers)

    monkeypatch.setattr(transport_module, "_os_writev", counting_writev)
    transport.writelines([b"one ", bytearray(b"two "), memoryview(b"three")])
    assert calls == [3]
    assert read_exactly(peer, 13) == b"one two three"
    assert transport.get_write_buffer_size() == 0


def test_more_chunks_than_iov_max_are_sent_in_groups(
    wired: tuple[Transport, socket.socket], loop: Loop
) -> None:
    transport, peer = wired
    count = transport_module._IOV_MAX * 2 + 7
    chunks = [b"%06d" % n for n in range(count)]
    transport.writelines(chunks)
    assert read_exactly(peer, 6 * count) == b"".join(chunks)


def test_what_a_full_kernel_buffer_refuses_is_queued_and_delivered_in_order(
    wired: tuple[Transport, socket.socket], loop: Loop
) -> None:
    transport, peer = wired
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    big = bytes(range(256)) * 4096  # 1 MiB: more than the kernel holds
    chunks = [big[i : i + 65536] for i in range(0, len(big), 65536)] + [b"tail"]
    transport.writelines(chunks)
    assert transport.get_write_buffer_size() > 0, "the kernel took 1 MiB at once?"
    transport.writelines([b"-after"])  # queued behind, never ahead
    got = bytearray()
    want = len(big) + len(b"tail-after")
    while len(got) < want:
        loop.run_once(0.01)
        try:
            peer.setblocking(False)
            got += peer.recv(1 << 20)
        except BlockingIOError:
            pass
    assert bytes(got) == big + b"tail-after"


def test_writelines_after_close_raises_like_write(
    wired: tuple[Transport, socket.socket],
) -> None:
    transport, _ = wired
    transport.close()
    with pytest.raises(ClosedResourceError):
        transport.writelines([b"late"])


def test_an_empty_list_sends_nothing(wired: tuple[Transport, socket.socket]) -> None:
    transport, peer = wired
    transport.writelines([])
    transport.writelines([b"", b"x"])
    assert read_exactly(peer, 1) == b"x"
