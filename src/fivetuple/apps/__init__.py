"""The applications ``fivetuple serve`` runs: echo, discard and chat.

Each entry makes a fresh protocol factory, so that two servers in one process
never share a chat room.
"""

from __future__ import annotations

from collections.abc import Callable

from .._protocol import Protocol
from .chat import ChatRoom
from .discard import Discard
from .echo import Echo

ProtocolFactory = Callable[[], Protocol]

APPS: dict[str, Callable[[], ProtocolFactory]] = {
    "echo": lambda: Echo,
    "discard": lambda: Discard,
    "chat": lambda: ChatRoom().protocol,
}


def make_app(name: str) -> ProtocolFactory:
    """A protocol factory for the app called ``name``.

    Raises:
        KeyError: no such app.
    """
    return APPS[name]()


__all__ = ["APPS", "ChatRoom", "Discard", "Echo", "make_app"]
