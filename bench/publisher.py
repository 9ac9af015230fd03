"""Publishers (run inside the orchestrator process, separate from servers and subscribers).

* ``LeanHttpPublisher`` — tidings (default): the same requests written by a minimal HTTP/1.1
  client over ``inflight`` keep-alive connections (aiohttp's client is too CPU-hungry here).
* ``HttpPublisher`` — tidings with ``--aiohttp-publisher``: ``POST /publish`` with
  ``Authorization: Bearer <key>`` over a keep-alive aiohttp session, at most ``inflight``
  requests outstanding. Both: with ``batch > 1`` the body is a JSON array of ``batch`` messages
  (one request, one 202).
* ``WsPublisher`` — websockets baseline: one WebSocket connection sending
  ``{"channel","event","data"}`` frames that the server broadcasts.
* ``EioPublisher`` — socket.io baseline: ``42["publish",{...}]`` over a raw engine.io socket.

All embed ``{"ts": time.time_ns(), "seq": n, "pad": "..."}`` (≈100 bytes of JSON) as ``data``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import leanws
import orjson
from common import API_KEY, CHANNEL, EVENT, HOST

PAD = "x" * 52  # {"ts":<19 digits>,"seq":<n>,"pad":"…"} ≈ 100 bytes
time_ns = time.time_ns


def message(seq: int) -> dict[str, Any]:
    return {"channel": CHANNEL, "event": EVENT, "data": {"ts": time_ns(), "seq": seq, "pad": PAD}}


class Publisher:
    batch = 1

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.sent = 0

    async def start(self) -> None: ...

    async def publish(self, seq: int) -> None:
        """Publish messages seq+1 … seq+batch."""
        raise NotImplementedError

    async def flush(self) -> None: ...

    async def close(self) -> None: ...


class HttpPublisher(Publisher):
    def __init__(self, port: int, inflight: int = 4, batch: int = 1) -> None:
        super().__init__()
        self.url = f"http://{HOST}:{port}/publish"
        self.inflight = inflight
        self.batch = batch
        self.status: Counter[int] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        import aiohttp

        self.sem = asyncio.Semaphore(self.inflight)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.inflight),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )

    async def publish(self, seq: int) -> None:
        await self.sem.acquire()
        if self.batch == 1:
            body = orjson.dumps(message(seq + 1))
        else:
            body = orjson.dumps([message(seq + 1 + i) for i in range(self.batch)])
        t = asyncio.create_task(self._post(body))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        self.sent += self.batch

    async def _post(self, body: bytes) -> None:
        try:
            async with self.session.post(self.url, data=body) as r:
                text = await r.read()
                self.status[r.status] += 1
                if r.status != 202:
                    self.errors[f"HTTP {r.status}: {text[:150]!r}"] += 1
        except Exception as e:
            self.errors[f"{type(e).__name__}: {e}"[:150]] += 1
        finally:
            self.sem.release()

    async def flush(self) -> None:
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=30)

    async def close(self) -> None:
        await self.flush()
        await self.session.close()


class _HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request outstanding."""

    def __init__(self, owner: LeanHttpPublisher) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.need = -1  # body bytes still expected once headers are parsed
        self.status = 0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end]
                buf = buf[end + 4 :]
                self.status = int(head[9:12])
                low = head.lower()
                i = low.find(b"content-length:")
                if i < 0:
                    self.need = 0
                else:
                    j = low.find(b"\r\n", i)
                    self.need = int(low[i + 15 : j if j > 0 else len(low)])
            if len(buf) < self.need:
                break
            body, buf = buf[: self.need], buf[self.need :]
            self.need = -1
            self.owner._done(self, self.status, body)
        self.buf = buf

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.owner._lost(self, exc)


