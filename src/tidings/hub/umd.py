"""User metadata updates (spec §13): ``hotsock.umdUpdate`` over the WebSocket and the Client
HTTP API, per subscription or for the whole connection (``umdPropagate``).

The new value is the umd token's ``umd`` claim (``null`` when absent). On presence channels the
member list is updated in the broker's one atomic step (``presence_join`` on the existing
holder), which also enforces the member list's size bound, and a changed member is announced to
every subscriber on every node, the caller included.
"""

from __future__ import annotations

import logging
from typing import Any

from tidings.core.json import dumps
from tidings.core.names import is_presence
from tidings.core.permissions import Permissions
from tidings.core.presence import Change, same_json
from tidings.errors import ErrorCode, ProtocolError
from tidings.hub._common import resolve_sent
from tidings.hub.auth import Auth
from tidings.hub.connection import Connection, Subscription
from tidings.hub.emitter import Emitter
from tidings.hub.presence import Presence

__all__ = ["UmdUpdates"]

log = logging.getLogger("tidings.hub")


class UmdUpdates:
    def __init__(self, *, auth: Auth, presence: Presence, emitter: Emitter) -> None:
        self._auth = auth
        self._presence = presence
        self._emitter = emitter

    async def update(self, conn: Connection, channel_sent: Any, token: Any) -> None:
        """Apply a umd token (spec §13). Success sends nothing to the caller except, on a
        presence channel whose member changed, the ``hotsock.memberUpdated`` everyone gets.

        Raises:
            ProtocolError: ``INVALID_UMD_TOKEN``, ``INVALID_CHANNEL``, ``SUBSCRIPTION_REQUIRED``,
                ``UMD_UPDATE_PERMISSION_DENIED`` or ``PRESENCE_CHANNEL_CAPACITY_REACHED``.
                A refused per-channel update changes nothing and does not use up a
                ``singleUse`` token; with ``umdPropagate``, a presence channel without room
                keeps the old value while the connection and the other subscriptions take the
                new one, and the first such channel is reported.
        """
        given = channel_sent is not None
        claims = self._auth.verify_umd(token, conn, channel_sent if given else None)
        umd = claims.umd
        if given:
            sent, channel = resolve_sent(conn, channel_sent)
            sub = conn.subscriptions.get(channel)
            if sub is None:
                raise ProtocolError(
                    ErrorCode.SUBSCRIPTION_REQUIRED,
                    "umdUpdate on a channel needs an active subscription",
                    channel=sent,
                )
            if not Permissions(claims.grants).channel_flag(channel, "umdUpdate"):
                raise ProtocolError(
                    ErrorCode.UMD_UPDATE_PERMISSION_DENIED,
                    "the umd token does not grant umdUpdate for this channel",
                    channel=sent,
                )
            consumed = await self._auth.consume_umd(claims, sent)
            try:
                await self._update_subscription(conn, sub, umd)
            except ProtocolError as exc:
                if consumed:
                    await self._auth.release(claims)
                exc.channel = sent
                raise
            return
        if not claims.umd_update:
            raise ProtocolError(
                ErrorCode.UMD_UPDATE_PERMISSION_DENIED,
                "the umd token does not grant a connection-level umdUpdate",
            )
        await self._auth.consume_umd(claims, None)
        changed = not same_json(conn.umd, umd)
        conn.umd = umd
        if changed and self._emitter.enabled:
            self._emitter.connection("hotsock.connectionUpdated", conn, None)
        if not claims.umd_propagate:
            return
        refused: ProtocolError | None = None
        for sub in list(conn.subscriptions.values()):
            try:
                await self._update_subscription(conn, sub, umd)
            except ProtocolError as exc:
                # the other subscriptions still take the new value; the caller learns which
                # presence channel had no room for it
                exc.channel = sub.alias or sub.channel
                refused = refused or exc
        if refused is not None:
            raise refused

    async def _update_subscription(self, conn: Connection, sub: Subscription, umd: Any) -> None:
        if is_presence(sub.channel) and sub.uid:
            update = await self._presence.join(sub.channel, conn.id, sub.uid, umd)
            sub.umd, sub.umd_json = umd, dumps(umd)
            if update.change is Change.UPDATED:
                await self._presence.announce(sub.channel, update, skip="")
            return
        sub.umd, sub.umd_json = umd, dumps(umd)
