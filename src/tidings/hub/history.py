"""Channel history (spec §9.3, §9.4, §10.2): ``listMessages`` pages within a subscription's
visibility window, and the sweeper that deletes expired messages."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tidings.core import protocol
from tidings.core.ids import is_ulid, ulid_floor
from tidings.core.json import dumps
from tidings.errors import ErrorCode, ProtocolError
from tidings.hub._common import now_ms, resolve_sent
from tidings.hub.connection import Connection
from tidings.store.base import MessageRecord, Store

__all__ = ["PAGE_MAX_BYTES", "PAGE_MAX_MESSAGES", "History", "history_item"]

log = logging.getLogger("tidings.hub")

PAGE_MAX_MESSAGES = 100
PAGE_MAX_BYTES = 1024 * 1024
SWEEP_BATCH = 1000


class History:
    def __init__(self, *, store: Store, sweep_interval: float) -> None:
        self._store = store
        self._sweep_interval = sweep_interval  # seconds between sweeps of expired messages

    async def list_messages(self, conn: Connection, body: dict[str, Any]) -> bytes:
        """``listMessages``: returns the JSON response body."""
        sent, channel = resolve_sent(conn, body.get("channel"))
        reverse = body.get("reverse", False)
        if not isinstance(reverse, bool):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "reverse must be a boolean")
        bounds: dict[str, str | None] = {}
        for name in ("after", "before"):
            value = body.get(name)
            if value is not None and not is_ulid(value):
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE, f"{name} must be a message ID (ULID)"
                )
            bounds[name] = value
        sub = conn.subscriptions.get(channel)
        if sub is None:
            raise ProtocolError(
                ErrorCode.SUBSCRIPTION_REQUIRED,
                "listMessages needs an active subscription",
                channel=sent,
            )
        start = sub.permissions.history_start(channel)
        lower_ms = start * 1000 if start is not None else sub.subscribed_ms
        records = await self._store.list_messages(
            channel,
            now_ms=now_ms(),
            min_id=ulid_floor(lower_ms),
            after=None if reverse else bounds["after"],
            before=bounds["before"] if reverse else None,
            reverse=reverse,
            limit=PAGE_MAX_MESSAGES,
        )
        parts: list[bytes] = []
        size = 0
        for rec in records:
            item = history_item(rec)
            if size + len(item) + (1 if parts else 0) > PAGE_MAX_BYTES:
                break
            size += len(item) + (1 if parts else 0)
            parts.append(item)
        return b'{"messages":[' + b",".join(parts) + b"]}"

    async def sweep_forever(self) -> None:
        """Delete expired messages every ``sweep_interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                while await self._store.sweep(now_ms=now_ms(), limit=SWEEP_BATCH) >= SWEEP_BATCH:
                    await asyncio.sleep(0)
            except Exception:
                log.exception("! expired-message sweep failed")


def history_item(rec: MessageRecord) -> bytes:
    """A stored record as ``listMessages`` returns it (spec §9.4)."""
    head = dumps({"id": rec.id, "event": rec.event, "channel": rec.channel})
    meta = protocol.meta_json(rec.uid, rec.umd.encode())
    return head[:-1] + b',"data":' + rec.data.encode() + b',"meta":' + meta + b"}"
