"""The RFC 6455 rules a server's frame reader must enforce and aiohttp's does not (aiohttp 3.14):

* every client frame is masked (§5.1: "a server MUST close the connection upon receiving a
  frame that is not masked");
* a close frame carries only a code an endpoint may send (§7.4): 1000–1003, 1007–1014 and
  3000–4999. aiohttp lets 1006 (which must never be sent) and codes of 5000 and up through.

:class:`FrameCheck` follows frame boundaries in the client's byte stream, reading only frame
headers (and the first two payload bytes of close frames), so it costs a few operations per
frame whatever the payload size. Everything else (lengths, RSV bits, opcodes, fragmentation,
control frame sizes, UTF-8) is left to aiohttp, which does check it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FrameCheck", "FrameViolation", "close_code_ok"]

_OP_CLOSE = 0x8


def close_code_ok(code: int) -> bool:
    """Whether an endpoint may send ``code`` in a close frame (RFC 6455 §7.4, IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


@dataclass(frozen=True, slots=True)
class FrameViolation:
    """A frame the server must fail the connection for, with close code 1002.

    Attributes:
        offset: where the offending frame starts in the chunk that completed its check (0 when
            it started in an earlier chunk); bytes before it belong to valid frames.
        reason: a short explanation, safe to send as the close reason.
    """

    offset: int
    reason: str


class FrameCheck:
    """Feed it every byte a client sends after the handshake, in order.

    ``receive_data(chunk)`` returns None while the stream obeys the rules above, or the first
    :class:`FrameViolation`; after a violation the connection must be failed and the checker
    not fed again.
    """

    __slots__ = ("_close", "_head", "_mask", "_skip", "_start")

    def __init__(self) -> None:
        self._head = bytearray()  # the current frame's header bytes, while incomplete
        self._skip = 0  # payload bytes of the current frame still to pass over
        self._close: bytearray | None = None  # a close frame's first payload bytes, unmasked
        self._mask = b""  # the current close frame's masking key
        self._start = 0  # offset of the current frame in the current chunk

    # Public methods

    def receive_data(self, data: bytes) -> FrameViolation | None:
        pos = 0
        end = len(data)
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                if self._close is not None and len(self._close) < 2:
                    for byte in data[pos : pos + min(take, 2 - len(self._close))]:
                        self._close.append(byte ^ self._mask[len(self._close)])
                pos += take
                self._skip -= take
                if self._skip == 0 and (violation := self._end_close()) is not None:
                    return violation
                continue
            if not self._head:
                self._start = pos
                # fast path: a whole header in this chunk, not a close frame (the common case)
                if end - pos >= 14 and data[pos] & 0x0F != _OP_CLOSE:
                    second = data[pos + 1]
                    if not second & 0x80:
                        return FrameViolation(pos, "client frames must be masked")
                    length = second & 0x7F
                    if length == 126:
                        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                        pos += 8
                    elif length == 127:
                        length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                        pos += 14
                    else:
                        pos += 6
                    if length > end - pos:
                        self._skip = length - (end - pos)
                        break
                    pos += length
                    continue
            need = self._header_size()
            take = min(need - len(self._head), end - pos)
            self._head += data[pos : pos + take]
            pos += take
            if len(self._head) < self._header_size():
                continue
            violation = self._end_header()
            if violation is not None:
                return violation
        self._start = 0
        return None

    # Private methods

    def _header_size(self) -> int:
        head = self._head
        if len(head) < 2:
            return 2
        length = head[1] & 0x7F
        extra = 2 if length == 126 else 8 if length == 127 else 0
        return 2 + extra + (4 if head[1] & 0x80 else 0)

    def _end_header(self) -> FrameViolation | None:
        head = self._head
        self._head = bytearray()
        if not head[1] & 0x80:
            return FrameViolation(self._start, "client frames must be masked")
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(head[2:4], "big")
        elif length == 127:
            length = int.from_bytes(head[2:10], "big")
        self._skip = length
        if head[0] & 0x0F == _OP_CLOSE:
            self._close = bytearray()
            self._mask = bytes(head[-4:])
            if length == 0:
                return self._end_close()
        return None

    def _end_close(self) -> FrameViolation | None:
        payload = self._close
        self._close = None
        if payload is None or len(payload) < 2:
            return None  # no code (allowed), or a 1-byte payload aiohttp refuses itself
        code = int.from_bytes(payload, "big")
        if close_code_ok(code):
            return None
        return FrameViolation(self._start, f"close code {code} is not allowed")
