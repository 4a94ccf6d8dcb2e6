"""Shared by the admin tests: what the kernel shows (``ss``), and a fleet of
single-process servers with worker admin sockets behind one gathering endpoint.

Not a test module: the admin test files import it (a test module must not
import another: tests/test_house.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from fivetuple import Loop, Server
from fivetuple.admin import Observed, start_gathering_admin, start_worker_admin
from fivetuple.apps import make_app
from helpers import on_loop, running_server


@contextmanager
def worker_servers(directory: Path, n: int) -> Iterator[dict[str, tuple[Server, str]]]:
    """``n`` echo servers (each its own loop in a thread), each with its admin
    endpoint on a Unix socket in ``directory``: label -> (server, socket path)."""
    with ExitStack() as stack:
        fleet: dict[str, tuple[Server, str]] = {}
        for index in range(n):
            server = stack.enter_context(running_server(make_app("echo")))
            path = str(directory / f"worker{index}.sock")
            on_loop(server, lambda s=server, p=path: start_worker_admin(Observed(s, "echo"), p))
            fleet[str(index)] = (server, path)
        yield fleet


@contextmanager
def gathering(workers: Callable[[], Mapping[str, str]], **options: float) -> Iterator[str]:
    """A gathering endpoint over ``workers`` on a loop of its own (a supervisor's
    stand-in) in a thread: its address, ``127.0.0.1:PORT``. ``options`` are
    start_gathering_admin's (a short ``worker_timeout`` or ``history_interval``
    keeps a test from waiting out real seconds)."""
    loop = Loop()
    admin = start_gathering_admin(loop, workers, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=loop.run, name="fivetuple-gatherer", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{admin.port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        assert not thread.is_alive(), "the gathering loop did not stop"
        loop.close()
