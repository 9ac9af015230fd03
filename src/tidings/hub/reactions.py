"""Message reactions (spec §12, §10.2 ``listReactions``): checking who may react to what, and
handing each reaction to its channel's lane as a ``hotsock.messageReactionAdded/Removed`` event.

In the lane, the reaction is applied to the store in the channel's publishing turn (one
``apply_reactions`` per batch); a repeated add or a missing remove stops there, silently, and
everything else is delivered in ID order with the channel's messages.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from tidings.core import protocol
from tidings.core.ids import is_ulid, ulid_ms
from tidings.core.json import dumps
from tidings.core.names import validate_channel, validate_uid, validate_umd
from tidings.core.reactions import (
    REACTION_EVENT,
    ReactionAction,
    ReactionRequest,
    parse_reaction,
    reaction_data_json,
)
from tidings.core.requests import flag
from tidings.errors import ErrorCode, ProtocolError
from tidings.hub._common import now_ms, resolve_sent
from tidings.hub.connection import Connection
from tidings.hub.history import visible_from_ms
from tidings.hub.publishing import Publication, Publisher, PublishResult
from tidings.store.base import (
    MessageRecord,
    ReactionChange,
    ReactionRecord,
    ReactionRemoval,
    Store,
)

__all__ = ["ReactionIntent", "Reactions"]


@dataclass(slots=True)
class ReactionIntent:
    """What a reaction publication will change once its lane gives it an ID."""

    message: MessageRecord  # the target, as it was when the request was checked
    request: ReactionRequest
    stored: ReactionRecord | None = None  # what the store added or removed; None = no-op

    def change(self, pub: Publication) -> ReactionChange:
        """The store change for ``pub``, whose ``id`` has just been minted."""
        request = self.request
        if request.action is ReactionAction.REMOVE:
            return ReactionRemoval(pub.channel, request.message_id, pub.uid or "", request.reaction)
        return ReactionRecord(
            id=pub.id,
            channel=pub.channel,
            message_id=request.message_id,
            reaction=request.reaction,
            uid=pub.uid or "",
            umd=pub.umd_json.decode(),
            created_ms=ulid_ms(pub.id),
            expires_ms=self.message.expires_ms,  # a reaction vanishes with its message
            trigger=pub.trigger,
            request_id=pub.request_id or None,
            connection_id=pub.connection_id,
            source_ip=pub.source_ip,
            user_agent=pub.user_agent,
        )


class Reactions:
    """Reactions over the WebSocket, the Client HTTP API and ``POST /publish``."""

    def __init__(self, *, store: Store, publisher: Publisher) -> None:
        self._store = store
        self._publisher = publisher

    # Public methods

    async def react_client(
        self, conn: Connection, channel_sent: Any, data: Any, *, trigger: str
    ) -> asyncio.Future[PublishResult]:
        """A client's reaction (spec §12), checked in the spec's order, then queued.

        Raises ``ProtocolError``: ``INVALID_CHANNEL``, ``INVALID_REACTION``,
        ``SUBSCRIPTION_REQUIRED``, ``USER_ID_REQUIRED``, ``MESSAGE_NOT_FOUND`` (missing, expired
        or outside the caller's history window), ``REACTION_PERMISSION_DENIED`` (``react``
        resolved for the target message's event). The future resolves once the reaction is
        applied and handed to the broker, or is a silent no-op.
        """
        sent, channel = resolve_sent(conn, channel_sent)
        request = parse_reaction(data, channel=sent)
        sub = conn.subscriptions.get(channel)
        if sub is None:
            raise ProtocolError(
                ErrorCode.SUBSCRIPTION_REQUIRED,
                "reacting needs an active subscription",
                channel=sent,
            )
        if not sub.uid:
            raise ProtocolError(
                ErrorCode.USER_ID_REQUIRED, "reacting needs a uid on the subscription", channel=sent
            )
        message = await self._store.get_message(channel, request.message_id, now_ms=now_ms())
        if message is None or ulid_ms(message.id) < visible_from_ms(sub):
            raise _not_found(sent)
        perms = sub.permissions
        if not perms.react_allows(channel, message.event, request.reaction):
            raise ProtocolError(
                ErrorCode.REACTION_PERMISSION_DENIED,
                f"reaction {request.reaction!r} not permitted on {message.event!r} messages",
                channel=sent,
            )
        pub = self._publication(
            channel,
            request,
            message,
            uid=sub.uid,
            umd_json=sub.umd_json,
            emit_event=perms.emit_pubsub(channel, message.event),
            trigger=trigger,
        )
        pub.exclude = None if perms.echo(channel, REACTION_EVENT) else conn.id
        pub.connection_id = conn.id
        pub.source_ip = conn.source_ip
        pub.user_agent = conn.user_agent
        return self._publisher.enqueue(pub)

    async def react_server(
        self, body: dict[str, Any], *, trigger: str = "server.http"
    ) -> asyncio.Future[PublishResult]:
        """A ``POST /publish`` reaction (spec §12, §15): no permission or subscription applies;
        top-level ``uid`` is required (400 ``USER_ID_REQUIRED``) and ``umd`` optional."""
        channel = sent = validate_channel(body.get("channel"))
        request = parse_reaction(body.get("data"), channel=sent)
        try:
            uid = validate_uid(body.get("uid"))
        except ProtocolError as exc:
            exc.status = 400  # a server request without uid is malformed, not forbidden
            raise
        umd_json = validate_umd(body.get("umd"))
        emit = flag(body, "emitPubSubEvent")
        message = await self._store.get_message(channel, request.message_id, now_ms=now_ms())
        if message is None:
            raise _not_found(sent)
        pub = self._publication(
            channel, request, message, uid=uid, umd_json=umd_json, emit_event=emit, trigger=trigger
        )
        return self._publisher.enqueue(pub)

    async def list_reactions(self, conn: Connection, body: dict[str, Any]) -> bytes:
        """``listReactions`` (spec §10.2): the JSON response body, items in creation order."""
        sent, channel = resolve_sent(conn, body.get("channel"))
        message_id = body.get("messageId")
        if message_id is None:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "messageId is required", channel=sent)
        if not is_ulid(message_id):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, "messageId must be a message ID (ULID)", channel=sent
            )
        sub = conn.subscriptions.get(channel)
        if sub is None:
            raise ProtocolError(
                ErrorCode.SUBSCRIPTION_REQUIRED,
                "listReactions needs an active subscription",
                channel=sent,
            )
        now = now_ms()
        message = await self._store.get_message(channel, message_id, now_ms=now)
        if message is None or ulid_ms(message.id) < visible_from_ms(sub):
            raise _not_found(sent)
        found = await self._store.list_reactions(channel, [message_id], now_ms=now)
        items = [_item(record) for record in found.get(message_id, [])]
        return b'{"reactions":[' + b",".join(items) + b"]}"

    # Private methods

    def _publication(
        self,
        channel: str,
        request: ReactionRequest,
        message: MessageRecord,
        *,
        uid: str,
        umd_json: bytes,
        emit_event: bool,
        trigger: str,
    ) -> Publication:
        return Publication(
            channel=channel,
            event=request.action.event,
            data_json=reaction_data_json(request),
            meta_json=protocol.meta_json(uid, umd_json),
            uid=uid,
            umd_json=umd_json,
            store_seconds=0,  # reaction events are not channel messages (spec §12)
            exclude=None,
            trigger=trigger,
            emit_event=emit_event,
            reaction=ReactionIntent(message, request),
        )


def _not_found(sent: str) -> ProtocolError:
    return ProtocolError(
        ErrorCode.MESSAGE_NOT_FOUND,
        "no such message in this channel's visible history",
        channel=sent,
    )


def _item(record: ReactionRecord) -> bytes:
    """A ``listReactions`` item: ``{"reaction","uid","umd"?}``, ``umd`` omitted when null."""
    head = b'{"reaction":' + dumps(record.reaction) + b',"uid":' + dumps(record.uid)
    if record.umd == "null":
        return head + b"}"
    return head + b',"umd":' + record.umd.encode() + b"}"