class LeanHttpPublisher(Publisher):
    """``POST /publish`` over ``inflight`` keep-alive connections speaking minimal HTTP/1.1.

    aiohttp's client costs ~150–200 µs of CPU per request; the publisher shares the load-
    generator CPU with the subscribers, so at thousands of publishes per second it would become
    the bottleneck. This writes the request bytes directly and parses only the status line and
    Content-Length (≈ 15 µs per request).
    """

    def __init__(self, port: int, inflight: int = 4, batch: int = 1) -> None:
        super().__init__()
        self.port, self.inflight, self.batch = port, inflight, batch
        self.status: Counter[int] = Counter()
        self.head = (
            f"POST /publish HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.idle: asyncio.Queue[_HttpConn] = asyncio.Queue()
        self.conns: list[_HttpConn] = []
        self.outstanding = 0
        self.all_idle = asyncio.Event()
        self.all_idle.set()
        for _ in range(self.inflight):
            _, proto = await loop.create_connection(lambda: _HttpConn(self), HOST, self.port)
            self.conns.append(proto)
            self.idle.put_nowait(proto)

    async def publish(self, seq: int) -> None:
        conn = await self.idle.get()
        if conn.lost:
            self.errors["publish connection lost"] += 1
            raise ConnectionError("publish connection lost")
        if self.batch == 1:
            body = orjson.dumps(message(seq + 1))
        else:
            body = orjson.dumps([message(seq + 1 + i) for i in range(self.batch)])
        assert conn.transport is not None
        conn.transport.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.outstanding += 1
        self.all_idle.clear()
        self.sent += self.batch

    def _done(self, conn: _HttpConn, status: int, body: bytes) -> None:
        self.status[status] += 1
        if status != 202:
            self.errors[f"HTTP {status}: {body[:150]!r}"] += 1
        self.outstanding -= 1
        if self.outstanding == 0:
            self.all_idle.set()
        self.idle.put_nowait(conn)

    def _lost(self, conn: _HttpConn, exc: Exception | None) -> None:
        if not getattr(self, "closing", False):
            self.errors[f"publish connection lost: {exc}"] += 1
            self.idle.put_nowait(conn)  # wakes a waiter, which then raises

    async def flush(self) -> None:
        try:
            await asyncio.wait_for(self.all_idle.wait(), 30)
        except TimeoutError:
            self.errors["flush timed out"] += 1

    async def close(self) -> None:
        await self.flush()
        self.closing = True
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()


class _PubConn(leanws.LeanWS):
    def __init__(self, port: int, path: str, eio: bool) -> None:
        super().__init__(HOST, port, path)
        self.eio = eio
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.frames: Counter[str] = Counter()

    def on_message(self, p: bytes) -> None:
        if self.eio:
            if p == b"2":
                self.send_text(b"3")
            elif p[:1] == b"0" and not self.ready.done():
                self.send_text(b"40")
            elif p.startswith(b"40") and not self.ready.done():
                self.ready.set_result(None)
            else:
                self.frames[p[:80].decode("utf-8", "replace")] += 1
        elif not self.ready.done():
            self.ready.set_result(None)
        else:
            self.frames[p[:80].decode("utf-8", "replace")] += 1


class WsPublisher(Publisher):
    def __init__(self, port: int, path: str, eio: bool = False, batch: int = 1) -> None:
        super().__init__()
        self.port, self.path, self.eio, self.batch = port, path, eio, batch

    async def start(self) -> None:
        proto = await leanws.connect(
            lambda: _PubConn(self.port, self.path, self.eio), HOST, self.port
        )
        assert isinstance(proto, _PubConn)
        self.conn = proto
        await asyncio.wait_for(proto.ready, 10)

    async def publish(self, seq: int) -> None:
        if not self.conn.open:
            self.errors["publisher connection closed"] += 1
            raise ConnectionError("publisher connection closed")
        for i in range(self.batch):
            body = orjson.dumps(message(seq + 1 + i))
            if self.eio:
                body = b'42["publish",' + body + b"]"
            self.conn.send_text(body)
        self.sent += self.batch

    async def close(self) -> None:
        if self.conn.frames:
            for k, v in self.conn.frames.items():
                self.errors[f"unexpected frame to publisher: {k}"] += v
        self.conn.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.conn.lost), 3)
        except TimeoutError:
            self.conn.abort()
