"""Channel storage (spec §11, §10.2, §15, §16): who may write, read and list which keys, the
write that runs in the channel's lane, the entries a new observer gets, and the sweeper that
announces expired entries.

::

    client set (WebSocket, HTTP) / POST /publish / a schedule coming due
        → StorageWrite ──▶ write(): the channel lane (hub/publishing.py)
            in the channel's publishing turn: store.apply_storage(batch)
            changed → hotsock.channelStorageUpdated to every observer (Delivery.observe_key),
                      backend event when asked; unchanged → nothing but the new expiry

A new observer's ``hotsock.subscribed`` and entries are sent from the lane too (``confirm``):
every write the read missed is published after it, so the observer's last word on each key is
the latest value, and the entries directly follow the confirmation.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from tidings.core import protocol
from tidings.core.json import dumps
from tidings.core.permissions import Permissions
from tidings.core.storage import (
    PAGE_MAX_ENTRIES,
    STORAGE_SET_EVENT,
    STORAGE_UPDATED_EVENT,
    StorageWrite,
    data_frame,
    entry_json,
    updated_frame,
    validate_after,
    validate_key,
    validate_key_list,
    value_json,
)
from tidings.errors import ErrorCode, ProtocolError
from tidings.hub._common import now_ms, resolve_sent
from tidings.hub.connection import Connection, Subscription
from tidings.hub.emitter import Emitter
from tidings.hub.outbound import Frame
from tidings.hub.publishing import Publication, Publisher, PublishResult
from tidings.store.base import (
    StorageChange,
    StorageEntry,
    StorageOutcome,
    StorageRemoval,
    Store,
)

__all__ = ["Storage", "StorageIntent"]

log = logging.getLogger("tidings.hub")

SWEEP_BATCH = 1000


@dataclass(slots=True)
class StorageIntent:
    """What a storage publication does in its lane: apply ``write``, or send ``observer`` (a
    connection and its new subscription) its ``confirmation`` and the entries it observes."""

    write: StorageWrite | None = None
    observer: tuple[Connection, Subscription] | None = None
    confirmation: bytes = b""  # the observer's hotsock.subscribed, sent before its entries
    confirmed: bool = False  # the confirmation went out
    outcome: StorageOutcome | None = None  # set once the write is applied

    def change(self, now: int) -> StorageChange:
        """The store change of ``write``; its TTL starts ``now``."""
        write = self.write
        assert write is not None
        if write.data_json is None:
            return StorageRemoval(write.channel, write.key)
        return StorageEntry(
            channel=write.channel,
            key=write.key,
            data=write.data_json.decode(),
            uid=write.uid,
            umd=write.umd_json.decode(),
            updated_ms=now,
            expires_ms=None if write.store_seconds < 0 else now + write.store_seconds * 1000,
            emit_event=write.emit_event,
            trigger=write.trigger,
            connection_id=write.connection_id,
            source_ip=write.source_ip,
            user_agent=write.user_agent,
        )


class Storage:
    """Channel storage for this node's clients, servers and schedules."""

    def __init__(
        self, *, store: Store, publisher: Publisher, emitter: Emitter, sweep_interval: float
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._emitter = emitter
        self._sweep_interval = sweep_interval  # seconds between sweeps of expired entries

    # Public methods: writes

    def prepare_client(
        self, conn: Connection, channel_sent: Any, key: Any, data: Any, *, trigger: str
    ) -> StorageWrite:
        """Validate and authorise a client write (spec §11): ``INVALID_CHANNEL``,
        ``INVALID_STORAGE_KEY``, ``DATA_TOO_LARGE``, ``STORAGE_PERMISSION_DENIED``. The write
        is not applied: pass it to ``write`` (now, or when its schedule comes due)."""
        sent, channel = resolve_sent(conn, channel_sent)
        try:
            key = validate_key(key)
            data_json = value_json(data)
        except ProtocolError as exc:
            exc.channel = sent
            raise
        sub = conn.subscriptions.get(channel)
        perms = sub.permissions if sub is not None else conn.permissions
        _require(perms, channel, key, "set", sent)
        uid, umd_json = (sub.uid, sub.umd_json) if sub is not None else (conn.uid, dumps(conn.umd))
        return StorageWrite(
            channel=channel,
            key=key,
            data_json=data_json,
            store_seconds=perms.storage_store_seconds(channel, key),
            uid=uid,
            umd_json=umd_json,
            emit_event=perms.storage_flag(channel, key, "emitPubSubEvent"),
            trigger=trigger,
            connection_id=conn.id,
            source_ip=conn.source_ip,
            user_agent=conn.user_agent,
        )

    def write(self, write: StorageWrite) -> asyncio.Future[PublishResult]:
        """Apply ``write`` now, in its channel's lane, ordered with the channel's messages.

        The future resolves once the write is durable (and, when the value changed, handed to
        the broker for its observers); it fails with ``StoreUnavailable``/``StoreError`` when
        the store refused it, in which case nothing changed.
        """
        return self._publisher.enqueue(
            Publication(
                channel=write.channel,
                event=STORAGE_SET_EVENT,
                data_json=write.data_json or b"null",
                meta_json=protocol.meta_json(write.uid, write.umd_json),
                uid=write.uid,
                umd_json=write.umd_json,
                store_seconds=0,  # not a channel message
                exclude=None,  # storage updates ignore echo (spec §11)
                trigger=write.trigger,
                connection_id=write.connection_id,
                source_ip=write.source_ip,
                user_agent=write.user_agent,
                emit_event=write.emit_event,
                storage=StorageIntent(write=write),
            )
        )

    # Public methods: reads

    async def get_client(self, conn: Connection, channel_sent: Any, key: Any) -> bytes:
        """``hotsock.channelStorageData`` for a client with ``get`` on the key (spec §10.2);
        ``data`` and ``meta`` are null when the key is unset or expired."""
        sent, channel = resolve_sent(conn, channel_sent)
        try:
            key = validate_key(key)
        except ProtocolError as exc:
            exc.channel = sent
            raise
        _require(_permissions(conn, channel), channel, key, "get", sent)
        entry = await self._store.get_storage(channel, key, now_ms=now_ms())
        if entry is None:
            return data_frame(channel, key, b"null", b"null")
        return data_frame(channel, key, entry.data.encode(), _meta(entry))

    async def list_client(self, conn: Connection, body: dict[str, Any]) -> bytes:
        """``channelStorageList`` (spec §10.2): a page of live entries the connection may
        ``get``, in key order, up to 100, after ``after``, only ``keys`` when given."""
        sent, channel = resolve_sent(conn, body.get("channel"))
        try:
            keys = validate_key_list(body.get("keys"))
            after = validate_after(body.get("after"))
        except ProtocolError as exc:
            exc.channel = sent
            raise
        perms = _permissions(conn, channel)
        items: list[bytes] = []
        now = now_ms()
        # Pages are of permitted entries: keep reading until one is full or the keys run out,
        # so a short page still means "the end".
        while len(items) < PAGE_MAX_ENTRIES:
            entries = await self._store.list_storage(
                channel, now_ms=now, keys=keys, after=after, limit=PAGE_MAX_ENTRIES
            )
            for entry in entries:
                if perms.storage_flag(channel, entry.key, "get"):
                    items.append(_item(entry))
                    if len(items) == PAGE_MAX_ENTRIES:
                        break
            if len(entries) < PAGE_MAX_ENTRIES:
                break
            after = entries[-1].key
        return b'{"items":[' + b",".join(items) + b"]}"

    async def list_admin(self, channel: str, keys: list[str] | None, after: str | None) -> bytes:
        """``GET /channels/{name}/storage`` (spec §16): live entries, no permission applies."""
        entries = await self._store.list_storage(
            channel, now_ms=now_ms(), keys=keys, after=after, limit=PAGE_MAX_ENTRIES
        )
        return b'{"items":[' + b",".join(_item(e) for e in entries) + b"]}"

    async def confirm(self, conn: Connection, sub: Subscription, confirmation: bytes) -> None:
        """Send a new subscription its ``hotsock.subscribed`` frame ``confirmation``, followed
        by the live entries it may observe, in key order (spec §6.1 step 7), both from the
        channel's lane. Without any ``observe`` on the channel the frame goes out at once."""
        if not sub.permissions.may_observe(sub.channel):
            conn.send(Frame(confirmation))
            return
        intent = StorageIntent(observer=(conn, sub), confirmation=confirmation)
        future = self._publisher.enqueue(
            Publication(
                channel=sub.channel,
                event=STORAGE_UPDATED_EVENT,
                data_json=b"null",
                meta_json=None,
                uid=None,
                umd_json=b"null",
                store_seconds=0,
                exclude=None,
                trigger="",
                storage=intent,
            )
        )
        try:
            await future
        except Exception as exc:  # the subscription stands; only its entries are lost
            log.warning("! observed entries of %s for %s failed: %s", sub.channel, conn.id, exc)
            if not intent.confirmed:
                conn.send(Frame(confirmation))

    # Public methods: in the lane (called by hub/publishing.py in the channel's turn)

    async def snapshot(self, intent: StorageIntent) -> None:
        """Send ``intent.observer`` its ``hotsock.subscribed``, then the entries it may observe,
        as they are now."""
        assert intent.observer is not None
        conn, sub = intent.observer
        channel = sub.channel
        conn.send(Frame(intent.confirmation))
        intent.confirmed = True
        now = now_ms()
        after: str | None = None
        while not conn.closed:
            entries = await self._store.list_storage(
                channel, now_ms=now, after=after, limit=PAGE_MAX_ENTRIES
            )
            frames = [
                Frame(updated_frame(channel, e.key, e.data.encode(), _meta(e)))
                for e in entries
                if sub.permissions.can_observe(channel, e.key)
            ]
            if frames and conn.subscriptions.get(channel) is sub:
                conn.send_many(frames)
            if len(entries) < PAGE_MAX_ENTRIES:
                return
            after = entries[-1].key

    def delivery_frame(self, pub: Publication) -> bytes:
        """The ``hotsock.channelStorageUpdated`` frame of an applied, changed write."""
        intent = pub.storage
        assert intent is not None and intent.write is not None and pub.meta_json is not None
        return updated_frame(pub.channel, intent.write.key, pub.data_json, pub.meta_json)

    def announce(self, pub: Publication) -> None:
        """The backend event of an applied, changed write asking for one (spec §17.2)."""
        intent = pub.storage
        assert intent is not None and intent.outcome is not None and intent.write is not None
        outcome = intent.outcome
        current = outcome.current
        self._emit(
            channel=pub.channel,
            key=intent.write.key,
            data=current.data if current is not None else None,
            previous=outcome.previous.data if outcome.previous is not None else None,
            expired=False,
            expires_ms=current.expires_ms if current is not None else None,
            uid=pub.uid,
            umd=pub.umd_json.decode(),
            trigger=pub.trigger,
            connection_id=pub.connection_id,
            source_ip=pub.source_ip,
            user_agent=pub.user_agent,
        )

    def announce_expired(self, entry: StorageEntry) -> None:
        """The ``expired: true`` backend event of an entry whose last change asked for
        events (spec §11): observers on the socket are not told."""
        if not (entry.emit_event and self._emitter.enabled):
            return
        self._emit(
            channel=entry.channel,
            key=entry.key,
            data=None,
            previous=entry.data,
            expired=True,
            expires_ms=entry.expires_ms,
            uid=entry.uid,
            umd=entry.umd,
            trigger=entry.trigger,
            connection_id=entry.connection_id,
            source_ip=entry.source_ip,
            user_agent=entry.user_agent,
        )

    # Public methods: the sweeper

    async def sweep_forever(self) -> None:
        """Delete expired entries every ``sweep_interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("! expired storage sweep failed")

    async def sweep(self) -> int:
        """Delete every entry expired by now, announcing those that asked; returns how many."""
        deleted = 0
        while True:
            swept = await self._store.sweep_storage(now_ms=now_ms(), limit=SWEEP_BATCH)
            for entry in swept:
                self.announce_expired(entry)
            deleted += len(swept)
            if len(swept) < SWEEP_BATCH:
                return deleted
            await asyncio.sleep(0)

    # Private methods

    def _emit(
        self,
        *,
        channel: str,
        key: str,
        data: str | None,
        previous: str | None,
        expired: bool,
        expires_ms: int | None,
        uid: str | None,
        umd: str,
        trigger: str,
        connection_id: str | None,
        source_ip: str | None,
        user_agent: str | None,
    ) -> None:
        self._emitter.storage(
            channel=channel,
            key=key,
            data=data,
            previous=previous,
            expired=expired,
            expires_ms=expires_ms,
            uid=uid,
            umd=umd,
            metadata={
                "channel": channel,
                "key": key,
                "trigger": trigger,
                "connectionId": connection_id,
                "sourceIp": source_ip,
                "userAgent": user_agent,
            },
        )


def _permissions(conn: Connection, channel: str) -> Permissions:
    """The subscription's layered directives when subscribed, else the connect token's."""
    sub = conn.subscriptions.get(channel)
    return sub.permissions if sub is not None else conn.permissions


def _require(perms: Permissions, channel: str, key: str, name: str, sent: str) -> None:
    if not perms.storage_flag(channel, key, name):
        raise ProtocolError(
            ErrorCode.STORAGE_PERMISSION_DENIED,
            f"storage {name} not permitted for key {key!r}",
            channel=sent,
        )


def _meta(entry: StorageEntry) -> bytes:
    return protocol.meta_json(entry.uid, entry.umd.encode())


def _item(entry: StorageEntry) -> bytes:
    return entry_json(entry.key, entry.data.encode(), _meta(entry))
