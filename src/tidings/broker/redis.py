"""``RedisBroker``: several tidings nodes sharing one Redis (``redis://host:port/db``).

This module carries channel messages between nodes, orders each channel's IDs cluster-wide and
holds claims; presence, subscription counts, connection locations, node liveness and request
forwarding are ``RedisClusterState`` (``redis_state.py``), which the broker starts and closes.

Why plain pub/sub (``PUBLISH``/``SUBSCRIBE``), not Streams or sharded pub/sub:

* Live delivery is at-most-once by contract: nothing is replayed on subscribe or reconnect, and
  history comes from the store (spec §4.8, §9). That is exactly pub/sub's guarantee. Streams
  would keep a second, trimmed copy of what the store already keeps, and cost per-channel
  ``XREAD`` cursors on every node.
* Redis hands a ``PUBLISH`` to every subscribed connection while executing it, so every node
  sees one channel's publishes in one order: the order Redis executed them. That is why a node
  does not deliver its own publishes locally first: they come back through Redis like everyone
  else's, and all nodes share one order.
* A node subscribes only to channels it has local subscribers for, on one connection, so
  traffic follows interest rather than the cluster's total.
* Sharded pub/sub (``SSUBSCRIBE``) only helps Redis Cluster; this broker talks to one Redis
  server (a primary at a stable address, e.g. behind Sentinel-aware DNS).

Ordering across nodes (spec §4.8, ``ordering``): a per-channel turn lock (``SET PX`` guarded
by a per-node token, taken with short randomised back-off) and a per-channel last-ID key. In a
turn, IDs are minted strictly above the stored last ID whatever this node's clock says;
``publish`` goes through a fencing script that ``PUBLISH``es only while the token still holds
the lock, and is awaited before the turn ends; the exit script stores the new last ID (for
``last_id_ttl_ms``; later the clock alone keeps order) and releases the lock. The next holder
therefore publishes after this turn's ``PUBLISH``es ran: ID order is Redis execution order is
delivery order on every node. A turn outliving its lock (``lock_ttl_ms``, default 15 s: above
the PostgreSQL store's 10 s command timeout) is logged and its live messages are refused
rather than delivered out of order.

Redis layout (``prefix`` defaults to ``tidings:``; pub/sub ignores the ``db`` number, so
clusters sharing a Redis need distinct prefixes; ``redis_state.py`` lists its own keys)::

    <prefix>ch:<channel>      pub/sub channel carrying the channel's deliveries
    <prefix>turn:<channel>    publishing turn lock (value: holder's node ID; PX lock_ttl_ms)
    <prefix>last:<channel>    last ID minted on the channel (PX last_id_ttl_ms)
    <prefix>claim:<key>       claim_once records: jti:<id>, dedup:<id> (PX as asked)

On the wire a ``PUBLISH`` payload is a version byte (2) and one item per delivery: a big-endian
``uint16`` exclude-ID length, a ``uint16`` observed-storage-key length, a ``uint32`` payload
length, the exclude ID, the storage key, the payload bytes. Nodes of one cluster must speak the
same version: a node drops (and logs) payloads of another.
Batches are split into payloads of about 512 KiB so no single message nears Redis's pub/sub
output-buffer limits.

Guarantees. Each node delivers every message published on a channel it is subscribed to, while
its subscriber connection is up, exactly once and in the channel's ID order (Redis delivers each
``PUBLISH`` once per subscribed connection, and a node has one); publishes of one turn keep
their call order. Nothing is delivered twice, not even across reconnects.

Faults. Commands (``publish``, ``ordering``, ``claim_once``, ``release``) fail fast with
``BrokerUnavailable`` (connect and command timeouts default to 2 s; nothing is retried, so a
``PUBLISH`` is never sent twice), which the hub answers with 503. The subscriber connection
never raises: its listener notices a lost connection (a read error, or no ``PONG`` within the
command timeout of an idle-time ``PING``), reconnects with capped exponential back-off
(0.1 s → 5 s, jittered), re-subscribes every channel this node still has interest in, and
delivery resumes. Messages published while a node was disconnected are not delivered to it
(at-most-once); stored ones remain listable. An outage is logged once when noticed and once
when over. Claims and last IDs live only in Redis: a Redis restart without persistence
forgets used ``singleUse`` token IDs and deduplication IDs, so production Redis should persist
(AOF) if that matters.

The client speaks RESP2 (a ``protocol`` URL option is ignored: the subscriber connection reads
pub/sub replies as plain arrays) and never retries a command.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import secrets
import struct
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tidings.broker.base import (
    MAX_CLAIM_TTL_MS,
    Broker,
    BrokerStats,
    ControlFn,
    DeliverFn,
    Delivery,
    Minter,
    PresenceUpdate,
    ReapedFn,
    ServeFn,
)
from tidings.broker.redis_state import RedisClusterState
from tidings.core.ids import ChannelIdMinter
from tidings.errors import BrokerUnavailable, ConfigError

__all__ = ["RedisBroker", "decode_deliveries", "encode_deliveries"]

log = logging.getLogger("tidings.broker.redis")

T = TypeVar("T")

WIRE_VERSION: Final = b"\x02"
MAX_PUBLISH_BYTES: Final = 512 * 1024  # split batches above this (one big delivery stays whole)
_ITEM: Final = struct.Struct(">HHI")  # exclude-ID length, storage-key length, payload length
_SUBSCRIBE_CHUNK: Final = 1000  # channels per SUBSCRIBE when re-subscribing after a reconnect
_TURN_BACKOFF_MIN: Final = 0.001  # seconds between attempts to take a busy publishing turn
_TURN_BACKOFF_MAX: Final = 0.05
_NOT_CONNECTED: Final = (RedisConnectionError, RedisTimeoutError, OSError)

# Lua scripts. ULIDs are compared byte by byte: Lua's ``<`` on strings follows the server's
# locale (Redis calls setlocale(LC_COLLATE, "")).

# KEYS: turn lock, last ID. ARGV: node token, lock TTL (ms).
# Returns the stored last ID ('' when none) when the turn is ours now, else nil.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('GET', KEYS[2]) or ''
"""

