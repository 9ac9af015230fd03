"""Backend-event payloads (spec §17.2), built only when someone listens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from tidings.broker.base import PresenceUpdate
from tidings.events.bus import EventBus
from tidings.hub._common import rfc3339_micros, rfc3339_millis, rfc3339_seconds
from tidings.hub.connection import Connection, Subscription
from tidings.store.base import ReactionRecord

if TYPE_CHECKING:
    from tidings.hub.publishing import Publication

__all__ = ["Emitter"]


class Emitter:
    """Turns hub happenings into backend events. Callers test ``enabled`` before building
    anything costly, so a node without webhooks pays nothing."""

    def __init__(self, events: EventBus | None) -> None:
        self.events = events
        self.enabled = events is not None and events.enabled

    def emit(
        self, type_: str, data_type: str, data: dict[str, Any], metadata: dict[str, Any] | None
    ) -> None:
        if self.events is not None:
            self.events.emit(type_, data_type, data, metadata)

    def connection(self, type_: str, conn: Connection, disconnected: float | None) -> None:
        self.emit(
            type_,
            "connection",
            {
                "id": conn.id,
                "connectedAt": rfc3339_micros(conn.connected_ms / 1000),
                "disconnectedAt": None if disconnected is None else rfc3339_micros(disconnected),
                "keepAlive": conn.claims.keep_alive,
                "sourceIp": conn.source_ip,
                "uid": conn.uid,
                "umd": conn.umd,
                "userAgent": conn.user_agent,
            },
            None,
        )

    def subscription(self, type_: str, conn: Connection, sub: Subscription) -> None:
        data = {"channel": sub.channel, "connectionId": conn.id, "uid": sub.uid, "umd": sub.umd}
        self.emit(type_, "subscription", data, {"channel": sub.channel})

    def count(self, channel: str, count: int) -> None:
        if self.enabled:
            data = {"name": channel, "subscriptionsCount": count}
            self.emit("hotsock.channelUpdated", "channel", data, {"channel": channel})

    def member(self, channel: str, update: PresenceUpdate) -> None:
        if self.enabled and update.member is not None:
            self.emit(
                update.change.value,
                "channelMember",
                {**update.member, "members": update.members},
                {"channel": channel},
            )

    def published(self, pub: Publication) -> None:
        data: dict[str, Any] = {
            "channel": pub.channel,
            "event": pub.event,
            "id": pub.id,
            "data": orjson.loads(pub.data_json),
        }
        umd = orjson.loads(pub.umd_json)
        if pub.meta_json is not None and (pub.uid is not None or umd is not None):
            data["meta"] = {"uid": pub.uid, "umd": umd}
        metadata = {
            "channel": pub.channel,
            "event": pub.event,
            "requestId": pub.request_id,
            "trigger": pub.trigger,
            "connectionId": pub.connection_id,
            "sourceIp": pub.source_ip,
            "userAgent": pub.user_agent,
        }
        self.emit("hotsock.messagePublished", "message", data, metadata)

    def reaction(self, type_: str, stored: ReactionRecord) -> None:
        """``hotsock.messageReactionAdded/Removed``: a removal describes the reaction as it was
        added, and the request that added it (spec §17.2)."""
        data = {
            "channel": stored.channel,
            "messageId": stored.message_id,
            "id": stored.id,
            "reaction": stored.reaction,
            "uid": stored.uid,
            "umd": orjson.loads(stored.umd),
            "createdAt": rfc3339_millis(stored.created_ms),
            "expiresAt": None if stored.expires_ms is None else rfc3339_seconds(stored.expires_ms),
        }
        metadata = {
            "channel": stored.channel,
            "reaction": stored.reaction,
            "requestId": stored.request_id,
            "trigger": stored.trigger,
            "connectionId": stored.connection_id,
            "sourceIp": stored.source_ip,
            "userAgent": stored.user_agent,
        }
        self.emit(type_, "messageReaction", data, metadata)

    def storage(
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
        metadata: dict[str, Any],
    ) -> None:
        """``hotsock.channelStorageUpdated`` (spec §17.2); values are JSON texts, None for
        "no value" (a first write's ``dataPrevious``, a deletion's ``data``)."""
        payload = {
            "channel": channel,
            "key": key,
            "data": None if data is None else orjson.loads(data),
            "dataPrevious": None if previous is None else orjson.loads(previous),
            "expired": expired,
            "expiresAt": None if expires_ms is None else rfc3339_seconds(expires_ms),
            "meta": {"uid": uid, "umd": orjson.loads(umd)},
        }
        self.emit("hotsock.channelStorageUpdated", "channelStorage", payload, metadata)
