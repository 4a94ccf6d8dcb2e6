"""The poller backends used directly, on socketpairs."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from fivetuple._poller import ERROR, READ, WRITE, Poller, available_backends, make_poller
from fivetuple.errors import SetupError
from helpers import BACKENDS, every_backend

#: Backends that report errors and hang-ups with no interest registered.
ERROR_REPORTING = [name for name in ("epoll", "poll") if name in BACKENDS]


@pytest.fixture
def poller(backend: str) -> Iterator[Poller]:
    """A poller of the test's backend, closed after the test."""
    poller = make_poller(backend)
    yield poller
    poller.close()


def _events(poller: Poller, timeout: float = 1.0) -> dict[int, int]:
    """One poll as {fd: mask}; each fd must appear at most once."""
    ready = poller.poll(timeout)
    fds = [fd for fd, _ in ready]
    assert len(fds) == len(set(fds)), ready
    return dict(ready)


def test_available_backends_best_first() -> None:
    names = available_backends()
    assert names[-1] == "select"
    assert len(names) == len(set(names))
    order = ["epoll", "poll", "select"]
    assert names == sorted(names, key=order.index)
    assert names == BACKENDS


def test_make_poller_default_is_best_backend() -> None:
    poller = make_poller()
    try:
        assert poller.name == available_backends()[0]
    finally:
        poller.close()


@every_backend
def test_make_poller_by_name(backend: str, poller: Poller) -> None:
    assert poller.name == backend


def test_unknown_backend_is_a_one_line_setup_error() -> None:
    with pytest.raises(SetupError) as info:
        make_poller("nope")
    message = str(info.value)
    assert "\n" not in message
    assert "'nope'" in message
    for name in available_backends():
        assert name in message


