"""Subscribing and unsubscribing (spec §6): tokens and permissions, aliases, presence joins,
subscription counts, and the node's interest in a channel."""

from __future__ import annotations

import logging

from tidings.broker.base import Broker, PresenceUpdate
from tidings.config import Settings
from tidings.core import protocol
from tidings.core.json import dumps
from tidings.core.moderation import ServerSubscribe
from tidings.core.names import is_presence
from tidings.core.permissions import Permissions
from tidings.core.presence import Change
from tidings.core.tokens import Claims
from tidings.errors import UNAVAILABLE, ErrorCode, ProtocolError
from tidings.hub._common import Background, now_ms, resolve_sent
from tidings.hub.auth import Auth
from tidings.hub.connection import Connection, Subscription
from tidings.hub.emitter import Emitter
from tidings.hub.fanout import Fanout
from tidings.hub.outbound import Frame
from tidings.hub.presence import Presence
from tidings.hub.recovery import Recovery
from tidings.hub.storage import Storage

__all__ = ["Subscriptions"]

log = logging.getLogger("tidings.hub")


class Subscriptions:
    """Every subscription of this node's connections."""

    def __init__(
        self,
        *,
        settings: Settings,
        broker: Broker,
        auth: Auth,
        fanout: Fanout,
        presence: Presence,
        storage: Storage,
        recovery: Recovery,
        emitter: Emitter,
        background: Background,
        connections: dict[str, Connection],
    ) -> None:
        self._max_subscriptions = settings.limits.max_subscriptions
        self._broker = broker
        self._auth = auth
        self._fanout = fanout
        self._presence = presence
        self._storage = storage
        self._recovery = recovery
        self._emitter = emitter
        self._background = background
        self._connections = connections  # the hub's live connections (read only)
        self.debug = log.isEnabledFor(logging.DEBUG)

    # Public methods

    async def auto_subscribe(self, conn: Connection) -> None:
        """Subscribe the connect token's ``autoSubscribe`` channels in token order (spec §6.5);
        a refusal is reported and the next channel tried."""
        for channel in conn.claims.grants.auto_subscribe():
            if conn.closed:
                return
            try:
                await self.subscribe(conn, channel, None, auto=True)
            except ProtocolError as exc:
                conn.send(
                    Frame(protocol.error_frame(exc.code, exc.message, exc.channel or channel))
                )

    async def subscribe(
        self,
        conn: Connection,
        sent: str,
        token: str | None,
        *,
        auto: bool = False,
        resume: bool = False,
        resume_from: object = None,
    ) -> Subscription:
        """Spec §6.1. Raises ``ProtocolError`` with ``channel`` = the name as sent.

        With ``resume``, the stored messages after ``resume_from`` follow the confirmation
        (spec §24.1, ``recovery.py``); a ``resume_from`` that cannot be honoured is no error.
        """
        sub_claims = None if token is None else self._auth.verify_subscribe(token, conn, sent)
        extra = sub_claims.grants.alias_target if sub_claims is not None else None
        sent, channel = resolve_sent(conn, sent, extra)
        sub = self._admit(conn, sent, channel, sub_claims, auto=auto)
        consumed = sub_claims is not None and await self._auth.consume_subscribe(sub_claims, sent)
        given_back = sub_claims if consumed else None
        return await self._create(conn, sent, sub, given_back, resume, resume_from)

    async def subscribe_server(self, conn: Connection, request: ServerSubscribe) -> Subscription:
        """A server-side subscribe (spec §24.2): the request's directives are layered over the
        connect token as a subscribe token's would be, and no ``subscribe`` grant is needed.
        The client gets ``hotsock.subscribed`` with ``autoSubscribed: true``, so hotsock-js
        keeps the channel although the app never bound it.

        Raises:
            ProtocolError: ``ALREADY_SUBSCRIBED``, ``PRESENCE_CHANNEL_USER_ID_REQUIRED``,
                ``PRESENCE_CHANNEL_CAPACITY_REACHED`` or the subscription limit.
        """
        channel = request.channel
        sub = self._admit(conn, channel, channel, request, auto=True, forced=True)
        return await self._create(conn, channel, sub, None, False, None)

    async def _create(
        self,
        conn: Connection,
        sent: str,
        sub: Subscription,
        given_back: Claims | None,
        resume: bool,
        resume_from: object,
    ) -> Subscription:
        """Spec §6.1 steps 5-7 for an admitted subscription; ``given_back`` is a consumed
        ``singleUse`` token to release when the subscribe fails; ``resume`` as for
        ``subscribe``."""
        channel, auto = sub.channel, sub.auto
        if conn.closed or channel in conn.subscriptions:  # changed while awaiting the claim
            raise ProtocolError(ErrorCode.ALREADY_SUBSCRIBED, "already subscribed", channel=sent)
        update = None
        if is_presence(channel) and sub.uid:
            try:
                update = await self._presence.join(channel, conn.id, sub.uid, sub.umd)
            except ProtocolError as exc:
                if given_back is not None:  # a refused subscribe does not use it up
                    await self._auth.release(given_back)
                exc.channel = sent
                raise
        sub.subscribed_ms = now_ms()  # the history bound starts once the joins are done
        conn.subscriptions[channel] = sub
        holding = self._recovery.hold(conn, channel) if resume else None
        if holding is None:
            self._fanout.add(channel, conn)
        try:
            # every subscribe awaits the node's interest (idempotent, cheap once held), so the
            # confirmation never goes out before messages of the channel can reach this node
            await self._broker.subscribe(channel)
        except Exception:
            await self._undo(conn, sub, given_back)
            raise
        await self._announce_join(conn, sub, update)
        replay = (
            await self._recovery.replay(sub, resume_from, holding) if holding is not None else None
        )
        confirmation = protocol.subscribed_frame(
            channel,
            uid=sub.uid,
            umd=sub.umd,
            alias=sub.alias,
            members=update.members if update is not None else None,
            auto=auto,
            resumed=replay.resumed if replay is not None else None,
            replayed=len(replay.records) if replay is not None else 0,
        )
        # hotsock.subscribed, then the observed storage entries (spec §6.1 step 7), then what a
        # resume replays and what arrived meanwhile
        await self._storage.confirm(conn, sub, confirmation)
        if holding is not None and replay is not None:
            holding.hand_over(replay)
        if self.debug:
            log.debug("= %s subscribed to %s", conn.id, channel)
        if conn.closed and self._connections.get(conn.id) is not conn:
            # the connection ended while we awaited: undo what its cleanup could not see
            if conn.subscriptions.get(channel) is sub:
                await self.remove(conn, sub)
        return sub

    async def unsubscribe(self, conn: Connection, sent: str) -> None:
        """Spec §6.2."""
        channel = sent if sent in conn.subscriptions else None
        if channel is None:
            for sub in conn.subscriptions.values():
                if sub.alias == sent:
                    channel = sub.channel
                    break
        if channel is None:
            raise ProtocolError(ErrorCode.NOT_SUBSCRIBED, "not subscribed", channel=sent)
        sub = conn.subscriptions[channel]
        conn.send(
            Frame(protocol.unsubscribed_frame(channel, uid=sub.uid, umd=sub.umd, alias=sub.alias))
        )
        await self.remove(conn, sub)

    async def remove(self, conn: Connection, sub: Subscription) -> None:
        """Unsubscribe side effects (spec §6.2): local fan-out stops at once, then the shared
        presence and count state is updated and announced."""
        self._detach(conn, sub)
        if self._emitter.enabled:
            self._emitter.subscription("hotsock.unsubscribed", conn, sub)
        try:
            # The count goes down before memberRemoved goes out, so a watcher that reacts to
            # the event by reading the channel's info never sees the departed member counted.
            if sub.counted:
                self._emitter.count(sub.channel, await self._broker.count_add(sub.channel, -1))
            if is_presence(sub.channel) and sub.uid:
                update = await self._presence.leave(sub.channel, conn.id, sub.uid)
                if update.change is Change.REMOVED:
                    await self._presence.announce(sub.channel, update, skip=conn.id)
        except Exception:
            log.exception("! shared state update failed removing %s from %s", conn.id, sub.channel)

    async def on_reaped(
        self, channel: str, update: PresenceUpdate | None, count: int | None
    ) -> None:
        """Announce what removing a dead node changed (its connections are gone)."""
        if update is not None:
            await self._presence.announce(channel, update, skip="")
        if count is not None:
            self._emitter.count(channel, count)

    # Private methods

    def _admit(
        self,
        conn: Connection,
        sent: str,
        channel: str,
        sub_claims: Claims | ServerSubscribe | None,
        *,
        auto: bool,
        forced: bool = False,
    ) -> Subscription:
        """The checks that need no round trip; returns the subscription to be made.
        ``sub_claims`` layers its grants, uid and umd over the connect token's; ``forced``
        (an operator's subscribe) skips the ``subscribe`` permission."""
        if channel in conn.subscriptions:
            raise ProtocolError(ErrorCode.ALREADY_SUBSCRIBED, "already subscribed", channel=sent)
        if len(conn.subscriptions) >= self._max_subscriptions:
            raise ProtocolError(
                ErrorCode.SUBSCRIBE_PERMISSION_DENIED,
                f"subscription limit ({self._max_subscriptions}) reached",
                channel=sent,
            )
        perms = Permissions(conn.claims.grants, sub_claims.grants if sub_claims else None)
        if not forced and not perms.can_subscribe(channel):
            raise ProtocolError(
                ErrorCode.SUBSCRIBE_PERMISSION_DENIED,
                "subscribe not permitted for channel",
                channel=sent,
            )
        uid, umd = conn.uid, conn.umd
        if sub_claims is not None:
            uid = sub_claims.uid if sub_claims.has_uid else uid
            umd = sub_claims.umd if sub_claims.has_umd else umd
        if is_presence(channel) and not uid:
            raise ProtocolError(
                ErrorCode.PRESENCE_CHANNEL_USER_ID_REQUIRED,
                "presence channels require a uid",
                channel=sent,
            )
        alias = sub_claims.grants.alias_of(channel) if sub_claims is not None else None
        return Subscription(
            channel=channel,
            alias=alias or conn.claims.grants.alias_of(channel),
            uid=uid,
            umd=umd,
            umd_json=dumps(umd),
            permissions=perms,
            subscribed_ms=0,
            counted=not perms.channel_flag(channel, "omitFromSubCount"),
            auto=auto,
        )

    async def _announce_join(
        self, conn: Connection, sub: Subscription, update: PresenceUpdate | None
    ) -> None:
        if self._emitter.enabled:
            self._emitter.subscription("hotsock.subscribed", conn, sub)
        try:
            if sub.counted:
                self._emitter.count(sub.channel, await self._broker.count_add(sub.channel, 1))
            if update is not None:
                # announced before the joiner's confirmation: once a client has seen its own
                # hotsock.subscribed, the others' memberAdded is already on its way everywhere,
                # so a later joiner on another node does not receive this stale member list
                await self._presence.announce(sub.channel, update, skip=conn.id)
        except UNAVAILABLE as exc:  # the subscription stands; only the announcements are lost
            log.warning(
                "! announcing %s's subscription to %s failed: %s", conn.id, sub.channel, exc
            )

    def _detach(self, conn: Connection, sub: Subscription) -> None:
        """Stop local fan-out of ``sub``'s channel to ``conn``; the node drops its interest in
        the channel when no local subscriber is left."""
        if conn.subscriptions.get(sub.channel) is sub:
            del conn.subscriptions[sub.channel]
        if self._fanout.remove(sub.channel, conn):
            self._background.spawn(self._drop_interest(sub.channel))

    async def _undo(self, conn: Connection, sub: Subscription, consumed: Claims | None) -> None:
        """Roll back a subscribe that failed before its confirmation (nothing was announced)."""
        self._detach(conn, sub)
        try:
            if is_presence(sub.channel) and sub.uid:
                await self._presence.leave(sub.channel, conn.id, sub.uid)
            if consumed is not None:
                await self._auth.release(consumed)
        except Exception:
            log.warning("! could not roll back %s's subscribe to %s", conn.id, sub.channel)

    async def _drop_interest(self, channel: str) -> None:
        if not self._fanout.has_subscribers(channel):  # nobody re-subscribed here meanwhile
            await self._broker.unsubscribe(channel)
