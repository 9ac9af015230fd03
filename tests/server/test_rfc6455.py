"""RFC 6455 conformance through a raw-socket client of our own: masking, close codes,
fragmentation, control frames and UTF-8, each checked on the bytes the server sends back.

aiohttp's reader does most of this; ``server/websocket.py``'s ``StrictFrames`` adds what it
lets through (unmasked client frames, close codes 1006 and 5000+).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator

import orjson
import pytest
from tests.conftest import MS, Server, make_token
from tests.core.test_frames import close, frame

TIMEOUT = 3000 * MS


class RawClient:
    """A WebSocket client that sends exactly the bytes it is given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: Server, *, early: bytes = b"") -> RawClient:
        """Open the handshake (``early`` bytes go in the same write as the request) and read
        the 101 and the ``hotsock.connected`` frame."""
        reader, writer = await asyncio.open_connection("127.0.0.1", server.node.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /?token={make_token()} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            + early
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101"), head
        client = cls(reader, writer)
        if not early:
            opcode, payload = await client.read_frame()
            assert opcode == 0x1 and orjson.loads(payload)["event"] == "hotsock.connected"
        return client

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_frame(self) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(2), TIMEOUT)
        assert not head[1] & 0x80, "server frames must not be masked"
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return head[0] & 0x0F, await self.reader.readexactly(length)

    async def read_until(self, opcode: int) -> bytes:
        """Skip other frames (keep-alives, errors) up to the first with ``opcode``."""
        while True:
            got, payload = await self.read_frame()
            if got == opcode:
                return payload

    async def close_code(self) -> int:
        """The code of the server's close frame; the server then ends the TCP connection."""
        payload = await self.read_until(0x8)
        rest = await asyncio.wait_for(self.reader.read(), TIMEOUT)
        assert rest == b""
        return int.from_bytes(payload[:2], "big")

    def abort(self) -> None:
        self.writer.transport.abort()


@pytest.fixture
async def raw(server: Server) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(server)
    yield client
    client.abort()


PING = orjson.dumps({"event": "hotsock.ping"})


async def _still_serves(server: Server) -> None:
    client = await server.connect()
    await client.send({"event": "hotsock.ping"})
    await client.expect("hotsock.pong")


# Masking (§5.1)


async def test_rfc6455_unmasked_text_frame_fails_with_1002(raw: RawClient, server: Server) -> None:
    """The server must not process an unmasked frame: no pong, close 1002."""
    raw.send(frame(0x1, PING, masked=False))
    assert await raw.close_code() == 1002
    await _still_serves(server)


async def test_rfc6455_unmasked_frame_after_a_valid_one(raw: RawClient) -> None:
    """Frames before the unmasked one in the same packet are processed, then 1002."""
    raw.send(frame(0x1, PING) + frame(0x1, PING, masked=False))
    pong = await raw.read_until(0x1)
    assert orjson.loads(pong)["event"] == "hotsock.pong"
    assert await raw.close_code() == 1002


@pytest.mark.parametrize("opcode", [0x8, 0x9])
async def test_rfc6455_unmasked_control_frame_fails_with_1002(raw: RawClient, opcode: int) -> None:
    raw.send(frame(opcode, b"\x03\xe8", masked=False))
    assert await raw.close_code() == 1002


async def test_rfc6455_unmasked_frame_sent_with_the_handshake(server: Server) -> None:
    """An unmasked frame in the handshake's own packet is caught too."""
    client = await RawClient.connect(server, early=frame(0x1, PING, masked=False))
    try:
        assert await client.close_code() == 1002
    finally:
        client.abort()


# Close codes (§7.4; Autobahn 7.7.x, 7.9.x, 7.13.x)


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 3000, 4999])
async def test_rfc6455_close_with_a_valid_code_is_answered(raw: RawClient, code: int) -> None:
    """A close with a code a peer may send completes the handshake (the code is echoed or
    answered with 1000)."""
    raw.send(close(code, b"bye"))
    assert await raw.close_code() in (code, 1000)


async def test_rfc6455_close_without_a_code_is_answered_1000(raw: RawClient) -> None:
    raw.send(frame(0x8))
    assert await raw.close_code() in (1000, 1005)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