# KEYS: turn lock, last ID. ARGV: node token, last minted ID or '', last-ID TTL (ms).
# Raises the stored last ID to ours, releases the lock if still ours; 1 if it was, else 0.
_FINISH = """
local function after(a, b)
  if #a ~= #b then return true end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return false
end
if ARGV[2] ~= '' then
  local stored = redis.call('GET', KEYS[2])
  if not stored or after(ARGV[2], stored) then
    redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  end
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS: turn lock. ARGV: node token, pub/sub channel, payloads... Publishes only while the
# turn is still ours: 1, else -1 (nothing published).
_PUBLISH_IN_TURN = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
for i = 3, #ARGV do redis.call('PUBLISH', ARGV[2], ARGV[i]) end
return 1
"""

# KEYS: claim. ARGV: value, TTL (ms). nil when claimed now, else the first claim's value.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"""

# KEYS: claim. ARGV: value. Compare-and-delete.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def encode_deliveries(deliveries: Sequence[Delivery]) -> list[bytes]:
    """Pack ``deliveries`` into ``PUBLISH`` payloads of about ``MAX_PUBLISH_BYTES`` at most,
    in order (a single larger delivery gets a payload of its own)."""
    payloads: list[bytes] = []
    parts: list[bytes] = [WIRE_VERSION]
    size = len(WIRE_VERSION)
    for delivery in deliveries:
        exclude = delivery.exclude.encode() if delivery.exclude else b""
        key = delivery.observe_key.encode() if delivery.observe_key else b""
        if len(exclude) > 0xFFFF or len(key) > 0xFFFF:
            raise ValueError("exclude connection ID or storage key is too long")
        item = _ITEM.size + len(exclude) + len(key) + len(delivery.payload)
        if len(parts) > 1 and size + item > MAX_PUBLISH_BYTES:
            payloads.append(b"".join(parts))
            parts, size = [WIRE_VERSION], len(WIRE_VERSION)
        parts += (
            _ITEM.pack(len(exclude), len(key), len(delivery.payload)),
            exclude,
            key,
            delivery.payload,
        )
        size += item
    if len(parts) > 1:
        payloads.append(b"".join(parts))
    return payloads


