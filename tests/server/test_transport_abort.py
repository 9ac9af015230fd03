"""Aborting a transport whose graceful close already finished (issue 13, defect 6).

asyncio 3.11's selector transport, closed while bytes are still buffered, completes the close
from its write callback once the peer takes those bytes, without marking the connection lost;
a later ``abort()`` then calls ``call_soon`` on the loop it has already dropped. The outlet's
close path closes gracefully first and aborts after, so it meets exactly this state when an
evicted slow reader drains its buffer but never answers the close handshake.
"""

from __future__ import annotations

import asyncio
import socket

from tidings.server.websocket import abort_transport


async def test_abort_after_a_graceful_close_drained_is_a_no_op() -> None:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.Transport] = loop.create_future()
    lost = asyncio.Event()

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            accepted.set_result(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            lost.set()

    server = await loop.create_server(Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    peer = socket.create_connection(("127.0.0.1", port))
    peer.setblocking(False)
    try:
        transport = await accepted
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.write(b"x" * (4 << 20))  # far more than the kernel takes at once
        assert transport.get_write_buffer_size() > 0
        transport.close()  # graceful: waits for the buffered bytes to leave
        while not lost.is_set():  # the peer now reads everything, so the close completes
            try:
                while peer.recv(1 << 16):
                    pass
            except BlockingIOError:
                pass
            await asyncio.sleep(0.001)
        abort_transport(transport)  # raised AttributeError on the bare transport.abort()
        abort_transport(transport)
    finally:
        peer.close()
        server.close()
        await server.wait_closed()


async def test_abort_of_a_live_transport_cuts_it() -> None:
    loop = asyncio.get_running_loop()
    lost = asyncio.Event()
    accepted: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            accepted.set_result(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            lost.set()

    server = await loop.create_server(Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        abort_transport(await accepted)
        await asyncio.wait_for(lost.wait(), 5)
        assert await reader.read() == b""
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
