"""Channel history (spec §9.3, §9.4, §10.2): ``listMessages`` pages within a subscription's
visibility window, with their reactions, and the sweeper that deletes expired messages and
reactions."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tidings.core import protocol
from tidings.core.ids import is_ulid, ulid_floor
from tidings.core.json import dumps
from tidings.core.reactions import counts_json, expanded_json
from tidings.errors import ErrorCode, ProtocolError
from tidings.hub._common import now_ms, resolve_sent
from tidings.hub.connection import Connection, Subscription
from tidings.store.base import MessageRecord, Store

__all__ = ["PAGE_MAX_BYTES", "PAGE_MAX_MESSAGES", "History", "history_item", "visible_from_ms"]

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
        expand = body.get("expandReactions", False)
        if not isinstance(expand, bool):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "expandReactions must be a boolean")
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
        now = now_ms()
        records = await self._store.list_messages(
            channel,
            now_ms=now,
            min_id=ulid_floor(visible_from_ms(sub)),
            after=None if reverse else bounds["after"],
            before=bounds["before"] if reverse else None,
            reverse=reverse,
            limit=PAGE_MAX_MESSAGES,
        )
        # one query for the whole page's reactions, before the 1 MB cut they count towards
        ids = [rec.id for rec in records]
        if expand:
            found = await self._store.list_reactions(channel, ids, now_ms=now)
            reactions = {
                message_id: expanded_json((r.reaction, r.uid, r.umd) for r in items)
                for message_id, items in found.items()
            }
        else:
            counted = await self._store.reaction_counts(channel, ids, now_ms=now)
            reactions = {message_id: counts_json(c) for message_id, c in counted.items()}
        empty = b"{}" if expand else None
        parts: list[bytes] = []
        size = 0
        for rec in records:
            item = history_item(rec, reactions.get(rec.id, empty))
            if size + len(item) + (1 if parts else 0) > PAGE_MAX_BYTES:
                break
            size += len(item) + (1 if parts else 0)
            parts.append(item)
        return b'{"messages":[' + b",".join(parts) + b"]}"

    async def sweep_forever(self) -> None:
        """Delete expired messages, reactions and deduplication IDs every ``sweep_interval``
        seconds until cancelled."""
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                for sweep in (
                    self._store.sweep,
                    self._store.sweep_reactions,
                    self._store.sweep_dedup,
                ):
                    while await sweep(now_ms=now_ms(), limit=SWEEP_BATCH) >= SWEEP_BATCH:
                        await asyncio.sleep(0)
            except Exception:
                log.exception("! expired-message sweep failed")


def visible_from_ms(sub: Subscription) -> int:
    """The oldest instant (Unix ms, inclusive) whose messages ``sub`` may read or react to:
    ``historyStart`` when its directives set one, else the subscription's start (spec §9.3)."""
    start = sub.permissions.history_start(sub.channel)
    return start * 1000 if start is not None else sub.subscribed_ms


def history_item(rec: MessageRecord, reactions_json: bytes | None = None) -> bytes:
    """A stored record as ``listMessages`` returns it (spec §9.4), with its ``reactions``
    object when given."""
    head = dumps({"id": rec.id, "event": rec.event, "channel": rec.channel})
    meta = protocol.meta_json(rec.uid, rec.umd.encode())
    tail = b"}" if reactions_json is None else b',"reactions":' + reactions_json + b"}"
    return head[:-1] + b',"data":' + rec.data.encode() + b',"meta":' + meta + tail
