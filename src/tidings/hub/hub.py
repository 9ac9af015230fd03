"""The ``Hub``: owns this node's connections and subscriptions, orders each channel's messages,
persists the stored ones, and fans out what the broker delivers.

Message path (spec §4.8, §8, §9, §15)::

    publish_* ──▶ channel lane (ID minted on entry, so lane order = ID order)
                    │ batch: dedup claims → store.append (group commit) → broker.publish
                    ▼
    broker ──▶ Hub.deliver(channel, deliveries) ──▶ Connection.send_many (same bytes to all)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from tidings.broker.base import Broker, Delivery, Minter, PresenceUpdate, ServeFn
from tidings.config import Settings
from tidings.core import protocol
from tidings.core.ids import (
    is_ulid,
    new_connection_id,
    new_connection_secret,
    new_ulid,
    ulid_floor,
)
from tidings.core.json import dumps
from tidings.core.names import (
    is_presence,
    validate_channel,
    validate_data,
    validate_event,
    validate_store,
)
from tidings.core.permissions import Permissions
from tidings.core.presence import Change, member_event_frame
from tidings.core.tokens import Claims, Scope, SigningKey, TokenGate, check_binding
from tidings.errors import (
    UNAVAILABLE,
    CloseCode,
    ErrorCode,
    ProtocolError,
    StoreError,
    TokenError,
    wire_error,
)
from tidings.events.bus import EventBus
from tidings.hub.connection import Connection, Subscription
from tidings.hub.outbound import Frame, Outlet
from tidings.store.base import MessageRecord, Store

__all__ = ["Hub", "Publication", "PublishResult"]

log = logging.getLogger("tidings.hub")

DEDUP_WINDOW_MS = 5 * 60 * 1000
PAGE_MAX_MESSAGES = 100
PAGE_MAX_BYTES = 1024 * 1024


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rfc3339_seconds(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micros(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class Publication:
    """A message on its way through a channel lane."""

    channel: str
    event: str
    data_json: bytes  # compact JSON of ``data``
    meta_json: bytes | None  # ``meta`` on the socket; None for server messages (spec §5.2)
    uid: str | None
    umd_json: bytes
    store_seconds: int  # 0 not stored, -1 forever
    exclude: str | None  # sender's connection ID when it must not get its own copy
    trigger: str
    connection_id: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    dedup_key: str | None = None
    emit_event: bool = False  # emit hotsock.messagePublished once delivered
    request_id: str = ""  # ULID of the accepting request (event metadata)
    id: str = ""  # minted when its lane processes it, in the channel's publishing turn
    created_ms: int = 0

    def record(self) -> MessageRecord:
        expires = None if self.store_seconds < 0 else self.created_ms + self.store_seconds * 1000
        return MessageRecord(
            id=self.id,
            channel=self.channel,
            event=self.event,
            data=self.data_json.decode(),
            uid=self.uid,
            umd=self.umd_json.decode(),
            created_ms=self.created_ms,
            expires_ms=expires,
            trigger=self.trigger,
            connection_id=self.connection_id,
            source_ip=self.source_ip,
            user_agent=self.user_agent,
        )


@dataclass(frozen=True, slots=True)
class PublishResult:
    channel: str
    event: str
    id: str  # the message ID (the original one for a deduplicated publish)
    duplicate: bool = False


class _Lane:
    """One channel's FIFO of publications, drained by one task at a time."""

    __slots__ = ("pending", "task")

    def __init__(self) -> None:
        self.pending: deque[tuple[Publication, asyncio.Future[PublishResult]]] = deque()
        self.task: asyncio.Task[None] | None = None


