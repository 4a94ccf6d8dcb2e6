"""The applications ``fivetuple serve`` runs: echo, discard and chat.

Each entry makes a fresh protocol factory, so that two servers in one process
never share a chat room.
"""

from __future__ import annotations

from collections.abc import Callable

from .._protocol import Protocol
from .chat import ChatRoom
from .discard import Discard
from .echo import DatagramEcho, Echo, MessageEcho

ProtocolFactory = Callable[[], Protocol]

APPS: dict[str, Callable[[], ProtocolFactory]] = {
    "echo": lambda: Echo,
    "discard": lambda: Discard,
    "chat": lambda: ChatRoom().protocol,
}


#: Apps that also serve UDP (--udp): the datagram protocol they use there.
DATAGRAM_APPS = {"echo": DatagramEcho}

#: Apps that can speak whole messages through a codec (--codec).
MESSAGE_APPS = {"echo": MessageEcho}


def make_app(name: str, codec: str | None = None) -> ProtocolFactory:
    """A protocol factory for the app called ``name``, raw or over ``codec``.

    Raises:
        KeyError: no such app, or the app has no message form.
    """
    if codec is None:
        return APPS[name]()
    from .._messages import CODECS

    app, make_codec = MESSAGE_APPS[name], CODECS[codec]
    return lambda: app(make_codec())


__all__ = [
    "APPS",
    "DATAGRAM_APPS",
    "MESSAGE_APPS",
    "ChatRoom",
    "DatagramEcho",
    "Discard",
    "Echo",
    "MessageEcho",
    "make_app",
]
