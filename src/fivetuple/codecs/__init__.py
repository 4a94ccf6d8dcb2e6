"""Sans-IO framing codecs: bytes in, messages out; messages in, bytes out.

TCP is a byte stream: one recv() can hold half a message or three. A codec
turns the stream back into messages. It never touches a socket or a clock,
so the same code serves TCP and, later, UDP.
"""

from __future__ import annotations

from ._base import NEED_DATA, CodecStats
from ._length import LengthPrefixed
from ._lines import Lines
from ._packets import Packets

__all__ = ["NEED_DATA", "CodecStats", "LengthPrefixed", "Lines", "Packets"]