async def test_rfc6455_close_with_a_forbidden_code_fails_with_1002(
    raw: RawClient, code: int
) -> None:
    raw.send(close(code))
    assert await raw.close_code() == 1002


async def test_rfc6455_close_with_a_one_byte_payload_fails_with_1002(raw: RawClient) -> None:
    raw.send(frame(0x8, b"\x03"))
    assert await raw.close_code() == 1002


async def test_rfc6455_close_reason_must_be_utf8(raw: RawClient) -> None:
    raw.send(close(1000, b"\xff\xfe"))
    assert await raw.close_code() in (1002, 1007)


# Fragmentation (§5.4)


async def test_rfc6455_fragmented_text_is_reassembled(raw: RawClient) -> None:
    """A message in three fragments, with a ping between them, is one command."""
    raw.send(frame(0x1, PING[:5], fin=False) + frame(0x0, PING[5:9], fin=False))
    raw.send(frame(0x9, b"mid") + frame(0x0, PING[9:]))
    assert await raw.read_until(0xA) == b"mid"
    assert orjson.loads(await raw.read_until(0x1))["event"] == "hotsock.pong"


async def test_rfc6455_continuation_without_a_start_fails_with_1002(raw: RawClient) -> None:
    raw.send(frame(0x0, PING))
    assert await raw.close_code() == 1002


async def test_rfc6455_new_message_inside_a_fragmented_one_fails_with_1002(
    raw: RawClient,
) -> None:
    raw.send(frame(0x1, b"{", fin=False) + frame(0x1, PING))
    assert await raw.close_code() == 1002


# Control frames (§5.5) and reserved bits and opcodes (§5.2)


async def test_rfc6455_ping_is_answered_with_the_same_payload(raw: RawClient) -> None:
    raw.send(frame(0x9, b"payload \x00\xff"))
    assert await raw.read_until(0xA) == b"payload \x00\xff"


async def test_rfc6455_unsolicited_pong_is_ignored(raw: RawClient) -> None:
    raw.send(frame(0xA, b"x") + frame(0x1, PING))
    assert orjson.loads(await raw.read_until(0x1))["event"] == "hotsock.pong"


async def test_rfc6455_control_frame_over_125_bytes_fails_with_1002(raw: RawClient) -> None:
    raw.send(frame(0x9, bytes(126)))
    assert await raw.close_code() == 1002


async def test_rfc6455_fragmented_control_frame_fails_with_1002(raw: RawClient) -> None:
    raw.send(frame(0x9, b"a", fin=False))
    assert await raw.close_code() == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
async def test_rfc6455_reserved_opcode_fails_with_1002(raw: RawClient, opcode: int) -> None:
    raw.send(frame(opcode, b"x"))
    assert await raw.close_code() == 1002


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10])
async def test_rfc6455_reserved_bits_fail_with_1002(raw: RawClient, rsv: int) -> None:
    data = bytearray(frame(0x1, PING))
    data[0] |= rsv
    raw.send(bytes(data))
    assert await raw.close_code() == 1002


# UTF-8 (§8.1)


@pytest.mark.parametrize(
    "payload", [b"\xff", b'{"event":"\xc0\xaf"}', b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]
)
async def test_rfc6455_invalid_utf8_text_fails_with_1007(raw: RawClient, payload: bytes) -> None:
    raw.send(frame(0x1, payload))
    assert await raw.close_code() == 1007


async def test_rfc6455_utf8_split_across_fragments_is_accepted(raw: RawClient) -> None:
    text = orjson.dumps({"event": "hotsock.ping", "data": {"x": "😀"}})
    cut = text.index("😀".encode()) + 2
    raw.send(frame(0x1, text[:cut], fin=False) + frame(0x0, text[cut:]))
    assert orjson.loads(await raw.read_until(0x1))["event"] == "hotsock.pong"


async def test_rfc6455_client_abort_during_the_automatic_pong_is_no_error(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that pings and resets the connection at once: aiohttp's automatic pong meets a
    closing transport, which is an expected abort (a debug line), not an ERROR."""
    import socket
    import struct

    for _ in range(20):
        client = await RawClient.connect(server)
        sock = client.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.send(frame(0x9, b"x" * 100) * 50)
        client.abort()  # RST
    await asyncio.sleep(200 * MS)
    await _still_serves(server)
    errors = [r for r in caplog.records if r.levelno >= 40 or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]
