"""Hub unit tests: a real Hub on the memory backends, with connections writing to a recording
Outlet instead of a socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest
from tests.conftest import make_settings, make_token

from tidings.broker.memory import MemoryBroker
from tidings.hub.connection import Connection
from tidings.hub.hub import Hub
from tidings.hub.outbound import Frame, joined_wire
from tidings.store.memory import MemoryStore


class RecordingOutlet:
    """Keeps every frame a connection writes, decoded, and the close it asked for."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.writes: list[bytes] = []  # the wire bytes of each write call
        self.closed: tuple[int, str] | None = None
        self.paused = False

    def write(self, frames: Sequence[Frame]) -> None:
        self.frames.extend(orjson.loads(f.payload) for f in frames)
        self.writes.append(joined_wire(frames))

    def writable(self) -> bool:
        return not self.paused

    async def wait_writable(self) -> None:
        while self.paused and self.closed is None:  # a stuck reader stays stuck
            await asyncio.sleep(0.005)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def take(self, event: str | None = None) -> list[dict[str, Any]]:
        """Frames written so far (of ``event`` only, when given); forgets all of them and the
        writes."""
        taken = [f for f in self.frames if event is None or f["event"] == event]
        self.frames.clear()
        self.writes.clear()
        return taken


class HubHarness:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def limit_backlog(self, max_bytes: int) -> None:
        """Connections opened from now on get this outbound byte bound."""
        settings = self.hub.settings
        self.hub.settings = replace(
            settings, limits=replace(settings.limits, queue_max_bytes=max_bytes)
        )

    async def connect(self, claims: dict[str, Any]) -> tuple[Connection, RecordingOutlet]:
        outlet = RecordingOutlet()
        conn = self.hub.open_connection(await self.hub.authenticate(make_token(claims)), outlet)
        await self.hub.start_connection(conn)
        return conn, outlet

    async def subscribed(
        self, channel: str, *claims: dict[str, Any]
    ) -> list[tuple[Connection, RecordingOutlet]]:
        """One connection per ``claims``, each subscribed to ``channel``, outlets emptied."""
        made = []
        for c in claims:
            conn, outlet = await self.connect(c)
            await self.send(conn, {"event": "hotsock.subscribe", "channel": channel})
            outlet.take()
            made.append((conn, outlet))
        return made

    async def send(self, conn: Connection, frame: dict[str, Any]) -> None:
        await self.hub.handle_frame(conn, orjson.dumps(frame))


@pytest.fixture
async def harness() -> AsyncIterator[HubHarness]:
    hub = Hub(settings=make_settings(), store=MemoryStore(), broker=MemoryBroker())
    await hub.start()
    yield HubHarness(hub)
    await hub.drain()