def decode_deliveries(data: bytes) -> list[Delivery]:
    """Unpack one ``PUBLISH`` payload. Raises ``ValueError`` when it is malformed."""
    if data[:1] != WIRE_VERSION:
        raise ValueError("unknown wire format version")
    view = memoryview(data)
    out: list[Delivery] = []
    pos = 1
    end = len(data)
    while pos < end:
        if pos + _ITEM.size > end:
            raise ValueError("truncated item header")
        exclude_len, key_len, payload_len = _ITEM.unpack_from(view, pos)
        pos += _ITEM.size
        if pos + exclude_len + key_len + payload_len > end:
            raise ValueError("truncated item")
        exclude = bytes(view[pos : pos + exclude_len]).decode() if exclude_len else None
        pos += exclude_len
        key = bytes(view[pos : pos + key_len]).decode() if key_len else None
        pos += key_len
        out.append(Delivery(bytes(view[pos : pos + payload_len]), exclude, key))
        pos += payload_len
    return out


class RedisBroker:
    """A ``Broker`` over one Redis server. Build it with ``RedisBroker(url, …)`` or
    ``open_broker(url)``, then ``await start(deliver)``; ``await aclose()`` when done."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "tidings:",
        connect_timeout: float = 2.0,
        command_timeout: float = 2.0,
        max_connections: int = 256,
        lock_ttl_ms: int = 15_000,
        last_id_ttl_ms: int = 3_600_000,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
        ping_interval: float = 5.0,
        node_timeout: float = 30.0,
        forward_timeout: float = 5.0,
    ) -> None:
        """Configure (do not connect) a broker.

        Args:
            url: ``redis://[user:password@]host:port/db`` or ``rediss://…``; query options are
                redis-py's (``socket_timeout``, ``max_connections``…) and override the
                arguments below, except ``prefix`` (read by ``from_url``) and ``protocol``
                (ignored: always RESP2).
            prefix: prepended to every key and pub/sub channel name.
            connect_timeout: seconds to open a connection before giving up.
            command_timeout: seconds to wait for a reply (and for a free pooled connection).
            max_connections: size of the command connection pool (the subscriber connection
                is extra).
            lock_ttl_ms: lifetime of a channel's publishing turn lock; must exceed a turn
                (store write included).
            last_id_ttl_ms: how long a channel's last ID is remembered after its last turn.
            reconnect_min: first back-off (seconds) before reconnecting the subscriber.
            reconnect_max: cap of that back-off (doubling, jittered).
            ping_interval: seconds of subscriber silence before a liveness ``PING``.
            node_timeout: seconds without heartbeats after which a node's shared state
                (presence, counts) is removed by the others.
            forward_timeout: seconds to wait for another node's answer to a forwarded Client
                HTTP API request (spec §10.1).

        Raises:
            ConfigError: the URL or an option is invalid.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigError(f"TIDINGS_BROKER {_redact(url)!r} must start with redis://.")
        if not prefix:
            raise ConfigError("The Redis broker prefix must not be empty.")
        if lock_ttl_ms < 1 or last_id_ttl_ms < 1:
            raise ConfigError("The Redis broker lock and last-ID TTLs must be positive.")
        query = [
            (k, v)
            for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if k != "protocol"
        ]
        clean = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
        common: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": command_timeout,
            "protocol": 2,
        }
        try:
            self._pool = BlockingConnectionPool.from_url(
                clean,
                max_connections=max_connections,
                timeout=command_timeout,
                retry=Retry(NoBackoff(), 0),
                **common,
            )
            # cluster state blocks in BLPOP for up to forward_timeout: a longer read timeout
            self._state_pool = BlockingConnectionPool.from_url(
                clean,
                max_connections=max_connections,
                timeout=command_timeout,
                retry=Retry(NoBackoff(), 0),
                **{**common, "socket_timeout": command_timeout + forward_timeout},
            )
            # supported_errors=(): redis-py must not reconnect this connection behind our back
            self._sub_pool = ConnectionPool.from_url(
                clean,
                retry=Retry(NoBackoff(), 0, supported_errors=()),
                socket_keepalive=True,
                **common,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"TIDINGS_BROKER {_redact(url)!r} is invalid: {exc}.") from exc
        self._redis: Redis = Redis(connection_pool=self._pool)
        self._state_redis: Redis = Redis(connection_pool=self._state_pool)
        self._acquire_script = self._redis.register_script(_ACQUIRE)
        self._finish_script = self._redis.register_script(_FINISH)
        self._publish_script = self._redis.register_script(_PUBLISH_IN_TURN)
        self._claim_script = self._redis.register_script(_CLAIM)
        self._release_script = self._redis.register_script(_RELEASE)
        kwargs = self._sub_pool.connection_kwargs
        self.where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        """``host:port/db`` for logs (never the password)."""
        self.prefix = prefix
        self._channel_prefix = f"{prefix}ch:".encode()
        self._command_timeout = command_timeout
        self._lock_ttl_ms = lock_ttl_ms
        self._last_id_ttl_ms = last_id_ttl_ms
        self._reconnect_min = reconnect_min
        self._reconnect_max = max(reconnect_min, reconnect_max)
        self._ping_interval = ping_interval
        self.node_id = secrets.token_hex(8)
        self.stats = BrokerStats()  # read by /metrics
        """This node's ID in Redis: turn-lock value, cluster-state owner."""
        self._token = self.node_id
        self._node_timeout = node_timeout
        self._forward_timeout = forward_timeout
        self._state: RedisClusterState | None = None  # built by start(), which knows the hooks
        self._minter = ChannelIdMinter()  # also keeps this node's IDs increasing between turns
        self._deliver: DeliverFn | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self._up = True  # False between noticing an outage and seeing Redis again
        # Subscriber state. _interest is what the hub asked for; the rest describes the current
        # subscriber connection and is reset with it, under _sub_lock.
        self._interest: set[str] = set()
        self._sub: AbstractConnection | None = None  # None while disconnected
        self._sub_lock = asyncio.Lock()  # serialises commands sent on the subscriber connection
        self._sent: set[str] = set()  # channels whose last command sent was SUBSCRIBE
        self._inflight: dict[str, int] = {}  # channel -> (UN)SUBSCRIBEs not yet confirmed
        self._confirmed: dict[str, asyncio.Future[None]] = {}  # channel -> subscribe() waiters
        # Turns: this node's turns on a channel queue locally before contending in Redis.
        self._queues: dict[str, _TurnQueue] = {}
        self._held: set[str] = set()  # channels whose turn this node holds now

    @classmethod
    def from_url(cls, url: str) -> RedisBroker:
        """Build a broker from ``TIDINGS_BROKER``: ``?prefix=…`` (key prefix, default
        ``tidings:``) and ``?node_timeout=…`` (seconds without heartbeats before a node's
        connections are removed from presence and counts, default 30) are read here; other query
        options go to redis-py."""
        parts = urllib.parse.urlsplit(url)
        prefix = "tidings:"
        node_timeout = 30.0
        kept: list[tuple[str, str]] = []
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if key == "prefix":
                prefix = value
            elif key == "node_timeout":
                try:
                    node_timeout = float(value)
                except ValueError:
                    node_timeout = -1.0
                if not 0.5 <= node_timeout <= 3600:
                    raise ConfigError(
                        "TIDINGS_BROKER's node_timeout must be a number of seconds from 0.5 "
                        "to 3600."
                    )
            else:
                kept.append((key, value))
        clean = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
        return cls(clean, prefix=prefix, node_timeout=node_timeout)

    # Public methods

    async def start(
        self,
        deliver: DeliverFn,
        *,
        serve: ServeFn | None = None,
        reaped: ReapedFn | None = None,
        control: ControlFn | None = None,
    ) -> None:
        """Connect the subscriber, start delivering to ``deliver``, and join the cluster state
        (heartbeats, reaping dead nodes into ``reaped``, answering forwarded requests with
        ``serve`` and broadcast commands with ``control``).

        Raises:
            BrokerUnavailable: Redis cannot be reached now (start-up stops, as for the store).
            RuntimeError: already started or closed.
        """
        if self._listener is not None or self._closed:
            raise RuntimeError("RedisBroker.start() may be called once, before aclose()")
        await self._call("PING", self._redis.ping())
        conn = await self._open_subscriber()
        self._deliver = deliver
        self._listener = asyncio.get_running_loop().create_task(
            self._listen(conn), name=f"tidings-redis-listener-{self.where}"
        )
        self._state = RedisClusterState(
            self._state_redis,
            prefix=self.prefix,
            node_id=self.node_id,
            node_timeout=self._node_timeout,
            on_reaped=reaped,
            serve=serve,
            control=control,
            forward_timeout=self._forward_timeout,
        )
        try:
            await self._call("heartbeat", self._state.start())
        except BaseException:
            await self.aclose()  # no listener or connection outlives a failed start
            raise

    async def subscribe(self, channel: str) -> None:
        """Record interest in ``channel`` and ``SUBSCRIBE``; returns once Redis confirmed it
        (later publishes reach this node), or after the command timeout. Never raises for an
        outage: the listener subscribes every channel of interest when it reconnects."""
        if self._closed:
            return
        if channel in self._interest and channel in self._sent and channel not in self._inflight:
            return  # the common case: the hub re-declares interest on every subscribe
        self._interest.add(channel)
        waiter = await self._sync(channel)
        if waiter is None:
            return
        try:
            async with asyncio.timeout(self._command_timeout):
                await asyncio.shield(waiter)
        except TimeoutError:
            log.warning("! Redis did not confirm SUBSCRIBE %r in time", channel)

    async def unsubscribe(self, channel: str) -> None:
        """Drop interest in ``channel``: nothing more is delivered for it from now on, and it
        is ``UNSUBSCRIBE``d when connected. Idempotent; never raises for an outage."""
        self._interest.discard(channel)
        if not self._closed:
            await self._sync(channel)

    @asynccontextmanager
    async def ordering(self, channel: str) -> AsyncIterator[Minter]:
        """Hold ``channel``'s publishing turn across the cluster (see the module docstring).

        Raises:
            BrokerUnavailable: Redis is unreachable, or another node held the turn for longer
                than the lock lifetime.
        """
        queue = self._queues.get(channel)
        if queue is None:
            queue = self._queues[channel] = _TurnQueue()
        queue.users += 1
        try:
            async with queue.lock, self._turn(channel) as mint:
                yield mint
        finally:
            queue.users -= 1
            if not queue.users:
                del self._queues[channel]

    def publish_now(self, channel: str, build: Callable[[Minter], Sequence[Delivery]]) -> bool:
        return False  # the turn is a lock in Redis: always a round trip

    async def publish(self, channel: str, deliveries: Sequence[Delivery]) -> None:
        """``PUBLISH`` ``deliveries`` (fenced by the turn when this node holds it).

        Raises:
            BrokerUnavailable: Redis is unreachable, or this node's turn expired (nothing of
                this call was published then).
        """
        if not deliveries:
            return
        payloads = encode_deliveries(deliveries)
        target = self._channel_prefix + channel.encode("utf-8", "surrogatepass")
        if channel in self._held:
            fenced = await self._call(
                "PUBLISH",
                self._publish_script(
                    keys=[self._key("turn", channel)], args=[self._token, target, *payloads]
                ),
            )
            if fenced == -1:
                log.error(
                    "! publishing turn of %r expired before its PUBLISH; %d live messages "
                    "dropped to keep the channel's order (stored ones stay listable)",
                    channel,
                    len(deliveries),
                )
                raise BrokerUnavailable(
                    f"the publishing turn of channel {channel!r} expired; not delivered live"
                )
        elif len(payloads) == 1:
            await self._call("PUBLISH", self._redis.publish(target, payloads[0]))
        else:
            pipe = self._redis.pipeline(transaction=False)
            for payload in payloads:
                pipe.publish(target, payload)
            await self._call("PUBLISH", pipe.execute())

    async def claim_once(self, key: str, value: str, ttl_ms: int) -> str | None:
        """Atomic ``SET NX PX``, answering the first claim's value when taken.

        Raises:
            BrokerUnavailable: Redis is unreachable (the claim's state is then unknown).
        """
        held = await self._call(
            "claim",
            self._claim_script(
                keys=[self._key("claim", key)], args=[value, min(max(1, ttl_ms), MAX_CLAIM_TTL_MS)]
            ),
        )
        if held is None:
            return None
        return held.decode() if isinstance(held, bytes) else str(held)

    async def release(self, key: str, value: str) -> None:
        """Compare-and-delete the claim on ``key``.

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        await self._call(
            "release", self._release_script(keys=[self._key("claim", key)], args=[value])
        )

    # Public methods: cluster state (delegated to RedisClusterState)

    async def presence_join(
        self, channel: str, holder: str, uid: str, umd: Any, *, max_bytes: int
    ) -> PresenceUpdate:
        return await self._call(
            "presence",
            self._started().presence_join(channel, holder, uid, umd, max_bytes=max_bytes),
        )

    async def presence_leave(self, channel: str, holder: str, uid: str) -> PresenceUpdate:
        return await self._call("presence", self._started().presence_leave(channel, holder, uid))

    async def presence_members(self, channel: str) -> list[dict[str, Any]]:
        return await self._call("presence", self._started().presence_members(channel))

    async def count_add(self, channel: str, delta: int) -> int:
        return await self._call("count", self._started().count_add(channel, delta))

    async def count(self, channel: str) -> int:
        return await self._call("count", self._started().count(channel))

    async def claim_user_connection(self, uid: str, limit: int) -> bool:
        return await self._call(
            "connection limit", self._started().claim_user_connection(uid, limit)
        )

    async def release_user_connection(self, uid: str) -> None:
        await self._call("connection limit", self._started().release_user_connection(uid))

    async def register_connection(self, connection_id: str) -> None:
        await self._call("connection", self._started().register_connection(connection_id))

    async def forget_connection(self, connection_id: str) -> None:
        await self._call("connection", self._started().forget_connection(connection_id))

    async def forward(self, connection_id: str, request: bytes) -> bytes | None:
        return await self._call("forward", self._started().forward(connection_id, request))

    async def broadcast(self, command: bytes) -> list[bytes]:
        return await self._call("broadcast", self._started().broadcast(command))

    async def aclose(self) -> None:
        """Leave the cluster state, stop the listener and close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._deliver = None
        if self._state is not None:
            await self._state.aclose()  # removes this node's presence and counts at once
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        conn, self._sub = self._sub, None
        if conn is not None:
            await conn.disconnect()
        self._release_waiters()
        await self._redis.aclose()
        await self._state_redis.aclose()
        await self._pool.aclose()
        await self._state_pool.aclose()
        await self._sub_pool.aclose()

    # Private methods: turns

    @asynccontextmanager
    async def _turn(self, channel: str) -> AsyncIterator[Minter]:
        loop = asyncio.get_running_loop()
        floor = await self._acquire(channel)
        started = loop.time()
        if floor:
            self._minter.observe(channel, floor)
        last = ""

        def mint(now_ms: int) -> str:
            nonlocal last
            last = self._minter.mint(channel, now_ms)
            return last

        self._held.add(channel)
        try:
            yield mint
        finally:
            self._held.discard(channel)
            await self._finish(channel, last, started)

    async def _acquire(self, channel: str) -> str:
        """Take the turn lock, waiting while another node holds it; returns the stored last ID
        ('' when none)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lock_ttl_ms / 1000 + self._command_timeout
        delay = _TURN_BACKOFF_MIN
        keys = [self._key("turn", channel), self._key("last", channel)]
        while True:
            floor = await self._call(
                "turn", self._acquire_script(keys=keys, args=[self._token, self._lock_ttl_ms])
            )
            if floor is not None:
                return floor.decode() if isinstance(floor, bytes) else str(floor)
            if loop.time() >= deadline:
                raise BrokerUnavailable(
                    f"the publishing turn of channel {channel!r} stayed busy for "
                    f"{self._lock_ttl_ms} ms"
                )
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, _TURN_BACKOFF_MAX)

    async def _finish(self, channel: str, last: str, started: float) -> None:
        if self._closed:
            return  # the lock expires by itself
        keys = [self._key("turn", channel), self._key("last", channel)]
        try:
            mine = await self._finish_script(
                keys=keys, args=[self._token, last, self._last_id_ttl_ms]
            )
        except (RedisError, OSError) as exc:
            # the lock expires by itself; the last ID may be forgotten (the clock then orders)
            self._went_down(exc)
            log.warning("! could not end the publishing turn of %r: %s", channel, exc)
            return
        self._came_back()
        if mine != 1:
            held_ms = (asyncio.get_running_loop().time() - started) * 1000
            log.error(
                "! publishing turn of %r lasted %.0f ms, over its %d ms lock: another node "
                "may have published on it meanwhile",
                channel,
                held_ms,
                self._lock_ttl_ms,
            )

    # Private methods: subscriber connection

    async def _open_subscriber(self) -> AbstractConnection:
        """Connect a subscriber connection and (re-)subscribe every channel of interest."""
        conn: AbstractConnection = self._sub_pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            async with self._sub_lock:
                self._sub = conn
                self._sent = set()
                self._inflight = {}
                channels = list(self._interest)
                for i in range(0, len(channels), _SUBSCRIBE_CHUNK):
                    chunk = channels[i : i + _SUBSCRIBE_CHUNK]
                    names = [
                        self._channel_prefix + c.encode("utf-8", "surrogatepass") for c in chunk
                    ]
                    for c in chunk:  # booked first, as in _sync
                        self._sent.add(c)
                        self._inflight[c] = self._inflight.get(c, 0) + 1
                    await conn.send_command("SUBSCRIBE", *names, check_health=False)
                for channel in [c for c in self._confirmed if c not in self._inflight]:
                    _resolve(self._confirmed.pop(channel))
                # its reply proves the server answers (``_read`` waits for it)
                await conn.send_command("PING", check_health=False)
        except BaseException as exc:
            if self._sub is conn:
                self._sub = None
            await conn.disconnect(nowait=True)
            if isinstance(exc, RedisError | OSError):
                self._went_down(exc)
                raise BrokerUnavailable(f"Redis at {self.where} is unreachable: {exc}") from exc
            raise
        return conn

    async def _listen(self, conn: AbstractConnection | None) -> None:
        """Read the subscriber connection forever, reconnecting after failures. Never raises
        (but for cancellation)."""
        loop = asyncio.get_running_loop()
        delay = self._reconnect_min
        while True:
            if conn is not None:
                opened = loop.time()
                try:
                    await self._read(conn)
                except asyncio.CancelledError:
                    raise
                except _NOT_CONNECTED + (RedisError,) as exc:
                    self._went_down(exc)
                except Exception:
                    log.exception("! Redis listener failed; reconnecting")
                finally:
                    await self._drop_subscriber(conn)
                if loop.time() - opened >= self._reconnect_max:
                    delay = self._reconnect_min  # a long-lived connection: start over quickly
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._reconnect_max)
            try:
                conn = await self._open_subscriber()
            except BrokerUnavailable:
                conn = None
            else:
                self.stats.reconnects += 1
                log.info(
                    "= Redis subscriber reconnected; re-subscribing %d channels", len(self._sent)
                )

    async def _read(self, conn: AbstractConnection) -> None:
        """Deliver what arrives; raise once the connection fails or stops answering PINGs."""
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged: float | None = heard  # _open_subscriber sent a PING
        wait = min(1.0, self._ping_interval, self._command_timeout)
        while True:
            if not conn.is_connected:
                raise RedisConnectionError("subscriber connection closed")
            reply = await conn.read_response(timeout=wait, disconnect_on_error=False)
            now = loop.time()
            if reply is None:  # nothing within ``wait``
                if pinged is not None:
                    if now - pinged > self._command_timeout:
                        raise RedisTimeoutError("no reply to PING on the subscriber connection")
                elif now - heard >= self._ping_interval:
                    async with self._sub_lock:
                        await conn.send_command("PING", check_health=False)
                    pinged = now
                continue
            if pinged is not None:
                self._came_back()  # a reply after a PING: the server answers again
            heard, pinged = now, None
            self._on_reply(reply)

    def _on_reply(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return  # PONG outside subscribed mode
        kind = reply[0]
        if kind == b"message":
            channel = self._channel_of(reply[1])
            deliver = self._deliver
            if channel is None or deliver is None or channel not in self._interest:
                return  # an UNSUBSCRIBE not yet processed by Redis
            try:
                deliveries = decode_deliveries(reply[2])
            except (ValueError, struct.error, UnicodeDecodeError) as exc:
                log.warning("! dropped a malformed Redis message on %r: %s", channel, exc)
                return
            try:
                deliver(channel, deliveries)
            except Exception:
                log.exception("! local delivery failed on %r", channel)
        elif kind in (b"subscribe", b"unsubscribe"):
            channel = self._channel_of(reply[1])
            if channel is not None:
                self._on_confirmed(channel)

    def _on_confirmed(self, channel: str) -> None:
        left = self._inflight.get(channel, 0) - 1
        if left > 0:
            self._inflight[channel] = left
            return
        self._inflight.pop(channel, None)
        waiter = self._confirmed.pop(channel, None)
        if waiter is not None:
            _resolve(waiter)

    async def _sync(self, channel: str) -> asyncio.Future[None] | None:
        """Bring the subscriber connection in line with ``_interest`` for ``channel``; returns
        a future resolved once Redis confirmed the subscription, or None (nothing to wait
        for, or not connected)."""
        async with self._sub_lock:
            conn = self._sub
            if conn is None or not conn.is_connected:
                return None
            want = channel in self._interest
            if want != (channel in self._sent):
                # Book the command before sending it: sending may yield to the listener, which
                # can then read Redis's confirmation before this task resumes.
                if want:
                    self._sent.add(channel)
                else:
                    self._sent.discard(channel)
                self._inflight[channel] = self._inflight.get(channel, 0) + 1
                name = self._channel_prefix + channel.encode("utf-8", "surrogatepass")
                try:
                    await conn.send_command(
                        "SUBSCRIBE" if want else "UNSUBSCRIBE", name, check_health=False
                    )
                except (RedisError, OSError):
                    return None  # the listener sees the broken connection and resubscribes
            if not want or channel not in self._inflight:
                return None
            waiter = self._confirmed.get(channel)
            if waiter is None:
                waiter = self._confirmed[channel] = asyncio.get_running_loop().create_future()
            return waiter

    async def _drop_subscriber(self, conn: AbstractConnection) -> None:
        if self._sub is conn:
            self._sub = None
        self._release_waiters()
        await conn.disconnect(nowait=True)

    def _release_waiters(self) -> None:
        waiters, self._confirmed = self._confirmed, {}
        for waiter in waiters.values():
            _resolve(waiter)

    def _channel_of(self, name: object) -> str | None:
        if not isinstance(name, bytes) or not name.startswith(self._channel_prefix):
            return None
        return name[len(self._channel_prefix) :].decode("utf-8", "surrogatepass")

    # Private methods: commands and health

    def _started(self) -> RedisClusterState:
        if self._state is None:
            raise BrokerUnavailable("the Redis broker is not started")
        return self._state

    def _key(self, kind: str, name: str) -> bytes:
        return f"{self.prefix}{kind}:{name}".encode("utf-8", "surrogatepass")

    async def _call(self, what: str, command: Awaitable[T]) -> T:
        """Await a Redis command, turning any Redis failure into ``BrokerUnavailable``."""
        if self._closed:  # the pools are closed: do not let redis-py reopen connections
            if inspect.iscoroutine(command):
                command.close()
            raise BrokerUnavailable("the Redis broker is closed")
        stats = self.stats
        started = time.perf_counter()
        try:
            result = await command
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            if isinstance(exc, _NOT_CONNECTED):  # details are in the log, not in 503 bodies
                raise BrokerUnavailable(f"the broker is unreachable ({what})") from exc
            # a Redis error reply (it can name script digests and keys): logged, never sent
            log.warning("! Redis refused %s: %s", what, exc)
            raise BrokerUnavailable(f"the broker refused {what}") from exc
        finally:
            stats.round_trips += 1
            stats.round_trip_seconds += time.perf_counter() - started
        self._came_back()
        return result

    def _went_down(self, exc: BaseException) -> None:
        if self._up and isinstance(exc, _NOT_CONNECTED) and not self._closed:
            self._up = False
            log.warning(
                "! Redis at %s is unreachable (%s); publishing answers 503 and the subscriber "
                "reconnects until it is back",
                self.where,
                exc,
            )

    def _came_back(self) -> None:
        if not self._up:
            self._up = True
            log.info("= Redis at %s is reachable again", self.where)


class _TurnQueue:
    """This node's turns waiting on one channel (the hub's lane sends one at a time; the lock
    keeps other callers from contending in Redis against their own node)."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # turns holding or awaiting the lock; the queue is dropped at zero


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


_: type[Broker] = RedisBroker
