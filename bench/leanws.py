"""A deliberately lean RFC 6455 WebSocket *client* built on ``asyncio.Protocol``.

Why not ``websockets``/``aiohttp`` clients: at 1,000 subscribers the load generator has to
receive as many frames per second as the server sends. General-purpose clients wake a coroutine
and go through a queue per message; here a frame is parsed inline in ``data_received`` and handed
to ``on_message`` (a plain method call), so the client side costs a few microseconds per frame
and stays well below the server's cost (the harness measures and reports both).

Scope: text/binary/ping/pong/close frames, no extensions (no permessage-deflate is offered, so
every server under test sends uncompressed frames), fragmented messages reassembled. Client
frames are masked as the RFC requires.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    pass


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame."""
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + _mask(payload, key)


class LeanWS(asyncio.Protocol):
    """Subclass and override :meth:`on_open` / :meth:`on_message`."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self._request = (
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
            ).encode()
            + base64.b64encode(os.urandom(16))
            + b"\r\n\r\n"
        )
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.closing = False
        self.close_code: int | None = None
        self._buf = b""
        self._frag: list[bytes] | None = None
        self._frag_op = 0
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(f"connection lost during handshake: {exc}"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.on_lost()

    def data_received(self, data: bytes) -> None:
        if not self.open:
            buf = self._buf + data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self._fail_handshake(buf[:200])
                else:
                    self._buf = buf
                return
            head, data = buf[:end], buf[end + 4 :]
            self._buf = b""
            if not head.startswith((b"HTTP/1.1 101", b"HTTP/1.0 101")):
                self._fail_handshake(head.split(b"\r\n", 1)[0] + b" " + data[:200])
                return
            self.open = True
            self.opened.set_result(None)
            self.on_open()
            if not data:
                return
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        on_message = self.on_message
        while n - pos >= 2:
            b0 = buf[pos]
            ln = buf[pos + 1] & 0x7F
            if ln < 126:
                hdr = 2
            elif ln == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            else:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            end = pos + hdr + ln
            if end > n:
                break
            payload = buf[pos + hdr : end]
            pos = end
            op = b0 & 0x0F
            if op == OP_TEXT or op == OP_BIN:
                if b0 & 0x80:
                    on_message(payload)
                else:
                    self._frag, self._frag_op = [payload], op
            elif op == OP_CONT:
                if self._frag is not None:
                    self._frag.append(payload)
                    if b0 & 0x80:
                        msg = b"".join(self._frag)
                        self._frag = None
                        on_message(msg)
            elif op == OP_PING:
                self._write(client_frame(OP_PONG, payload))
            elif op == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.closing:
                    self.closing = True
                    self._write(client_frame(OP_CLOSE, payload[:2]))
                self.open = False
                if self.transport is not None:
                    self.transport.close()
                self._buf = b""
                return
        self._buf = buf[pos:] if pos < n else b""

    # -- API -------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def _fail_handshake(self, detail: bytes) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(detail.decode("latin-1")))
        if self.transport is not None:
            self.transport.close()

    def send_text(self, payload: bytes) -> None:
        self._write(client_frame(OP_TEXT, payload))

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake (the server answers and closes TCP)."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self._write(client_frame(OP_CLOSE, code.to_bytes(2, "big")))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- hooks -----------------------------------------------------------------------------
    def on_open(self) -> None:
        pass

    def on_message(self, payload: bytes) -> None:
        pass

    def on_lost(self) -> None:
        pass


async def connect(
    factory: Callable[[], LeanWS], host: str, port: int, timeout: float = 10.0
) -> LeanWS:
    """Open TCP + WebSocket handshake; returns the protocol once the server answered 101."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(loop.create_connection(factory, host, port), timeout)
    try:
        await asyncio.wait_for(proto.opened, timeout)
    except BaseException:
        proto.abort()
        raise
    return proto
