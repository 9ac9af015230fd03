"""The ``Hub``: this node's registry of connections. It wires the feature modules together and
is the one object the adapters talk to.

Where things live (see docs/design.md for the whole map)::

    auth.py           tokens, singleUse claims, Client HTTP API credentials, API keys
    commands.py       the WebSocket frame switch
    subscriptions.py  subscribe / unsubscribe / autoSubscribe, counts, node interest
    presence.py       presence joins, leaves and member events
    recovery.py       resume on subscribe: replay, then the hand-over to live delivery
    publishing.py     channel lanes: IDs, dedup, store-then-publish
    scheduler.py      scheduled messages: acceptance and the due-time loop
    fanout.py         channel → local subscribers, delivery of what the broker carries
    history.py        listMessages and the expired-message sweeper
    reactions.py      message reactions and listReactions
    umd.py            umdUpdate / umdPropagate
    storage.py        channel storage: writes, reads, observers, expiry
    metrics.py        the node's Prometheus metrics
    limits.py         rate and connection limits
    channel_info.py   getChannelInfo and the admin channel figures
    control.py        cluster-wide commands (broadcast to every node)
    moderation.py     disconnect, list, subscribe and unsubscribe connections from the API
    revocations.py    revoked tokens: cached, refreshed, enforced on live connections
    emitter.py        backend-event payloads
    connection.py     one connection, its bounded queue and its watchdog
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from tidings._refusals import refusals
from tidings.broker.base import Broker, BrokerStats, ServeFn
from tidings.config import Settings
from tidings.core import protocol
from tidings.core.ids import new_connection_id, new_connection_secret
from tidings.core.limits import message_rate
from tidings.core.moderation import Disconnect
from tidings.core.requests import ServerPublish
from tidings.core.revocations import RevocationKind, RevocationSet
from tidings.core.storage import StorageWrite
from tidings.core.tokens import Claims
from tidings.errors import CloseCode
from tidings.events.bus import EventBus
from tidings.hub._common import Background, now_ms, rfc3339_seconds
from tidings.hub.auth import Auth
from tidings.hub.channel_info import ChannelInfo
from tidings.hub.commands import Commands
from tidings.hub.connection import Connection, arm_watchdog
from tidings.hub.control import Control
from tidings.hub.emitter import Emitter
from tidings.hub.fanout import Fanout
from tidings.hub.history import History
from tidings.hub.limits import Limits
from tidings.hub.metrics import NodeMetrics
from tidings.hub.moderation import Moderation
from tidings.hub.outbound import Frame, Outlet
from tidings.hub.presence import Presence
from tidings.hub.publishing import Publication, Publisher, PublishResult
from tidings.hub.reactions import Reactions
from tidings.hub.recovery import Recovery
from tidings.hub.revocations import Revocations
from tidings.hub.scheduler import Scheduler
from tidings.hub.storage import Storage
from tidings.hub.subscriptions import Subscriptions
from tidings.hub.umd import UmdUpdates
from tidings.store.base import Store

__all__ = ["Hub", "Publication", "PublishResult"]

log = logging.getLogger("tidings.hub")


class Hub:
    """This node's connections, and the feature modules that act on them."""

    def __init__(
        self, *, settings: Settings, store: Store, broker: Broker, events: EventBus | None = None
    ) -> None:
        self.settings = settings  # read by the adapters (limits, CORS, proxies)
        self._store = store
        self._broker = broker
        self._events = events
        self.debug = log.isEnabledFor(logging.DEBUG)  # read once: debug logs stay off hot paths
        self.connections: dict[str, Connection] = {}
        self.draining = False  # set by drain(): refuse new connections, report unhealthy
        self.connections_opened = 0
        server = settings.server
        name = server.node_name or f"{socket.gethostname()}:{server.port}"
        self.metrics = NodeMetrics(name)  # rendered by /metrics
        self._background = Background()
        self._sweeper: asyncio.Task[None] | None = None
        self._storage_sweeper: asyncio.Task[None] | None = None
        self._revocation_refresher: asyncio.Task[None] | None = None
        self._emitter = Emitter(events)
        revoked = RevocationSet()
        self._auth = Auth(settings=settings, broker=broker, revoked=revoked)
        self._control = Control(broker=broker)
        self._fanout = Fanout(self.metrics)
        self._publisher = Publisher(
            store=store,
            broker=broker,
            emitter=self._emitter,
            metrics=self.metrics,
            fanout=self._fanout,
        )
        self.metrics.watch(self._gauges, self._counters)
        if events is not None and events.dispatcher is not None:
            events.dispatcher.observe_attempt = self.metrics.webhook_delivery.observe
        self._history = History(
            store=store, sweep_interval=settings.timeouts.sweep_interval_seconds
        )
        self._storage = Storage(
            store=store,
            publisher=self._publisher,
            emitter=self._emitter,
            sweep_interval=settings.timeouts.sweep_interval_seconds,
        )
        self._publisher.storage = self._storage
        self._scheduler = Scheduler(store=store, publisher=self._publisher, storage=self._storage)
        presence = Presence(
            broker=broker, emitter=self._emitter, max_bytes=settings.limits.presence_max_bytes
        )
        self._subscriptions = Subscriptions(
            settings=settings,
            broker=broker,
            auth=self._auth,
            fanout=self._fanout,
            presence=presence,
            storage=self._storage,
            recovery=Recovery(
                store=store,
                fanout=self._fanout,
                max_messages=settings.limits.resume_max_messages,
                max_frames=settings.limits.queue_max_frames,
            ),
            emitter=self._emitter,
            background=self._background,
            connections=self.connections,
        )
        self._reactions = Reactions(store=store, publisher=self._publisher)
        self._umd = UmdUpdates(auth=self._auth, presence=presence, emitter=self._emitter)
        self._channel_info = ChannelInfo(broker=broker)
        self._moderation = Moderation(
            control=self._control,
            node_id=broker.node_id,
            connections=self.connections,
            subscriptions=self._subscriptions,
            close=self.close_connection,
        )
        self._revocations = Revocations(
            store=store,
            control=self._control,
            revoked=revoked,
            connections=self.connections,
            close=self.close_connection,
            ttl_seconds=settings.auth.revocation_ttl_seconds,
            leeway_seconds=settings.auth.leeway_seconds,
            refresh_interval=settings.timeouts.sweep_interval_seconds,
        )
        self._limits = Limits(settings=settings.limits, broker=broker)
        self._commands = Commands(
            limits=self._limits,
            subscriptions=self._subscriptions,
            publisher=self._publisher,
            scheduler=self._scheduler,
            reactions=self._reactions,
            umd=self._umd,
            storage=self._storage,
        )

    # Lifecycle

    async def start(self, *, serve: ServeFn | None = None) -> None:
        """Open the backends; ``serve`` answers Client HTTP API calls other nodes forward."""
        await self._store.open()
        await self._revocations.load()  # before any connection: revoked tokens stay out
        if self._events is not None:
            await self._events.start()
        await self._broker.start(
            self._fanout.deliver,
            serve=serve,
            reaped=self._subscriptions.on_reaped,
            control=self._control.serve,
        )
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._history.sweep_forever())
        self._storage_sweeper = loop.create_task(self._storage.sweep_forever())
        self._scheduler.start()
        self._revocation_refresher = loop.create_task(self._revocations.refresh_forever())

    async def drain(self) -> None:
        """Graceful stop: close every connection with 1001, finish queued publications, flush
        the store, and release the backends."""
        self.draining = True
        conns = list(self.connections.values())
        for conn in conns:
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
        # concurrently: with a shared broker each cleanup waits on round trips
        await asyncio.gather(*(self.close_connection(conn) for conn in conns))
        await self._scheduler.stop(self.settings.timeouts.drain_seconds)
        await self._publisher.drain(self.settings.timeouts.drain_seconds)
        for sweeper in (self._sweeper, self._storage_sweeper, self._revocation_refresher):
            if sweeper is not None:
                sweeper.cancel()
                await asyncio.gather(sweeper, return_exceptions=True)
        if self._events is not None:
            await self._events.aclose()  # after the last disconnect events were emitted
        await self._store.aclose()
        await self._broker.aclose()

    # Queries (admin API, health, metrics)

    async def subscriptions_count(self, channel: str) -> int:
        """``subscriptionsCount`` of a channel across the cluster (spec §6.4)."""
        return await self._channel_info.count(channel)

    async def members(self, channel: str) -> list[dict[str, Any]] | None:
        """Presence members (deduplicated by uid), or None for a standard channel."""
        return await self._channel_info.members(channel)

    def _gauges(self) -> dict[str, float]:
        return {
            "connections": len(self.connections),
            "subscriptions": self._fanout.subscriptions,
            "channels": self._fanout.channels,
        }

    def _counters(self) -> list[tuple[str, dict[str, str], float]]:
        rows: list[tuple[str, dict[str, str], float]] = [
            ("connections_opened", {}, self.connections_opened),
            ("schedules_run", {}, self._scheduler.ran),
        ]
        rows += [
            ("refusals", {"where": where, "code": code}, n)
            for (where, code), n in refusals.counts.items()
        ]
        stats = getattr(self._broker, "stats", None)
        if isinstance(stats, BrokerStats):
            rows += [
                ("broker_round_trips", {}, stats.round_trips),
                ("broker_round_trip_seconds", {}, stats.round_trip_seconds),
                ("broker_reconnects", {}, stats.reconnects),
            ]
        if self._events is not None:
            rows += [(name, {}, value) for name, value in self._events.counters().items()]
        return rows

    # Connections

    async def authenticate(self, token: object) -> Claims:
        """Verify a connect token (spec §4.1) and consume it when ``singleUse``.

        Raises:
            TokenError: the token is refused; answer 401 ``INVALID_CONNECT_TOKEN``.
        """
        claims = await self._auth.authenticate(token)
        message_rate(claims.raw)  # a malformed messageRate refuses the token (spec §3.9)
        return claims

    def admit_handshake(self, source_ip: str | None) -> None:
        """Check the handshake rate and connection limits that apply before the token is read.

        Raises:
            ConnectionRefused: answer its status (429, or 503 when the node is full) with
                ``Retry-After``.
        """
        self._limits.admit_handshake(source_ip)

    async def admit_connection(self, claims: Claims, source_ip: str | None) -> None:
        """Count a verified connection against the per-uid (cluster-wide) and per-address
        limits. After it succeeds, ``open_connection(..., admitted=True)`` must follow, or
        ``close_connection`` will not release the claim.

        Raises:
            ConnectionRefused: over the per-uid limit (429).
        """
        await self._limits.claim(claims, source_ip)

    def check_http_rate(self, conn: Connection) -> None:
        """Spend one Client HTTP API call; raises ``RATE_LIMITED`` (429) when none is left."""
        self._limits.check_http(conn)

    def http_retry_after(self) -> int:
        """``Retry-After`` seconds for a rate-limited Client HTTP API call."""
        return self._limits.retry_after_seconds()

    def check_api_key(self, authorization: str) -> None:
        """Check a server API call's ``Authorization`` header, or raise ``UNAUTHORIZED``."""
        self._auth.check_api_key(authorization)

    def open_connection(
        self,
        claims: Claims,
        outlet: Outlet,
        *,
        source_ip: str | None = None,
        user_agent: str | None = None,
        admitted: bool = False,
    ) -> Connection:
        """Register a connection and send ``hotsock.connected``. The caller must then run
        ``start_connection`` before feeding client frames, and ``close_connection`` at the end.
        ``admitted``: ``admit_connection`` counted it (released on close)."""
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
            max_bytes=self.settings.limits.queue_max_bytes,
            write_timeout=self.settings.limits.queue_write_timeout_seconds,
        )
        while conn.id in self.connections:  # 88 random bits: a clash is theoretical
            conn.id = new_connection_id()
        conn.limits_held = admitted
        self._limits.buckets(conn)
        self.connections[conn.id] = conn
        self.connections_opened += 1
        conn.send(
            Frame(
                protocol.connected_frame(
                    conn.id, rfc3339_seconds(conn.expires_ms), conn.secret, conn.uid, conn.umd
                )
            )
        )
        arm_watchdog(conn, timeouts)
        if self.debug:
            log.debug("= connected %s uid=%r from %s", conn.id, conn.uid, source_ip)
        if self._emitter.enabled:
            self._emitter.connection("hotsock.connected", conn, None)
        return conn

    async def start_connection(self, conn: Connection) -> None:
        """Register the connection cluster-wide, then run its ``autoSubscribe`` (spec §6.5)."""
        await self._broker.register_connection(conn.id)
        if self._revocations.refuses(conn):
            return  # revoked between the handshake's check and now; closed with 4501
        await self._subscriptions.auto_subscribe(conn)

    async def close_connection(self, conn: Connection) -> None:
        """Remove a closed connection and its subscriptions (spec §4.7). Idempotent."""
        if self.connections.get(conn.id) is not conn:
            return
        conn.close(CloseCode.NORMAL, "")
        del self.connections[conn.id]  # its HTTP credentials die now
        for sub in list(conn.subscriptions.values()):
            await self._subscriptions.remove(conn, sub)
        try:
            await self._broker.forget_connection(conn.id)
        except Exception:
            log.warning("! could not unregister connection %s", conn.id)
        if conn.limits_held:
            conn.limits_held = False
            await self.release_admission(conn.claims.uid, conn.source_ip)
        if self.debug:
            log.debug("x disconnected %s", conn.id)
        if self._emitter.enabled:
            self._emitter.connection("hotsock.disconnected", conn, time.time())

    async def release_admission(self, uid: str | None, source_ip: str | None) -> None:
        """Undo ``admit_connection`` for a connection that never opened (or has closed)."""
        try:
            await self._limits.release(uid, source_ip)
        except Exception:
            log.warning("! could not release the connection limits of uid %r", uid)

    def authorize_http(self, connection_id: str | None, secret: str | None) -> Connection:
        """The live connection for Client HTTP API credentials, or ``UNAUTHORIZED``."""
        return self._auth.authorize_http(self.connections, connection_id, secret)

    async def forward(self, connection_id: str, request: bytes) -> bytes | None:
        """Hand a Client HTTP API call to the node holding ``connection_id``; None when no node
        holds it."""
        return await self._broker.forward(connection_id, request)

    # Commands

    async def handle_frame(self, conn: Connection, text: str | bytes) -> None:
        """Process one client frame; failures are answered with ``hotsock.error``."""
        await self._commands.handle(conn, text)

    def refuse_binary(self, conn: Connection) -> None:
        """Answer a binary frame (``INVALID_MESSAGE``); it spends a token like any frame."""
        self._commands.refuse_binary(conn)

    def publish_client(
        self, conn: Connection, channel: Any, event: Any, data: Any, *, trigger: str
    ) -> asyncio.Future[PublishResult]:
        """A client's message (spec §8, §10.2); raises ``ProtocolError`` for refusals."""
        return self._publisher.publish_client(conn, channel, event, data, trigger=trigger)

    def publish_server(self, request: ServerPublish) -> asyncio.Future[PublishResult]:
        """A validated ``POST /publish`` message (spec §15); scheduled when it has a due time
        (spec §14), and then its future resolves once the schedule is stored."""
        if request.due_ms is not None:
            return asyncio.ensure_future(self._scheduler.schedule_server(request))
        return self._publisher.publish_server(request)

    async def schedule_client(
        self,
        conn: Connection,
        channel: Any,
        event: Any,
        data: Any,
        expression: Any,
        timezone: Any,
        *,
        trigger: str,
        eager: bool,
    ) -> PublishResult:
        """A client message with a ``scheduleExpression`` (spec §14); raises
        ``ProtocolError`` for refusals, returns once the schedule is stored."""
        return await self._scheduler.schedule_client(
            conn, channel, event, data, expression, timezone, trigger=trigger, eager=eager
        )

    async def schedule_storage_client(
        self, conn: Connection, write: StorageWrite, expression: Any, timezone: Any
    ) -> PublishResult:
        """A client's prepared storage write with a ``scheduleExpression`` (spec §14); raises
        ``ProtocolError`` for refusals, returns once the schedule is stored."""
        return await self._scheduler.schedule_storage_client(conn, write, expression, timezone)

    async def schedule_storage_server(
        self, write: StorageWrite, expression: Any, timezone: Any
    ) -> PublishResult:
        """A ``POST /publish`` storage write with a ``scheduleExpression`` (spec §14)."""
        return await self._scheduler.schedule_storage_server(write, expression, timezone)

    async def cancel_schedule(self, schedule_id: str) -> bool:
        """``DELETE /schedules/{id}``: False when unknown, already run or running."""
        return await self._scheduler.cancel(schedule_id)

    async def list_messages(self, conn: Connection, body: dict[str, Any]) -> bytes:
        """``listMessages`` (spec §10.2): the JSON response body."""
        return await self._history.list_messages(conn, body)

    # Reactions, umd updates, channel info (spec §10.2, §12, §13)

    async def react_client(
        self, conn: Connection, channel: Any, data: Any, *, trigger: str
    ) -> asyncio.Future[PublishResult]:
        """A client's ``hotsock.messageReaction``; raises ``ProtocolError`` for refusals."""
        return await self._reactions.react_client(conn, channel, data, trigger=trigger)

    async def react_server(self, body: dict[str, Any]) -> asyncio.Future[PublishResult]:
        """A ``POST /publish`` reaction (top-level ``uid``, optional ``umd``)."""
        return await self._reactions.react_server(body)

    async def list_reactions(self, conn: Connection, body: dict[str, Any]) -> bytes:
        """``listReactions``: the JSON response body."""
        return await self._reactions.list_reactions(conn, body)

    async def update_umd(self, conn: Connection, channel: Any, token: Any) -> None:
        """``umdUpdate`` per channel (``channel`` given) or for the connection."""
        await self._umd.update(conn, channel, token)

    async def channel_info(self, conn: Connection, body: dict[str, Any]) -> dict[str, Any]:
        """``getChannelInfo``: ``{"channel","subscriptionsCount","members"?}``."""
        return await self._channel_info.for_client(conn, body)

    # Channel storage (spec §11, §10.2, §15, §16)

    def write_storage(self, write: StorageWrite) -> asyncio.Future[PublishResult]:
        """Apply a validated storage write now, in its channel's lane (the entry point for
        every writer: clients, ``POST /publish``, schedules coming due). Its TTL starts now.
        The future resolves once it is durable; ``duplicate`` means the value was unchanged
        (only the expiry moved, nothing was delivered)."""
        return self._storage.write(write)

    def prepare_storage_client(
        self, conn: Connection, channel: Any, key: Any, data: Any, *, trigger: str
    ) -> StorageWrite:
        """Validate and authorise a client's storage write without applying it; raises
        ``ProtocolError`` for refusals."""
        return self._storage.prepare_client(conn, channel, key, data, trigger=trigger)

    async def get_storage_client(self, conn: Connection, channel: Any, key: Any) -> bytes:
        """``channelStorageGet``: the ``hotsock.channelStorageData`` body."""
        return await self._storage.get_client(conn, channel, key)

    async def list_storage_client(self, conn: Connection, body: dict[str, Any]) -> bytes:
        """``channelStorageList``: the ``{"items":[…]}`` body."""
        return await self._storage.list_client(conn, body)

    async def list_storage_admin(
        self, channel: str, *, keys: list[str] | None, after: str | None
    ) -> bytes:
        """``GET /channels/{name}/storage``: the ``{"items":[…]}`` body."""
        return await self._storage.list_admin(channel, keys, after)

    async def sweep_storage(self) -> int:
        """Delete the expired storage entries now (the sweeper does it periodically)."""
        return await self._storage.sweep()

    # Moderation and revocation (spec §24.2)

    async def disconnect(
        self, how: Disconnect, *, connection_id: str | None = None, uid: str | None = None
    ) -> int:
        """Close a connection or every connection of a user, cluster-wide; how many closed.
        Raises ``NOT_FOUND`` when there was none."""
        return await self._moderation.disconnect(how, connection_id=connection_id, uid=uid)

    async def user_connections(self, uid: str) -> list[dict[str, Any]]:
        """``uid``'s live connections on every node: id, node, connectedAt, channels."""
        return await self._moderation.connections(uid)

    async def subscribe_connection(self, connection_id: str, body: dict[str, Any]) -> None:
        """Server-side subscribe of a live connection (a validated ``parse_server_subscribe``
        body)."""
        await self._moderation.subscribe(connection_id, body)

    async def unsubscribe(
        self, channel: str, *, connection_id: str | None = None, uid: str | None = None
    ) -> int:
        """Server-side unsubscribe of a connection or a user; how many subscriptions ended."""
        return await self._moderation.unsubscribe(channel, connection_id=connection_id, uid=uid)

    async def revoke(self, body: Any) -> dict[str, Any]:
        """Store and apply a revocation (``POST /revocations`` body) on every node."""
        return await self._revocations.revoke(body)

    async def revocations(self) -> list[dict[str, Any]]:
        """The revocations in force."""
        return await self._revocations.in_force()

    async def unrevoke(self, kind: RevocationKind, value: str) -> None:
        """Delete a revocation everywhere; ``NOT_FOUND`` when none is in force."""
        await self._revocations.unrevoke(kind, value)
