"""Faults between tidings and a real backend: a TCP proxy that cuts a connection at a chosen
moment (after the server has received a given command, before its reply arrives)."""

from __future__ import annotations

import asyncio
import contextlib


class CuttingProxy:
    """Relays 127.0.0.1:``port`` to 127.0.0.1:``target``.

    ``cut_after(marker)``: the next client chunk holding ``marker`` is delivered to the server
    and its reply awaited (so the server has acted on it), but the reply is dropped, the
    client's connection is cut and new connections are refused until ``heal()``.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.cuts = 0  # connections cut so far
        self._marker: bytes | None = None
        self._refusing = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut_after(self, marker: bytes) -> None:
        self._marker = marker

    def heal(self) -> None:
        self._marker = None
        self._refusing = False

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        down = asyncio.ensure_future(self._pump(up_reader, writer))
        self._tasks.add(down)
        down.add_done_callback(self._tasks.discard)
        try:
            while chunk := await reader.read(65536):
                marker = self._marker
                if marker is not None and marker in chunk:
                    self._marker = None
                    self._refusing = True
                    self.cuts += 1
                    down.cancel()
                    up_writer.write(chunk)
                    await up_writer.drain()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(up_reader.read(65536), 5)  # the dropped reply
                    break
                up_writer.write(chunk)
                await up_writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()
