"""``MemoryBroker``: the single-node broker (``memory://``). Delivery is a direct call."""

from __future__ import annotations

import heapq
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

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
from tidings.core.ids import ChannelIdMinter
from tidings.core.presence import Change, PresenceChannel

__all__ = ["MemoryBroker"]


class MemoryBroker:
    """Delivers synchronously to the local hub; claims, presence and counts live in dicts."""

    def __init__(self) -> None:
        self.node_id = secrets.token_hex(8)
        self._deliver: DeliverFn | None = None
        self._control: ControlFn | None = None
        self._claims: dict[str, tuple[str, float]] = {}  # key -> (value, expires at, monotonic)
        self._expiry: list[tuple[float, str]] = []  # heap to evict claims without full scans
        self._minter = ChannelIdMinter()
        self._presence: dict[str, PresenceChannel] = {}
        self._counts: dict[str, int] = {}
        self._users: dict[str, int] = {}  # uid -> live connections (limits)
        self.stats = BrokerStats()  # no server, so no round trips: zeros keep dashboards whole

    async def start(
        self,
        deliver: DeliverFn,
        *,
        serve: ServeFn | None = None,
        reaped: ReapedFn | None = None,
        control: ControlFn | None = None,
    ) -> None:
        self._deliver = deliver  # one node: nothing is ever forwarded here, and nothing dies
        self._control = control

    async def subscribe(self, channel: str) -> None:
        return None

    async def unsubscribe(self, channel: str) -> None:
        return None

    @asynccontextmanager
    async def ordering(self, channel: str) -> AsyncIterator[Minter]:
        # one node: the hub's channel lane already serialises a channel's publications
        yield lambda now_ms: self._minter.mint(channel, now_ms)

    async def publish(self, channel: str, deliveries: Sequence[Delivery]) -> None:
        if self._deliver is not None:
            self._deliver(channel, deliveries)

    def publish_now(self, channel: str, build: Callable[[Minter], Sequence[Delivery]]) -> bool:
        deliveries = build(lambda now_ms: self._minter.mint(channel, now_ms))
        if self._deliver is not None and deliveries:
            self._deliver(channel, deliveries)
        return True

    async def claim_once(self, key: str, value: str, ttl_ms: int) -> str | None:
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            _, old = heapq.heappop(self._expiry)
            held = self._claims.get(old)
            if held is not None and held[1] <= now:
                del self._claims[old]
        held = self._claims.get(key)
        if held is not None and held[1] > now:
            return held[0]
        expires = now + min(max(1, ttl_ms), MAX_CLAIM_TTL_MS) / 1000
        self._claims[key] = (value, expires)
        heapq.heappush(self._expiry, (expires, key))
        return None

    async def release(self, key: str, value: str) -> None:
        held = self._claims.get(key)
        if held is not None and held[0] == value:
            del self._claims[key]

    async def presence_join(
        self, channel: str, holder: str, uid: str, umd: Any, *, max_bytes: int
    ) -> PresenceUpdate:
        presence = self._presence.get(channel) or PresenceChannel(channel, max_bytes=max_bytes)
        presence.check_join(uid, umd)
        self._presence[channel] = presence
        change = presence.join(holder, uid, umd)
        member = presence.member(uid) if change is not Change.NONE else None
        return PresenceUpdate(change, member, presence.members())

    async def presence_leave(self, channel: str, holder: str, uid: str) -> PresenceUpdate:
        presence = self._presence.get(channel)
        if presence is None:
            return PresenceUpdate(Change.NONE, None, [])
        change, member = presence.leave(holder, uid)
        if not len(presence):
            del self._presence[channel]
        return PresenceUpdate(change, member, presence.members())

    async def presence_members(self, channel: str) -> list[dict[str, Any]]:
        presence = self._presence.get(channel)
        return presence.members() if presence is not None else []

    async def count_add(self, channel: str, delta: int) -> int:
        count = self._counts.get(channel, 0) + delta
        if count > 0:
            self._counts[channel] = count
        else:
            self._counts.pop(channel, None)
        return max(count, 0)

    async def count(self, channel: str) -> int:
        return self._counts.get(channel, 0)

    async def claim_user_connection(self, uid: str, limit: int) -> bool:
        if self._users.get(uid, 0) >= limit:
            return False
        self._users[uid] = self._users.get(uid, 0) + 1
        return True

    async def release_user_connection(self, uid: str) -> None:
        left = self._users.get(uid, 0) - 1
        if left > 0:
            self._users[uid] = left
        else:
            self._users.pop(uid, None)

    async def register_connection(self, connection_id: str) -> None:
        return None

    async def forget_connection(self, connection_id: str) -> None:
        return None

    async def forward(self, connection_id: str, request: bytes) -> bytes | None:
        return None  # the hub checked its own connections first; there is no other node

    async def broadcast(self, command: bytes) -> list[bytes]:
        return [] if self._control is None else [await self._control(command)]

    async def aclose(self) -> None:
        self._deliver = None
        self._control = None


_: type[Broker] = MemoryBroker