class Hub:
    """This node's connections, subscriptions and channel lanes."""

    def __init__(
        self, *, settings: Settings, store: Store, broker: Broker, events: EventBus | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.events = events
        self._emitting = events is not None and events.enabled  # skip building unused events
        self.debug = log.isEnabledFor(logging.DEBUG)  # read once: debug logs stay off hot paths
        self.gate = TokenGate(
            keys=[
                SigningKey.from_setting(k.method, k.value.value, k.kid)
                for k in settings.auth.signing_keys
            ],
            audience=settings.auth.audience,
            issuer=settings.auth.issuer,
            leeway=settings.auth.leeway_seconds,
        )
        self.connections: dict[str, Connection] = {}
        self.draining = False
        self.stats = {"connections_opened": 0, "messages_published": 0, "frames_delivered": 0}
        self._channels: dict[str, dict[str, Connection]] = {}  # channel -> conn ID -> conn
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    # Lifecycle

    async def start(self, *, serve: ServeFn | None = None) -> None:
        """Open the backends; ``serve`` answers Client HTTP API calls other nodes forward."""
        await self.store.open()
        if self.events is not None:
            await self.events.start()
        await self.broker.start(self.deliver, serve=serve, reaped=self._on_reaped)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def drain(self) -> None:
        """Graceful stop: close every connection with 1001, finish queued publications, flush
        the store, and release the backends."""
        self.draining = True
        conns = list(self.connections.values())
        for conn in conns:
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
        # concurrently: with a shared broker each cleanup waits on round trips
        await asyncio.gather(*(self.close_connection(conn) for conn in conns))
        lanes = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if lanes:
            await asyncio.wait(lanes, timeout=self.settings.timeouts.drain_seconds)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.events is not None:
            await self.events.aclose()  # after the last disconnect events were emitted
        await self.store.aclose()
        await self.broker.aclose()

    async def subscriptions_count(self, channel: str) -> int:
        """``subscriptionsCount`` of a channel across the cluster (spec §6.4)."""
        return await self.broker.count(channel)

    async def members(self, channel: str) -> list[dict[str, Any]] | None:
        """Presence members (deduplicated by uid), or None for a standard channel."""
        if not is_presence(channel):
            return None
        return await self.broker.presence_members(channel)

    # Connections

    async def authenticate(self, token: object) -> Claims:
        """Verify a connect token (spec §4.1) and consume it when ``singleUse``.

        Raises:
            TokenError: the token is refused; answer 401 ``INVALID_CONNECT_TOKEN``.
        """
        claims = self.gate.verify(token, scope=Scope.CONNECT, now=time.time())
        await self._consume_single_use(claims, "connect token")
        return claims

    def open_connection(
        self,
        claims: Claims,
        outlet: Outlet,
        *,
        source_ip: str | None = None,
        user_agent: str | None = None,
    ) -> Connection:
        """Register a connection and send ``hotsock.connected``. The caller must then run
        ``start_connection`` before feeding client frames, and ``close_connection`` at the end."""
        connected = now_ms()
        timeouts = self.settings.timeouts
        conn = Connection(
            connection_id=new_connection_id(),
            secret=new_connection_secret(),
            claims=claims,
            outlet=outlet,
            connected_ms=connected,
            expires_ms=connected + int(timeouts.max_connection_seconds * 1000),
            source_ip=source_ip,
            user_agent=user_agent,
            max_frames=self.settings.limits.queue_max_frames,
            max_bytes=self.settings.limits.queue_max_bytes,
        )
        while conn.id in self.connections:  # 88 random bits: a clash is theoretical
            conn.id = new_connection_id()
        self.connections[conn.id] = conn
        self.stats["connections_opened"] += 1
        conn.send(
            Frame(
                protocol.connected_frame(
                    conn.id, rfc3339_seconds(conn.expires_ms), conn.secret, conn.uid, conn.umd
                )
            )
        )
        self._arm_timers(conn)
        if self.debug:
            log.debug("= connected %s uid=%r from %s", conn.id, conn.uid, source_ip)
        if self._emitting:
            self._emit_connection("hotsock.connected", conn, None)
        return conn

    async def start_connection(self, conn: Connection) -> None:
        """Register the connection cluster-wide, then subscribe the connect token's
        ``autoSubscribe`` channels in token order (spec §6.5)."""
        await self.broker.register_connection(conn.id)
        for channel in conn.claims.grants.auto_subscribe():
            if conn.closed:
                return
            try:
                await self.subscribe(conn, channel, None, auto=True)
            except ProtocolError as exc:
                conn.send(
                    Frame(protocol.error_frame(exc.code, exc.message, exc.channel or channel))
                )

    async def close_connection(self, conn: Connection) -> None:
        """Remove a closed connection and its subscriptions (spec §4.7). Idempotent."""
        if self.connections.get(conn.id) is not conn:
            return
        conn.close(CloseCode.NORMAL, "")
        del self.connections[conn.id]  # its HTTP credentials die now
        for sub in list(conn.subscriptions.values()):
            await self._remove_subscription(conn, sub)
        try:
            await self.broker.forget_connection(conn.id)
        except Exception:
            log.warning("! could not unregister connection %s", conn.id)
        if self.debug:
            log.debug("x disconnected %s", conn.id)
        if self._emitting:
            self._emit_connection("hotsock.disconnected", conn, time.time())

    def authorize_http(self, connection_id: str | None, secret: str | None) -> Connection:
        """Find the live connection for Client HTTP API credentials (constant-time check).

        Raises:
            ProtocolError: ``UNAUTHORIZED``.
        """
        conn = self.connections.get(connection_id or "")
        expected = conn.secret.encode() if conn is not None else b"\0" * 20
        given = (secret or "").encode("utf-8", "surrogatepass")
        if conn is None or conn.closed or not hmac.compare_digest(expected, given):
            if self.debug:
                log.debug("! Client HTTP API call refused for connection %r", connection_id)
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "unknown connection or wrong secret")
        return conn

    async def handle_frame(self, conn: Connection, text: str | bytes) -> None:
        """Process one client frame; failures are answered with ``hotsock.error``."""
        conn.last_activity = time.monotonic()
        command: protocol.Command | None = None
        try:
            command = protocol.parse_client_frame(text)
            if isinstance(command, protocol.ClientMessage):
                self.publish_client(conn, command.channel, command.event, command.data)
            elif isinstance(command, protocol.Subscribe):
                await self.subscribe(conn, command.channel, command.token)
            elif isinstance(command, protocol.Unsubscribe):
                await self.unsubscribe(conn, command.channel)
            elif isinstance(command, protocol.Ping):
                conn.send(Frame(protocol.pong_frame()))
            elif isinstance(command, protocol.Heartbeat):
                conn.last_heartbeat = conn.last_activity
            # hotsock.pong needs no answer (spec §4.6)
        except ProtocolError as exc:
            if self.debug:
                log.debug("! %s refused: %s (channel %r)", conn.id, exc, exc.channel)
            conn.send(Frame(protocol.error_frame(exc.code, exc.message, exc.channel)))
        except Exception as exc:
            if not isinstance(exc, UNAVAILABLE):
                log.exception("! unexpected failure handling a frame of %s", conn.id)
            sent = (
                command.channel
                if isinstance(command, (protocol.Subscribe, protocol.Unsubscribe))
                else None
            )
            conn.send(Frame(protocol.error_frame(*wire_error(exc), sent)))

    # Subscriptions

    async def subscribe(
        self, conn: Connection, sent: str, token: str | None, *, auto: bool = False
    ) -> Subscription:
        """Spec §6.1. Raises ``ProtocolError`` with ``channel`` = the name as sent."""
        sub_claims: Claims | None = None
        if token is not None:
            try:
                sub_claims = self.gate.verify(token, scope=Scope.SUBSCRIBE, now=time.time())
                check_binding(sub_claims, connection_id=conn.id, uid=conn.uid)
            except TokenError as exc:
                raise ProtocolError(
                    ErrorCode.INVALID_SUBSCRIBE_TOKEN, str(exc), channel=sent
                ) from exc
        extra = sub_claims.grants.alias_target if sub_claims is not None else None
        channel = conn.resolve_channel(sent, extra)
        validate_channel(channel, sent_as=sent)
        if channel in conn.subscriptions:
            raise ProtocolError(ErrorCode.ALREADY_SUBSCRIBED, "already subscribed", channel=sent)
        if len(conn.subscriptions) >= self.settings.limits.max_subscriptions:
            raise ProtocolError(
                ErrorCode.SUBSCRIBE_PERMISSION_DENIED,
                f"subscription limit ({self.settings.limits.max_subscriptions}) reached",
                channel=sent,
            )
        perms = Permissions(conn.claims.grants, sub_claims.grants if sub_claims else None)
        if not perms.can_subscribe(channel):
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
        consumed = False
        if sub_claims is not None:
            try:
                consumed = await self._consume_single_use(sub_claims, "subscribe token")
            except TokenError as exc:
                raise ProtocolError(
                    ErrorCode.INVALID_SUBSCRIBE_TOKEN, str(exc), channel=sent
                ) from exc
        if conn.closed or channel in conn.subscriptions:  # changed while awaiting the claim
            raise ProtocolError(ErrorCode.ALREADY_SUBSCRIBED, "already subscribed", channel=sent)
        update = None
        if is_presence(channel) and uid:
            try:
                update = await self.broker.presence_join(
                    channel, conn.id, uid, umd, max_bytes=self.settings.limits.presence_max_bytes
                )
            except ProtocolError as exc:
                if consumed and sub_claims is not None:  # a refused subscribe does not use it
                    await self.broker.release(f"jti:{sub_claims.jti}", "used")
                exc.channel = sent
                raise
        alias = None
        if sub_claims is not None:
            alias = sub_claims.grants.alias_of(channel)
        alias = alias or conn.claims.grants.alias_of(channel)
        sub = Subscription(
            channel=channel,
            alias=alias,
            uid=uid,
            umd=umd,
            umd_json=dumps(umd),
            permissions=perms,
            subscribed_ms=now_ms(),
            counted=not perms.channel_flag(channel, "omitFromSubCount"),
            auto=auto,
        )
        conn.subscriptions[channel] = sub
        self._channels.setdefault(channel, {})[conn.id] = conn
        try:
            # every subscribe awaits the node's interest (idempotent, cheap once held), so the
            # confirmation never goes out before messages of the channel can reach this node
            await self.broker.subscribe(channel)
        except Exception:
            await self._undo_subscribe(conn, sub, sub_claims if consumed else None)
            raise
        if self._emitting:
            self._emit_subscription("hotsock.subscribed", conn, sub)
        try:
            if sub.counted:
                self._emit_count(channel, await self.broker.count_add(channel, 1))
            if update is not None:
                # announced before the joiner's confirmation: once a client has seen its own
                # hotsock.subscribed, the others' memberAdded is already on its way everywhere,
                # so a later joiner on another node does not receive this stale member list
                await self._member_event(channel, update, skip=conn.id)
        except UNAVAILABLE as exc:  # the subscription stands; only the announcements are lost
            log.warning("! announcing %s's subscription to %s failed: %s", conn.id, channel, exc)
        conn.send(
            Frame(
                protocol.subscribed_frame(
                    channel,
                    uid=uid,
                    umd=umd,
                    alias=alias,
                    members=update.members if update is not None else None,
                    auto=auto,
                )
            )
        )
        if self.debug:
            log.debug("= %s subscribed to %s", conn.id, channel)
        if conn.closed and self.connections.get(conn.id) is not conn:
            # the connection ended while we awaited: undo what its cleanup could not see
            if conn.subscriptions.get(channel) is sub:
                await self._remove_subscription(conn, sub)
        return sub

    def _detach(self, conn: Connection, sub: Subscription) -> None:
        """Stop local fan-out of ``sub``'s channel to ``conn``; the node drops its interest in
        the channel when no local subscriber is left."""
        if conn.subscriptions.get(sub.channel) is sub:
            del conn.subscriptions[sub.channel]
        local = self._channels.get(sub.channel)
        if local is not None:
            local.pop(conn.id, None)
            if not local:
                del self._channels[sub.channel]
                self._spawn(self._drop_interest(sub.channel))

    async def _undo_subscribe(
        self, conn: Connection, sub: Subscription, consumed: Claims | None
    ) -> None:
        """Roll back a subscribe that failed before its confirmation (nothing was announced)."""
        self._detach(conn, sub)
        try:
            if is_presence(sub.channel) and sub.uid:
                await self.broker.presence_leave(sub.channel, conn.id, sub.uid)
            if consumed is not None:
                await self.broker.release(f"jti:{consumed.jti}", "used")
        except Exception:
            log.warning("! could not roll back %s's subscribe to %s", conn.id, sub.channel)

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
        await self._remove_subscription(conn, sub)

    async def _remove_subscription(self, conn: Connection, sub: Subscription) -> None:
        """Unsubscribe side effects (spec §6.2): local fan-out stops at once, then the shared
        presence and count state is updated and announced."""
        self._detach(conn, sub)
        if self._emitting:
            self._emit_subscription("hotsock.unsubscribed", conn, sub)
        try:
            if is_presence(sub.channel) and sub.uid:
                update = await self.broker.presence_leave(sub.channel, conn.id, sub.uid)
                if update.change is Change.REMOVED:
                    await self._member_event(sub.channel, update, skip=conn.id)
            if sub.counted:
                self._emit_count(sub.channel, await self.broker.count_add(sub.channel, -1))
        except Exception:
            log.exception("! shared state update failed removing %s from %s", conn.id, sub.channel)

    async def _on_reaped(
        self, channel: str, update: PresenceUpdate | None, count: int | None
    ) -> None:
        """Announce what removing a dead node changed (its connections are gone)."""
        if update is not None:
            await self._member_event(channel, update, skip="")
        if count is not None:
            self._emit_count(channel, count)

    async def _drop_interest(self, channel: str) -> None:
        if channel not in self._channels:  # nobody re-subscribed here in the meantime
            await self.broker.unsubscribe(channel)

    async def _member_event(self, channel: str, update: PresenceUpdate, *, skip: str) -> None:
        """Announce a presence change to every subscriber of the channel on every node except
        ``skip``, and as a backend event."""
        if update.member is None or update.change is Change.NONE:
            return
        if self._emitting:
            self._emit(
                update.change.value,
                "channelMember",
                {**update.member, "members": update.members},
                {"channel": channel},
            )
        frame = member_event_frame(update.change, channel, update.member, dumps(update.members))
        await self.broker.publish(channel, [Delivery(frame, skip)])

    # Publishing

    def publish_client(
        self,
        conn: Connection,
        channel_sent: Any,
        event: Any,
        data: Any,
        *,
        trigger: str = "client.websocket",
    ) -> asyncio.Future[PublishResult]:
        """Spec §8: validate and authorise a client message, then queue it in its lane.

        Raises ``ProtocolError`` for refusals. The returned future resolves once the message is
        stored (when stored) and handed to the broker; WebSocket callers need not await it.
        """
        if not isinstance(channel_sent, str):
            validate_channel(channel_sent)
        sent = channel_sent
        channel = conn.resolve_channel(sent)
        validate_channel(channel, sent_as=sent)
        try:
            event = validate_event(event)
            data_json = validate_data(data)
        except ProtocolError as exc:
            exc.channel = sent
            raise
        sub = conn.subscriptions.get(channel)
        perms = sub.permissions if sub is not None else conn.permissions
        if not perms.can_publish(channel, event, subscribed=sub is not None):
            raise ProtocolError(
                ErrorCode.PUBLISH_PERMISSION_DENIED,
                f"publish of event {event!r} not permitted for channel",
                channel=sent,
            )
        uid, umd_json = (sub.uid, sub.umd_json) if sub is not None else (conn.uid, dumps(conn.umd))
        pub = Publication(
            channel=channel,
            event=event,
            data_json=data_json,
            meta_json=protocol.meta_json(uid, umd_json),
            uid=uid,
            umd_json=umd_json,
            store_seconds=perms.store_seconds(channel, event),
            exclude=None if perms.echo(channel, event) else conn.id,
            trigger=trigger,
            connection_id=conn.id,
            source_ip=conn.source_ip,
            user_agent=conn.user_agent,
            emit_event=perms.emit_pubsub(channel, event),
        )
        future = self.enqueue(pub)
        if trigger == "client.websocket":
            future.add_done_callback(lambda f: self._report_failure(conn, sent, f))
        return future

    def prepare_server_publication(self, body: Any, *, trigger: str = "server.http") -> Publication:
        """Validate one ``POST /publish`` message (spec §15) without queueing it."""
        if not isinstance(body, dict):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "each message must be a JSON object")
        channel = validate_channel(body.get("channel"))
        event = validate_event(body.get("event"))
        data_json = validate_data(body.get("data"))
        store = validate_store(body.get("store"))
        dedup = body.get("deduplicationId")
        if dedup is not None and not isinstance(dedup, str):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "deduplicationId must be a string")
        for flag in ("eagerIdGeneration", "emitPubSubEvent"):
            if body.get(flag) is not None and not isinstance(body.get(flag), bool):
                raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{flag} must be a boolean")
        if body.get("scheduleExpression") is not None:
            raise ProtocolError(
                ErrorCode.INVALID_SCHEDULE,
                "scheduled publishing is not supported by this server yet",
            )
        return Publication(
            channel=channel,
            event=event,
            data_json=data_json,
            meta_json=None,
            uid=None,
            umd_json=b"null",
            store_seconds=store,
            exclude=None,
            trigger=trigger,
            dedup_key=f"dedup:{dedup}" if dedup else None,
            emit_event=body.get("emitPubSubEvent") is True,
        )

    def enqueue(self, pub: Publication) -> asyncio.Future[PublishResult]:
        """Queue a validated publication in its channel lane; its ID is minted when the lane
        processes it."""
        pub.created_ms = now_ms()
        if pub.emit_event:
            pub.request_id = new_ulid(pub.created_ms)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PublishResult] = loop.create_future()
        lane = self._lanes.get(pub.channel)
        if lane is None:
            lane = self._lanes[pub.channel] = _Lane()
        lane.pending.append((pub, future))
        if lane.task is None:
            lane.task = loop.create_task(self._run_lane(pub.channel, lane))
        return future

    async def _run_lane(self, channel: str, lane: _Lane) -> None:
        try:
            while lane.pending:
                batch = list(lane.pending)
                lane.pending.clear()
                await self._process_batch(channel, batch)
        finally:
            lane.task = None
            if not lane.pending and self._lanes.get(channel) is lane:
                del self._lanes[channel]

    async def _process_batch(
        self, channel: str, batch: list[tuple[Publication, asyncio.Future[PublishResult]]]
    ) -> None:
        try:
            async with self.broker.ordering(channel) as mint:
                await self._publish_batch(channel, batch, mint)
        except Exception as exc:  # the turn itself failed (broker unreachable)
            if isinstance(exc, UNAVAILABLE):
                log.warning("! publishing on %s refused: %s", channel, exc)
            else:
                log.exception("! publishing turn failed on %s", channel)
            await self._fail_all([(p, f) for p, f in batch if not f.done()], exc)

    async def _publish_batch(
        self,
        channel: str,
        batch: list[tuple[Publication, asyncio.Future[PublishResult]]],
        mint: Minter,
    ) -> None:
        live: list[tuple[Publication, asyncio.Future[PublishResult]]] = []
        for pub, future in batch:
            pub.id = mint(now_ms())
            if pub.dedup_key is not None:
                try:
                    original = await self.broker.claim_once(pub.dedup_key, pub.id, DEDUP_WINDOW_MS)
                except Exception as exc:
                    _fail(future, exc)
                    continue
                if original is not None:
                    _resolve(
                        future, PublishResult(pub.channel, pub.event, original, duplicate=True)
                    )
                    continue
            live.append((pub, future))
        records = [pub.record() for pub, _ in live if pub.store_seconds != 0]
        if records:
            try:
                await self.store.append(records)
            except Exception as exc:
                if isinstance(exc, UNAVAILABLE):
                    log.warning("! storing on %s failed: %s", channel, exc)
                elif not isinstance(exc, StoreError):
                    log.exception("! store append failed on %s", channel)
                failed = [(p, f) for p, f in live if p.store_seconds != 0]
                await self._fail_all(failed, exc)
                live = [(p, f) for p, f in live if p.store_seconds == 0]
        if not live:
            return
        deliveries = [
            Delivery(
                protocol.message_frame(p.id, p.event, p.channel, p.data_json, p.meta_json),
                p.exclude,
            )
            for p, _ in live
        ]
        try:
            await self.broker.publish(channel, deliveries)
        except Exception as exc:
            # a stored message is durable and listable, so it is acknowledged even though its
            # live delivery was lost; an unstored one existed only in flight, so it fails (503)
            if isinstance(exc, UNAVAILABLE):
                log.warning("! live delivery on %s lost: %s", channel, exc)
            else:
                log.exception("! broker publish failed on %s; live delivery lost", channel)
            await self._fail_all([(p, f) for p, f in live if p.store_seconds == 0], exc)
            live = [(p, f) for p, f in live if p.store_seconds != 0]
        self.stats["messages_published"] += len(live)
        for pub, future in live:
            _resolve(future, PublishResult(pub.channel, pub.event, pub.id))
            if pub.emit_event and self._emitting:
                self._emit_published(pub)

    async def _fail_all(
        self, items: list[tuple[Publication, asyncio.Future[PublishResult]]], exc: BaseException
    ) -> None:
        """Fail publications that were not delivered, releasing their deduplication claims so a
        retry with the same ``deduplicationId`` is not mistaken for a duplicate."""
        for pub, future in items:
            _fail(future, exc)
            if pub.dedup_key is not None:
                try:
                    await self.broker.release(pub.dedup_key, pub.id)
                except Exception:
                    log.exception("! could not release deduplication claim")

    def _report_failure(
        self, conn: Connection, channel: str, future: asyncio.Future[PublishResult]
    ) -> None:
        exc = None if future.cancelled() else future.exception()
        if exc is None:
            return
        code, reason = wire_error(exc)
        message = f"message could not be published: {reason}"
        conn.send(Frame(protocol.error_frame(code, message, channel)))

    # Fan-out

    def deliver(self, channel: str, deliveries: Sequence[Delivery]) -> None:
        """Local fan-out, called by the broker in channel order. Never blocks."""
        local = self._channels.get(channel)
        if not local:
            return
        frames = [Frame(d.payload, d.exclude) for d in deliveries]
        excluded = {f.exclude for f in frames if f.exclude is not None}
        now = time.monotonic()  # outbound frames count as activity for the idle timeout
        if not excluded:
            for conn in local.values():
                conn.last_activity = now
                conn.send_many(frames)
        else:
            for conn in list(local.values()):
                conn.last_activity = now
                if conn.id in excluded:
                    conn.send_many([f for f in frames if f.exclude != conn.id])
                else:
                    conn.send_many(frames)
        self.stats["frames_delivered"] += len(frames) * len(local)

    # History (spec §9.3, §10.2)

    async def list_messages(self, conn: Connection, body: dict[str, Any]) -> bytes:
        """``listMessages``: returns the JSON response body."""
        sent = body.get("channel")
        if not isinstance(sent, str):
            validate_channel(sent)
            raise AssertionError("unreachable")  # pragma: no cover
        channel = conn.resolve_channel(sent)
        validate_channel(channel, sent_as=sent)
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
        records = await self.store.list_messages(
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

    # Backend events (spec §17.2)

    def _emit(
        self, type_: str, data_type: str, data: dict[str, Any], metadata: dict[str, Any] | None
    ) -> None:
        if self.events is not None:
            self.events.emit(type_, data_type, data, metadata)

    def _emit_connection(self, type_: str, conn: Connection, disconnected: float | None) -> None:
        self._emit(
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

    def _emit_subscription(self, type_: str, conn: Connection, sub: Subscription) -> None:
        data = {"channel": sub.channel, "connectionId": conn.id, "uid": sub.uid, "umd": sub.umd}
        self._emit(type_, "subscription", data, {"channel": sub.channel})

    def _emit_count(self, channel: str, count: int) -> None:
        if self._emitting:
            data = {"name": channel, "subscriptionsCount": count}
            self._emit("hotsock.channelUpdated", "channel", data, {"channel": channel})

    def _emit_published(self, pub: Publication) -> None:
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
        self._emit("hotsock.messagePublished", "message", data, metadata)

    # Private methods

    async def _consume_single_use(self, claims: Claims, what: str) -> bool:
        """Claim a ``singleUse`` token's ``jti``; True when one was consumed."""
        if not claims.single_use or claims.jti is None:
            return False
        ttl_ms = max(1, int((claims.exp - time.time()) * 1000))
        if await self.broker.claim_once(f"jti:{claims.jti}", "used", ttl_ms) is not None:
            raise TokenError(f"{what} was already used (singleUse)")
        return True

    def _arm_timers(self, conn: Connection) -> None:
        """Start the connection's watchdog: one timer per connection that enforces the lifetime
        cap, the idle timeout and ``heartbeatTimeout``, and sends ``hotsock.keepAlive``. It is
        re-armed for the nearest deadline, so activity costs only an attribute write."""
        t = self.settings.timeouts
        start = time.monotonic()
        conn.last_activity = conn.last_heartbeat = start
        if conn.claims.keep_alive:
            conn.next_keepalive = start + t.keepalive_seconds
        self._watchdog(conn, start + t.max_connection_seconds)

    def _watchdog(self, conn: Connection, expires: float) -> None:
        if conn.closed:
            return
        t = self.settings.timeouts
        now = time.monotonic()
        if now >= conn.next_keepalive:
            conn.send(Frame(protocol.keepalive_frame()))
            conn.next_keepalive = now + t.keepalive_seconds
        deadlines = [(expires, "connection expired")]
        if t.idle_timeout_seconds > 0:
            deadlines.append((conn.last_activity + t.idle_timeout_seconds, "idle timeout"))
        if conn.claims.heartbeat_timeout:
            deadlines.append(
                (conn.last_heartbeat + conn.claims.heartbeat_timeout, "heartbeat timeout")
            )
        due, reason = min(deadlines)
        if now >= due:
            conn.close(CloseCode.GOING_AWAY, reason)
            return
        wake = min(due, conn.next_keepalive)
        conn.timer = asyncio.get_running_loop().call_later(
            wake - now, self._watchdog, conn, expires
        )

    async def _sweep_forever(self) -> None:
        interval = self.settings.timeouts.sweep_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                while await self.store.sweep(now_ms=now_ms(), limit=1000) >= 1000:
                    await asyncio.sleep(0)
            except Exception:
                log.exception("! expired-message sweep failed")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def history_item(rec: MessageRecord) -> bytes:
    """A stored record as ``listMessages`` returns it (spec §9.4)."""
    head = dumps({"id": rec.id, "event": rec.event, "channel": rec.channel})
    meta = protocol.meta_json(rec.uid, rec.umd.encode())
    return head[:-1] + b',"data":' + rec.data.encode() + b',"meta":' + meta + b"}"


def _resolve(future: asyncio.Future[PublishResult], result: PublishResult) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[PublishResult], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
