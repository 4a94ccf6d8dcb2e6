"""Shared fixtures; shared helpers are in helpers.py."""

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests import their shared helpers as a plain module.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected non-blocking socketpair, closed after the test."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Test certificates and keys (helpers.TLSFiles), made once per session."""
    from helpers import make_tls_files

    return make_tls_files(tmp_path_factory.mktemp("tls"))
