"""Outbound frames and the ``Outlet`` a connection writes to.

A message is JSON-encoded once and WebSocket-framed once (``Frame.wire``), then the same bytes go
to every subscriber. Pre-framed bytes are only valid without per-connection compression, so the
WebSocket adapter decides per connection whether to write ``wire`` or hand ``payload`` to the
library (``ws_text_frame`` is the one function that frames).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Protocol

__all__ = ["Batch", "Frame", "Outlet", "joined_wire", "ws_text_frame"]


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, final, uncompressed RFC 6455 text frame (server → client)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class Frame:
    """One server → client text frame, shared by every connection that receives it."""

    __slots__ = ("_wire", "exclude", "payload")

    def __init__(self, payload: bytes, exclude: str | None = None) -> None:
        self.payload = payload  # compact JSON text
        self.exclude = exclude  # connection ID that must not receive it
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = ws_text_frame(self.payload)
        return self._wire

    def __len__(self) -> int:
        return len(self.payload)


class Batch(list[Frame]):
    """Frames that go to many connections together: their wire bytes are joined once, not once
    per connection."""

    __slots__ = ("_wire",)

    _wire: bytes

    @property
    def wire(self) -> bytes:
        try:
            return self._wire
        except AttributeError:
            self._wire = b"".join([f.wire for f in self])
            return self._wire


def joined_wire(frames: Sequence[Frame]) -> bytes:
    """The wire bytes of ``frames`` in order, as one write."""
    if len(frames) == 1:
        return frames[0].wire
    if isinstance(frames, Batch):
        return frames.wire
    return b"".join([f.wire for f in frames])


class Outlet(Protocol):
    """Where a connection's frames go: the WebSocket adapter, or a recording fake in tests."""

    def write(self, frames: Sequence[Frame]) -> None:
        """Send ``frames`` in order without blocking (buffered by the transport)."""
        ...

    def writable(self) -> bool:
        """False while the transport asks writers to pause (its buffer is over high water)."""
        ...

    async def wait_writable(self) -> None:
        """Return once ``writable()`` is true again, or the connection is gone."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Start closing with ``code`` without blocking; a stuck peer is cut off shortly."""
        ...
