"""Cluster-wide state in Redis: presence members, subscription counts, where each connection
lives, and node liveness (spec §6.4, §7; issue "scale-out").

Data model (all keys under the broker's prefix ``P``)::

    P nodes                ZSET  node ID -> Unix ms of its latest heartbeat
    P ph:{channel}         HASH  holder (connection ID) -> "<node>|<uid>"     presence subscriptions
    P pu:{channel}         HASH  uid -> "<join seq>\\n<canonical umd>\\n<member JSON>"  members
    P pseq                 STRING  a counter ordering first joins
    P n:{node}:p           SET   presence channels where the node holds subscriptions
    P n:{node}:c           HASH  channel -> the node's counted subscriptions
    P n:{node}:conns       SET   connection IDs the node holds
    P n:{node}:u           HASH  uid -> the node's live connections of that user (limits)
    P n:{node}:m           STRING  marker: present while Redis remembers the node's state
    P conns                HASH  connection ID -> node holding it
    P rpc:{node}           LIST  Client HTTP API requests forwarded to the node
    P ctl:{node}           LIST  broadcast commands for the node (moderation, revocations)
    P reply:{request}      LIST  the answers to one forwarded request or broadcast (expires)

Every change of the shared presence state runs as one Lua script, so concurrent joins and leaves
on several nodes see one consistent order. A channel's ``subscriptionsCount`` is the sum of the
live nodes' own counters, so a node that dies simply stops counting once it is reaped. A node
that misses heartbeats for ``node_timeout`` seconds is reaped by the first live node that notices:
its presence subscriptions are removed (``memberRemoved`` is announced through ``on_reaped``)
and its counters dropped.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from tidings.broker.base import ControlFn, PresenceUpdate, ServeFn
from tidings.core.json import dumps
from tidings.core.presence import Change
from tidings.errors import BrokerUnavailable, ErrorCode, ProtocolError

__all__ = ["RedisClusterState", "ReapedFn"]

log = logging.getLogger("tidings.broker.redis")

ReapedFn = Callable[[str, PresenceUpdate | None, int | None], Awaitable[None]]
"""Called for each channel a reaped node affected: (channel, presence update or None, new
subscription count or None)."""

# Shared by both scripts: the members JSON array in first-join order, and its payload size.
_MEMBERS = """
local function members(pu)
  local rows = redis.call('HGETALL', pu)
  local list = {}
  for i = 1, #rows, 2 do
    local v = rows[i + 1]
    local a = string.find(v, '\\n', 1, true)
    local b = string.find(v, '\\n', a + 1, true)
    list[#list + 1] = {tonumber(string.sub(v, 1, a - 1)), string.sub(v, b + 1)}
  end
  table.sort(list, function(x, y) return x[1] < y[1] end)
  local out, size = {}, 0
  for i = 1, #list do out[i] = list[i][2]; size = size + #list[i][2] end
  return '[' .. table.concat(out, ',') .. ']', size
end
"""

# KEYS: ph, pu, pseq, node presence set. ARGV: holder, node, uid, canonical umd, member JSON,
# max bytes, channel. Returns {change, member JSON or "", members JSON}.
_JOIN = (
    _MEMBERS
    + """
local ph, pu, pseq, nodeset = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local holder, node, uid, canon, member, maxb, channel =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local current = redis.call('HGET', pu, uid)
local change = 'none'
if current then
  local a = string.find(current, '\\n', 1, true)
  local b = string.find(current, '\\n', a + 1, true)
  local seq, oldcanon, old = string.sub(current, 1, a - 1), string.sub(current, a + 1, b - 1),
    string.sub(current, b + 1)
  if oldcanon ~= canon then
    local _, size = members(pu)
    if size - #old + #member > maxb then return {'full', '', ''} end
    redis.call('HSET', pu, uid, seq .. '\\n' .. canon .. '\\n' .. member)
    change = 'updated'
  end
else
  local _, size = members(pu)
  if size + #member > maxb then return {'full', '', ''} end
  local seq = redis.call('INCR', pseq)
  redis.call('HSET', pu, uid, seq .. '\\n' .. canon .. '\\n' .. member)
  change = 'added'
end
redis.call('HSET', ph, holder, node .. '|' .. uid)
redis.call('SADD', nodeset, channel)
local list = members(pu)
if change == 'none' then return {change, '', list} end
return {change, member, list}
"""
)

# KEYS: nodes. ARGV: key prefix, this node, uid, limit. Counts the uid's connections on every
# live node and adds one on this node only while under the limit: atomic across nodes.
# Returns 1 when claimed, 0 when the limit is reached.
_USER_CLAIM = """
local nodes = redis.call('ZRANGE', KEYS[1], 0, -1)
local total = 0
for i = 1, #nodes do
  local v = redis.call('HGET', ARGV[1] .. 'n:' .. nodes[i] .. ':u', ARGV[3])
  if v then total = total + tonumber(v) end
end
if total >= tonumber(ARGV[4]) then return 0 end
redis.call('HINCRBY', ARGV[1] .. 'n:' .. ARGV[2] .. ':u', ARGV[3], 1)
return 1
"""

# KEYS: ph, pu. ARGV: holder, uid. Returns {change, member JSON or "", members JSON}.
_LEAVE = (
    _MEMBERS
    + """
local ph, pu = KEYS[1], KEYS[2]
local holder, uid = ARGV[1], ARGV[2]
if redis.call('HDEL', ph, holder) == 0 then return {'none', '', (members(pu))} end
local suffix = '|' .. uid
local rows = redis.call('HGETALL', ph)
for i = 2, #rows, 2 do
  local v = rows[i]
  if string.sub(v, -#suffix) == suffix then return {'none', '', (members(pu))} end
end
local current = redis.call('HGET', pu, uid)
redis.call('HDEL', pu, uid)
if not current then return {'none', '', (members(pu))} end
local a = string.find(current, '\\n', 1, true)
local b = string.find(current, '\\n', a + 1, true)
return {'removed', string.sub(current, b + 1), (members(pu))}
"""
)

_CHANGES = {
    "none": Change.NONE,
    "added": Change.ADDED,
    "updated": Change.UPDATED,
    "removed": Change.REMOVED,
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisClusterState:
    """Presence, counts, connection locations and liveness for one node, kept in Redis.

    Call ``start`` once (it begins heartbeats and reaping) and ``aclose`` at shutdown (which
    removes this node's state at once, so other nodes need not wait for the timeout).
    """

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str,
        node_id: str,
        node_timeout: float = 30.0,
        on_reaped: ReapedFn | None = None,
        serve: ServeFn | None = None,
        control: ControlFn | None = None,
        forward_timeout: float = 5.0,
    ) -> None:
        self._redis = redis  # a redis.asyncio.Redis for commands
        self._p = prefix
        self.node_id = node_id
        self._timeout = node_timeout
        self._on_reaped = on_reaped
        self._join = redis.register_script(_JOIN)
        self._leave = redis.register_script(_LEAVE)
        self._user_claim = redis.register_script(_USER_CLAIM)
        self._users: dict[str, int] = {}  # this node's live connections per uid (limits)
        self._tasks: list[asyncio.Task[None]] = []
        self._connections: set[str] = set()  # connection IDs this node registered
        self._counts: dict[str, int] = {}  # this node's counted subscriptions, rewritten on beats
        self._serve = serve
        self._control = control
        self._forward_timeout = forward_timeout  # spec §10.1: answers within 5 s
        self._serving: set[asyncio.Task[None]] = set()

    # Lifecycle

    async def start(self) -> None:
        await self._beat()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeats()), loop.create_task(self._reaper())]
        if self._serve is not None or self._control is not None:
            self._tasks.append(loop.create_task(self._answer_forwarded()))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await self._reap(self.node_id)  # leave cleanly: others need not wait for a timeout
        except Exception:
            log.warning("! could not remove this node's shared state on shutdown")

    # Presence

    async def presence_join(
        self, channel: str, holder: str, uid: str, umd: Any, *, max_bytes: int
    ) -> PresenceUpdate:
        canon = dumps(umd, option=orjson.OPT_SORT_KEYS)
        member = dumps({"uid": uid, "umd": umd})
        change, member_json, members = await self._join(
            keys=[
                self._k(f"ph:{channel}"),
                self._k(f"pu:{channel}"),
                self._k("pseq"),
                self._k(f"n:{self.node_id}:p"),
            ],
            args=[holder, self.node_id, uid, canon, member, max_bytes, channel],
        )
        if _text(change) == "full":
            raise ProtocolError(
                ErrorCode.PRESENCE_CHANNEL_CAPACITY_REACHED,
                f"presence channel member payload limit ({max_bytes} bytes) reached",
                channel=channel,
            )
        return self._update(change, member_json, members)

    async def presence_leave(self, channel: str, holder: str, uid: str) -> PresenceUpdate:
        change, member_json, members = await self._leave(
            keys=[self._k(f"ph:{channel}"), self._k(f"pu:{channel}")], args=[holder, uid]
        )
        return self._update(change, member_json, members)

    async def presence_members(self, channel: str) -> list[dict[str, Any]]:
        rows = await self._redis.hgetall(self._k(f"pu:{channel}"))
        ordered = sorted(
            (int(_text(v).split("\n", 2)[0]), _text(v).split("\n", 2)[2]) for v in rows.values()
        )
        return [orjson.loads(member) for _, member in ordered]

    # Counts

    async def count_add(self, channel: str, delta: int) -> int:
        mine = self._counts.get(channel, 0) + delta
        if mine > 0:
            self._counts[channel] = mine
        else:
            self._counts.pop(channel, None)
        await self._redis.hincrby(self._k(f"n:{self.node_id}:c"), channel, delta)
        return await self.count(channel)

    async def count(self, channel: str) -> int:
        nodes = await self._redis.zrange(self._k("nodes"), 0, -1)
        if not nodes:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.hget(self._k(f"n:{_text(node)}:c"), channel)
            values = await pipe.execute()
        return max(0, sum(int(v) for v in values if v is not None))

    # Connections per user (limits)

    async def claim_user_connection(self, uid: str, limit: int) -> bool:
        claimed = await self._user_claim(
            keys=[self._k("nodes")], args=[self._p, self.node_id, uid, limit]
        )
        if claimed:
            self._users[uid] = self._users.get(uid, 0) + 1
        return bool(claimed)

    async def release_user_connection(self, uid: str) -> None:
        mine = self._users.get(uid, 0) - 1
        if mine > 0:
            self._users[uid] = mine
        else:
            self._users.pop(uid, None)
        key = self._k(f"n:{self.node_id}:u")
        if await self._redis.hincrby(key, uid, -1) <= 0:
            await self._redis.hdel(key, uid)

    # Connections

    async def register_connection(self, connection_id: str) -> None:
        self._connections.add(connection_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._k("conns"), connection_id, self.node_id)
            pipe.sadd(self._k(f"n:{self.node_id}:conns"), connection_id)
            await pipe.execute()

    async def forget_connection(self, connection_id: str) -> None:
        self._connections.discard(connection_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self._k("conns"), connection_id)
            pipe.srem(self._k(f"n:{self.node_id}:conns"), connection_id)
            await pipe.execute()

    async def locate(self, connection_id: str) -> str | None:
        node = await self._redis.hget(self._k("conns"), connection_id)
        return None if node is None else _text(node)

    async def forward(self, connection_id: str, request: bytes) -> bytes | None:
        """Ask the node holding ``connection_id`` to answer ``request``; None if no node does.

        Raises:
            BrokerUnavailable: Redis is unreachable or the node did not answer in time.
        """
        try:
            node = await self.locate(connection_id) if connection_id else None
            if node is None or node == self.node_id:
                return None  # here it would already have been found among local connections
            request_id = secrets.token_hex(12)
            await self._redis.lpush(self._k(f"rpc:{node}"), request_id.encode() + b"\n" + request)
            await self._redis.pexpire(self._k(f"rpc:{node}"), int(self._timeout * 1000))
            answer = await self._redis.blpop(
                [self._k(f"reply:{request_id}")], timeout=self._forward_timeout
            )
        except (OSError, ConnectionError) as exc:
            raise BrokerUnavailable("the broker is unreachable") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                raise BrokerUnavailable("the broker is unreachable") from exc
            raise
        if answer is None:
            raise BrokerUnavailable(f"node {node} did not answer in time")
        return bytes(answer[1])

    async def broadcast(self, command: bytes) -> list[bytes]:
        """Run ``command`` here (through ``control``) and on every other node whose heartbeat
        is recent; return every answer.

        Raises:
            BrokerUnavailable: Redis is unreachable or a node did not answer in time.
        """
        horizon = int((time.time() - self._timeout) * 1000)
        try:
            live = [
                _text(n) for n in await self._redis.zrangebyscore(self._k("nodes"), horizon, "+inf")
            ]
            others = [n for n in live if n != self.node_id]
            request_id = secrets.token_hex(12)
            item_sent = request_id.encode() + b"\n" + command
            if others:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for node in others:
                        pipe.lpush(self._k(f"ctl:{node}"), item_sent)
                        pipe.pexpire(self._k(f"ctl:{node}"), int(self._timeout * 1000))
                    await pipe.execute()
            answers = [] if self._control is None else [await self._control(command)]
            deadline = time.monotonic() + self._forward_timeout
            remote: list[bytes] = []
            while len(remote) < len(others):
                left = deadline - time.monotonic()
                item = None
                if left > 0:
                    item = await self._redis.blpop([self._k(f"reply:{request_id}")], timeout=left)
                if item is None:
                    # withdraw it where it was not taken yet: a node that comes back later
                    # must not run a command whose caller was told it failed
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for node in others:
                            pipe.lrem(self._k(f"ctl:{node}"), 1, item_sent)
                        await pipe.execute()
                    missing = len(others) - len(remote)
                    raise BrokerUnavailable(f"{missing} node(s) did not answer in time")
                remote.append(bytes(item[1]))
        except (OSError, ConnectionError) as exc:
            raise BrokerUnavailable("the broker is unreachable") from exc
        except BrokerUnavailable:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                raise BrokerUnavailable("the broker is unreachable") from exc
            raise
        return answers + remote

    # Private methods

    def _k(self, name: str) -> str:
        return f"{self._p}{name}"

    def _update(self, change: Any, member_json: Any, members: Any) -> PresenceUpdate:
        kind = _CHANGES[_text(change)]
        member = orjson.loads(member_json) if kind is not Change.NONE else None
        return PresenceUpdate(kind, member, orjson.loads(members))

    async def _beat(self) -> None:
        """Refresh liveness: O(1) while Redis remembers this node. When the marker is missing
        (first beat, or Redis restarted empty), rewrite the connections and counts the node
        owns, so forwarding and counts recover within one heartbeat."""
        now = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._k("nodes"), {self.node_id: now})
            pipe.set(self._k(f"n:{self.node_id}:m"), "1", nx=True)
            _, fresh = await pipe.execute()
        if not fresh:
            return
        counts = self._k(f"n:{self.node_id}:c")
        conns = self._k(f"n:{self.node_id}:conns")
        users = self._k(f"n:{self.node_id}:u")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(counts, users)
            if self._counts:
                pipe.hset(counts, mapping=self._counts)
            if self._users:
                pipe.hset(users, mapping=self._users)
            if self._connections:
                pipe.sadd(conns, *self._connections)
                pipe.hset(self._k("conns"), mapping=dict.fromkeys(self._connections, self.node_id))
            await pipe.execute()

    async def _answer_forwarded(self) -> None:
        """Take requests other nodes forwarded or broadcast to this node and answer each in
        its own task."""
        queue = self._k(f"rpc:{self.node_id}")
        commands = self._k(f"ctl:{self.node_id}")
        failing = False
        while True:
            try:
                item = await self._redis.blpop([queue, commands], timeout=1)
            except asyncio.CancelledError:
                raise
            except Exception:
                if not failing:  # once per outage, not every retry
                    log.warning("! reading forwarded requests failed; retrying until Redis is back")
                failing = True
                await asyncio.sleep(0.5)
                continue
            failing = False
            if item is None:
                continue
            request_id, _, request = bytes(item[1]).partition(b"\n")
            handler = self._serve if _text(item[0]) == queue else self._control
            if handler is None:
                continue  # a node without that hook: the asker times out, as for a dead node
            task = asyncio.get_running_loop().create_task(
                self._answer(handler, request_id, request)
            )
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _answer(self, handler: ServeFn, request_id: bytes, request: bytes) -> None:
        try:
            answer = await handler(request)
            key = self._k(f"reply:{request_id.decode()}")
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(key, answer)
                pipe.pexpire(key, 10_000)
                await pipe.execute()
        except Exception:
            log.exception("! answering a forwarded request failed")

    async def _heartbeats(self) -> None:
        interval = self._timeout / 5
        while True:
            await asyncio.sleep(interval)
            try:
                await self._beat()
            except Exception:
                log.warning("! node heartbeat failed; retrying")

    async def _reaper(self) -> None:
        interval = self._timeout / 5
        while True:
            await asyncio.sleep(interval)
            try:
                horizon = int((time.time() - self._timeout) * 1000)
                for node in await self._redis.zrangebyscore(self._k("nodes"), "-inf", horizon):
                    node_id = _text(node)
                    if node_id == self.node_id:
                        continue
                    lock = self._k(f"reap:{node_id}")
                    if await self._redis.set(lock, self.node_id, nx=True, px=60_000):
                        log.warning("! node %s missed its heartbeats; removing its state", node_id)
                        await self._reap(node_id)
            except Exception:
                log.exception("! reaping dead nodes failed; retrying")

    async def _reap(self, node_id: str) -> None:
        """Remove every trace of ``node_id``: presence subscriptions, counters, liveness."""
        prefix = f"{node_id}|"
        channels = await self._redis.smembers(self._k(f"n:{node_id}:p"))
        for raw in channels:
            channel = _text(raw)
            holders = await self._redis.hgetall(self._k(f"ph:{channel}"))
            for holder, value in holders.items():
                text = _text(value)
                if text.startswith(prefix):
                    update = await self.presence_leave(channel, _text(holder), text[len(prefix) :])
                    if update.change is Change.REMOVED and self._on_reaped is not None:
                        await self._on_reaped(channel, update, None)
        counts = await self._redis.hgetall(self._k(f"n:{node_id}:c"))
        held = [_text(c) for c in await self._redis.smembers(self._k(f"n:{node_id}:conns"))]
        for start in range(0, len(held), 1000):
            await self._redis.hdel(self._k("conns"), *held[start : start + 1000])
        await self._redis.delete(
            self._k(f"n:{node_id}:p"),
            self._k(f"n:{node_id}:c"),
            self._k(f"n:{node_id}:conns"),
            self._k(f"n:{node_id}:u"),
            self._k(f"n:{node_id}:m"),
        )
        await self._redis.zrem(self._k("nodes"), node_id)
        if self._on_reaped is not None:
            for raw, value in counts.items():
                if int(value) > 0:
                    channel = _text(raw)
                    await self._on_reaped(channel, None, await self.count(channel))
