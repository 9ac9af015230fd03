"""The WebSocket endpoint (``GET /`` and ``/v1``): a thin pump between aiohttp and the hub."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from tidings._refusals import refusals
from tidings.core.frames import FrameCheck
from tidings.errors import CloseCode, ErrorCode, TokenError
from tidings.hub.hub import Hub
from tidings.hub.limits import ConnectionRefused
from tidings.hub.outbound import Frame, joined_wire
from tidings.server.http import HUB, error_response

__all__ = ["AiohttpOutlet", "StrictFrames", "client_ip", "websocket_handler"]

log = logging.getLogger("tidings.websocket")

_CLOSE_GRACE_SECONDS = 1.0  # after this a peer that does not finish the close handshake is cut


class AiohttpOutlet:
    """Writes pre-framed bytes straight to the connection's transport.

    aiohttp's own ``send_str`` awaits per frame; fan-out instead writes the shared, already framed
    bytes of a batch in one ``write`` call. Compression is never negotiated (``compress=False``),
    which is what keeps pre-framing valid; should it ever be on, frames go through ``send_str``.
    """

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        writer = ws._writer  # the only private aiohttp access, kept to this class
        assert writer is not None, "prepare() must run first"
        self._transport = writer.transport
        self._protocol = writer.protocol
        self._raw = not ws.compress
        self._closing = False

    def write(self, frames: Sequence[Frame]) -> None:
        if self._closing or self._transport.is_closing():
            return
        if self._raw:
            self._transport.write(joined_wire(frames))
        else:
            loop = asyncio.get_running_loop()
            for f in frames:
                loop.create_task(self._ws.send_str(f.payload.decode()))

    def writable(self) -> bool:
        return not self._protocol._paused

    async def wait_writable(self) -> None:
        if self._protocol._paused and not self._transport.is_closing():
            await self._protocol._drain_helper()

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(
                self._ws.close(code=code, message=reason.encode()), _CLOSE_GRACE_SECONDS
            )
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        finally:
            # a graceful transport close waits for the peer to take the buffered bytes, which a
            # stuck peer never does: abort so the handler (and the hub's cleanup) can finish
            abort_transport(self._transport)


def abort_transport(transport: asyncio.Transport) -> None:
    """``transport.abort()``, unless the connection is already gone.

    asyncio 3.11 completes a graceful close from the write callback once the buffer drains
    without marking the connection lost, then drops its loop; aborting after that raised
    ``AttributeError: 'NoneType' object has no attribute 'call_soon'`` in a task nobody
    awaits. A transport whose protocol is detached has finished its close.
    """
    if transport.get_protocol() is not None:
        transport.abort()


class StrictFrames:
    """Sits in front of aiohttp's frame reader and fails the connection with 1002 on the RFC
    6455 breaches aiohttp 3.14 lets through (unmasked client frames, close codes 1006 and
    5000+; see ``core/frames.py``), the way aiohttp fails it for the breaches it catches.

    Installed by :meth:`install` right after ``prepare()``; it touches aiohttp's internals
    (the protocol's payload parser, the response's message queue, the bytes that arrived with
    the handshake), and only here.
    """

    __slots__ = ("_check", "_failed", "_inner", "_queue")

    def __init__(self, inner: Any, queue: Any) -> None:
        self._inner = inner  # aiohttp's WebSocketReader
        self._queue = queue  # aiohttp's WebSocketDataQueue, which ws.receive() reads
        self._check = FrameCheck()
        self._failed = False

    @classmethod
    def handshake_tail(cls, request: web.Request) -> bytes:
        """Frame bytes that came in the handshake's packet; read before ``prepare()``, which
        hands them to aiohttp's reader."""
        return bytes(getattr(request.protocol, "_message_tail", b"") or b"")

    @classmethod
    def install(cls, request: web.Request, ws: web.WebSocketResponse, tail: bytes) -> None:
        proto = request.protocol
        strict = cls(proto._payload_parser, ws._reader)
        proto._payload_parser = strict
        if tail:  # already parsed by aiohttp: only check them, so the boundaries stay in step
            violation = strict._check.receive_data(tail)
            if violation is not None:
                strict._fail(violation.reason)

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._failed:
            return True, b""
        violation = self._check.receive_data(data)
        if violation is None:
            result: tuple[bool, bytes] = self._inner.feed_data(data)
            return result
        if violation.offset:
            # the frames before the offending one are valid and are processed first, in order
            self._inner.feed_data(data[: violation.offset])
        self._fail(violation.reason)
        return True, b""

    def feed_eof(self) -> None:
        self._inner.feed_eof()

    def _fail(self, reason: str) -> None:
        self._failed = True
        self._queue.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, reason))


def client_ip(request: web.Request, trusted: tuple[str, ...]) -> str | None:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the nearest
    untrusted address its ``X-Forwarded-For`` names (entries further left could be forged)."""
    peer = request.remote
    if peer not in trusted:
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return peer


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    hub: Hub = request.app[HUB]
    ws = web.WebSocketResponse(
        max_msg_size=hub.settings.limits.max_frame_bytes, compress=False, autoping=True
    )
    if not ws.can_prepare(request).ok:
        return error_response(
            ErrorCode.INVALID_MESSAGE,
            "this endpoint needs a WebSocket upgrade (?token=…)",
            status=426,
        )
    if hub.draining:
        return error_response(ErrorCode.SERVICE_UNAVAILABLE, "server is shutting down", status=503)
    source_ip = client_ip(request, hub.settings.server.trusted_proxies)
    try:
        hub.admit_handshake(source_ip)
        claims = await hub.authenticate(request.query.get("token"))
        await hub.admit_connection(claims, source_ip)
    except TokenError as exc:
        refusals.refused("handshake", ErrorCode.INVALID_CONNECT_TOKEN, None, None, str(exc))
        return error_response(ErrorCode.INVALID_CONNECT_TOKEN, str(exc))
    except ConnectionRefused as exc:  # already counted and logged by the limits
        return error_response(
            exc.code, exc.message, status=exc.status, headers={"Retry-After": str(exc.retry_after)}
        )
    tail = StrictFrames.handshake_tail(request)
    try:
        await ws.prepare(request)  # a client gone by now is answered by error_middleware
    except BaseException:
        await hub.release_admission(claims.uid, source_ip)
        raise
    StrictFrames.install(request, ws, tail)
    conn = hub.open_connection(
        claims,
        AiohttpOutlet(ws),
        source_ip=source_ip,
        user_agent=request.headers.get("User-Agent"),
        admitted=True,
    )
    try:
        await hub.start_connection(conn)
        async for msg in ws:
            # ==, not is: aiohttp has been seen handing out plain ints instead of WSMsgType
            # members (under a coverage tracer), and == holds for both
            if msg.type == WSMsgType.TEXT:
                await hub.handle_frame(conn, msg.data)
            elif msg.type == WSMsgType.BINARY:
                hub.refuse_binary(conn)
            elif msg.type == WSMsgType.ERROR:
                # e.g. a frame over the size limit: close with the protocol's code (1009) before
                # the cleanup below would close with 1000
                conn.close(getattr(msg.data, "code", CloseCode.INTERNAL_ERROR), "")
                break
    except ConnectionResetError:
        # the client reset the connection while aiohttp was answering it (its automatic pong
        # to a ping): a normal abort
        log.debug("x connection %s reset by the client", conn.id)
    finally:
        # shielded: a server shutdown cancelling this handler must not skip the cleanup
        await asyncio.shield(hub.close_connection(conn))
    return ws
