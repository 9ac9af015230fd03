"""Small pieces every hub module uses: the wall clock, RFC 3339 stamps, background tasks, and
the resolution of a client-sent channel name."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from tidings.core.names import sent_name, validate_channel
from tidings.hub.connection import Connection

__all__ = [
    "Background",
    "now_ms",
    "resolve_sent",
    "rfc3339_micros",
    "rfc3339_millis",
    "rfc3339_seconds",
]

log = logging.getLogger("tidings.hub")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rfc3339_seconds(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_millis(ms: int) -> str:
    """``2026-05-19T15:47:45.231Z``: reaction ``createdAt`` (spec §0)."""
    stamp = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z"


def rfc3339_micros(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def resolve_sent(
    conn: Connection, value: object, extra: Callable[[str], str | None] | None = None
) -> tuple[str, str]:
    """``(sent, channel)``: the name as the client sent it and the real channel it names
    (spec §6.3), validated; errors carry the name as sent."""
    sent = sent_name(value)
    return sent, validate_channel(conn.resolve_channel(sent, extra), sent_as=sent)


class Background:
    """Fire-and-forget tasks the hub does not await, kept referenced until they finish."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("! background task failed", exc_info=task.exception())