@every_backend
def test_read_readiness_when_data_arrives(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    poller.register(a.fileno(), READ)
    assert poller.poll(0) == []
    b.send(b"x")
    ready = _events(poller)
    assert set(ready) == {a.fileno()}
    assert ready[a.fileno()] & READ
    assert not ready[a.fileno()] & WRITE
    # Level-triggered: still ready until the byte is read.
    assert _events(poller, 0).get(a.fileno(), 0) & READ
    assert a.recv(10) == b"x"
    assert poller.poll(0) == []


@every_backend
def test_write_readiness(poller: Poller, pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    poller.register(a.fileno(), WRITE)
    ready = _events(poller)
    assert ready[a.fileno()] & WRITE
    assert not ready[a.fileno()] & READ


@every_backend
def test_write_readiness_stops_while_buffer_is_full(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    poller.register(a.fileno(), WRITE)
    chunk = b"\0" * 65536
    with pytest.raises(BlockingIOError):
        while True:
            a.send(chunk)
    assert poller.poll(0) == []
    while True:  # drain the peer so a has room again
        try:
            b.recv(1 << 20)
        except BlockingIOError:
            break
    assert _events(poller)[a.fileno()] & WRITE


@every_backend
def test_modify_changes_interest(poller: Poller, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    fd = a.fileno()
    b.send(b"x")  # a is both readable and writable from here on
    poller.register(fd, READ)
    assert _events(poller)[fd] & (READ | WRITE) == READ
    poller.modify(fd, WRITE)
    assert _events(poller)[fd] & (READ | WRITE) == WRITE
    poller.modify(fd, READ | WRITE)
    assert _events(poller)[fd] & (READ | WRITE) == READ | WRITE
    poller.modify(fd, 0)
    assert poller.poll(0) == []


@every_backend
def test_unregister_stops_reports(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    b.send(b"x")
    poller.register(a.fileno(), READ | WRITE)
    assert a.fileno() in _events(poller)
    poller.unregister(a.fileno())
    assert poller.poll(0) == []
    # Registered again after unregister: allowed, and reported again.
    poller.register(a.fileno(), READ)
    assert _events(poller)[a.fileno()] & READ


@every_backend
def test_registering_twice_raises(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    poller.register(a.fileno(), READ)
    with pytest.raises(FileExistsError):
        poller.register(a.fileno(), WRITE)
    # The failed second register did not change the first one's interest.
    b.send(b"x")
    assert _events(poller)[a.fileno()] & (READ | WRITE) == READ


@every_backend
def test_modify_unregistered_raises(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    with pytest.raises(FileNotFoundError):
        poller.modify(a.fileno(), READ)


@every_backend
def test_several_fds_reported_together(backend: str) -> None:
    pairs = [socket.socketpair() for _ in range(5)]
    poller = make_poller(backend)
    try:
        for a, _ in pairs:
            poller.register(a.fileno(), READ)
        for _, b in pairs[1::2]:
            b.send(b"x")
        ready = _events(poller)
        assert set(ready) == {a.fileno() for a, _ in pairs[1::2]}
    finally:
        poller.close()
        for a, b in pairs:
            a.close()
            b.close()


@every_backend
def test_poll_timeout_waits_when_nothing_is_ready(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    poller.register(a.fileno(), READ)
    start = time.monotonic()
    assert poller.poll(0.1) == []
    elapsed = time.monotonic() - start
    assert 0.095 <= elapsed < 1.0
    # Sub-millisecond timeouts are rounded up, never down to a busy zero.
    start = time.monotonic()
    assert poller.poll(0.0004) == []
    assert time.monotonic() - start >= 0.0003


@pytest.mark.parametrize("backend", ERROR_REPORTING)
def test_hangup_reported_with_no_interest(
    poller: Poller, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    poller.register(a.fileno(), 0)
    assert poller.poll(0) == []
    b.close()
    ready = _events(poller)
    assert set(ready) == {a.fileno()}
    assert ready[a.fileno()] & ERROR
    assert not ready[a.fileno()] & (READ | WRITE)


@pytest.mark.parametrize("backend", ERROR_REPORTING)
def test_error_reported_with_no_interest(backend: str) -> None:
    # A TCP connection reset by the peer: POLLERR (and HUP) with no interest set.
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=5)
    server, _ = listener.accept()
    poller = make_poller(backend)
    try:
        poller.register(client.fileno(), 0)
        assert poller.poll(0) == []
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()  # linger 0: sends RST
        ready = _events(poller)
        assert ready[client.fileno()] & ERROR
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
    finally:
        poller.close()
        client.close()
        listener.close()


def test_select_surfaces_hangup_as_readable(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    poller = make_poller("select")
    try:
        poller.register(a.fileno(), READ)
        assert poller.poll(0) == []
        b.close()
        assert _events(poller)[a.fileno()] & READ
        assert a.recv(10) == b""
    finally:
        poller.close()


def test_select_fd_ceiling_is_fd_setsize() -> None:
    poller = make_poller("select")
    try:
        assert poller.fd_ceiling == 1024
    finally:
        poller.close()


@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "select"])
def test_other_backends_have_no_fd_ceiling(poller: Poller) -> None:
    assert poller.fd_ceiling is None


@pytest.mark.parametrize("high_fd", [1024, 1500])
def test_select_refuses_fd_at_or_above_ceiling(
    high_fd: int, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    fd = os.dup2(a.fileno(), high_fd)
    poller = make_poller("select")
    try:
        assert fd == high_fd
        with pytest.raises(ValueError, match=str(high_fd)):
            poller.register(fd, READ)
        # The refused fd was not half-registered.
        with pytest.raises(FileNotFoundError):
            poller.modify(fd, READ)
        assert poller.poll(0) == []
    finally:
        poller.close()
        os.close(fd)


def test_select_accepts_fd_just_below_ceiling(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    fd = os.dup2(a.fileno(), 1023)
    poller = make_poller("select")
    try:
        poller.register(fd, READ)
        b.send(b"x")
        assert _events(poller)[fd] & READ
    finally:
        poller.close()
        os.close(fd)


@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "select"])
def test_other_backends_watch_high_fds(
    backend: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    fd = os.dup2(a.fileno(), 1500)
    poller = make_poller(backend)
    try:
        poller.register(fd, READ)
        b.send(b"x")
        assert _events(poller)[fd] & READ
    finally:
        poller.close()
        os.close(fd)


def test_epoll_close_releases_its_fd() -> None:
    if "epoll" not in BACKENDS:
        pytest.skip("no epoll here")
    before = set(os.listdir("/proc/self/fd"))
    poller = make_poller("epoll")
    during = set(os.listdir("/proc/self/fd"))
    assert len(during - before) == 1
    poller.close()
    assert set(os.listdir("/proc/self/fd")) == before
