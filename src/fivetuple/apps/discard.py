"""discard: read everything, answer nothing (RFC 863)."""

from __future__ import annotations

from .._protocol import Protocol


class Discard(Protocol):
    """Swallow every byte. Useful to measure how fast a client can send."""

    __slots__ = ()
