"""``Connection``: one client's state on this node, its bounded outbound queue, and the watchdog
that enforces its lifetime, idle and heartbeat deadlines (spec §4.5, §4.6)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tidings.config import TimeoutSettings
from tidings.core import protocol
from tidings.core.limits import TokenBucket
from tidings.core.permissions import Permissions
from tidings.core.tokens import Claims
from tidings.errors import CloseCode
from tidings.hub.outbound import Frame, Outlet

__all__ = ["Connection", "Subscription", "arm_watchdog"]

_CHUNK_BYTES = 64 * 1024  # backlog bytes written per wake-up of the flusher (asyncio's high water)


@dataclass(slots=True)
class Subscription:
    """An active subscription of one connection to one channel (spec §6)."""

    channel: str  # the real channel name
    alias: str | None  # the alias the subscription was made under, if any
    uid: str | None
    umd: Any
    umd_json: bytes  # compact JSON of ``umd``, precomputed for message ``meta``
    permissions: Permissions  # layered directives (subscribe token over connect token)
    subscribed_ms: int  # Unix ms; the default lower bound of listMessages
    counted: bool  # False when ``omitFromSubCount`` applies
    auto: bool  # created by autoSubscribe


class Connection:
    """A live client connection. The hub owns it; the WebSocket adapter feeds it frames.

    Frames are written straight to the transport while it keeps up; once the transport pauses,
    they wait in a backlog drained by one short-lived task, a chunk at a time. The connection is
    closed with 1013 (slow consumer), without waiting for the peer, when the backlog's bytes pass
    their bound (the memory cap) or when the transport stays paused for the write timeout while
    frames wait (a stalled peer). A reader that keeps taking chunks survives any burst the byte
    bound allows; a frame count alone cannot tell it from a stalled one.

    ``__slots__`` and the lazily created backlog keep an idle connection small: thousands of them
    sit on one node.
    """

    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_flusher",
        "_max_bytes",
        "_outlet",
        "_write_timeout",
        "claims",
        "closed",
        "connected_ms",
        "expires_ms",
        "http_bucket",
        "id",
        "last_activity",
        "last_heartbeat",
        "limits_held",
        "message_bucket",
        "next_keepalive",
        "permissions",
        "secret",
        "source_ip",
        "subscriptions",
        "timer",
        "uid",
        "umd",
        "user_agent",
    )

    def __init__(
        self,
        *,
        connection_id: str,
        secret: str,
        claims: Claims,
        outlet: Outlet,
        connected_ms: int,
        expires_ms: int,
        source_ip: str | None,
        user_agent: str | None,
        max_bytes: int,
        write_timeout: float,
    ) -> None:
        self.id = connection_id
        self.secret = secret  # never logged; dies with the connection
        self.claims = claims  # the connect token
        self.permissions = Permissions(claims.grants)  # connect-token-only directives
        self.uid = claims.uid  # current connection-level uid/umd (umd may be updated later)
        self.umd = claims.umd
        self.connected_ms = connected_ms
        self.expires_ms = expires_ms
        self.source_ip = source_ip
        self.user_agent = user_agent
        self.subscriptions: dict[str, Subscription] = {}  # real channel -> subscription
        self.closed = False
        self.last_activity = 0.0  # monotonic time of the latest data frame either way
        self.last_heartbeat = 0.0  # monotonic time of connect or the latest hotsock.heartbeat
        self.next_keepalive = float("inf")  # monotonic time of the next hotsock.keepAlive
        self.timer: asyncio.TimerHandle | None = None  # the hub's watchdog; cancelled on close
        self._outlet = outlet
        self._backlog: deque[Frame] | None = None  # created when the transport first pauses
        self._backlog_bytes = 0
        self._max_bytes = max_bytes
        self._write_timeout = write_timeout
        self._flusher: asyncio.Task[None] | None = None
        self.message_bucket: TokenBucket | None = None  # client frames (hub/limits.py)
        self.http_bucket: TokenBucket | None = None  # Client HTTP API calls
        self.limits_held = False  # counted against the per-IP and per-uid connection limits

    # Public methods

    def send(self, frame: Frame) -> None:
        """Queue one frame; never blocks."""
        self.last_activity = time.monotonic()
        self.send_many((frame,))

    def send_many(self, frames: Sequence[Frame]) -> None:
        """Queue frames in order; never blocks. Over the bound, the connection is closed 1013.
        The caller keeps ``last_activity`` current (fan-out reads the clock once per batch)."""
        if self.closed or not frames:
            return
        if not self._backlog and self._outlet.writable():
            self._outlet.write(frames)
            return
        if self._backlog is None:
            self._backlog = deque()
        self._backlog.extend(frames)
        self._backlog_bytes += sum(len(f) for f in frames)
        if self._backlog_bytes > self._max_bytes:
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")
        elif self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    def close(self, code: int, reason: str) -> None:
        """Start closing; idempotent and non-blocking. The adapter then reports the end to the
        hub, which removes the subscriptions."""
        if self.closed:
            return
        self.closed = True
        self._backlog = None
        if self.timer is not None:
            self.timer.cancel()
        if self._flusher is not None:
            self._flusher.cancel()
        self._outlet.close(code, reason)

    def resolve_channel(self, name: str, extra: Callable[[str], str | None] | None = None) -> str:
        """Spec §6.3: map a client-supplied name to the real channel (``extra`` looks up aliases
        in a subscribe token first)."""
        if name in self.subscriptions or self.claims.grants.has_exact_key(name):
            return name
        for sub in self.subscriptions.values():
            if sub.alias == name:
                return sub.channel
        if extra is not None:
            target = extra(name)
            if target is not None:
                return target
        return self.claims.grants.alias_target(name) or name

    # Private methods

    async def _flush(self) -> None:
        try:
            while self._backlog and not self.closed:
                try:
                    async with asyncio.timeout(self._write_timeout):
                        await self._outlet.wait_writable()
                except TimeoutError:
                    # the peer took nothing for the whole write timeout: stalled, not slow
                    self._flusher = None  # close() must not cancel the task it runs in
                    self.close(CloseCode.SLOW_CONSUMER, "slow consumer")
                    return
                if self.closed or not self._backlog:
                    return
                # one chunk per wake-up, so each wait measures the peer's progress on a bounded
                # amount rather than on the whole backlog written at once
                backlog, frames, size = self._backlog, [], 0
                while backlog and size < _CHUNK_BYTES:
                    frame = backlog.popleft()
                    frames.append(frame)
                    size += len(frame)
                self._backlog_bytes -= size
                self._outlet.write(frames)
        finally:
            self._flusher = None


def arm_watchdog(conn: Connection, timeouts: TimeoutSettings) -> None:
    """Start the connection's watchdog: one timer per connection that enforces the lifetime
    cap, the idle timeout and ``heartbeatTimeout``, and sends ``hotsock.keepAlive``. It is
    re-armed for the nearest deadline, so activity costs only an attribute write."""
    start = time.monotonic()
    conn.last_activity = conn.last_heartbeat = start
    if conn.claims.keep_alive:
        conn.next_keepalive = start + timeouts.keepalive_seconds
    _watchdog(conn, timeouts, start + timeouts.max_connection_seconds)


def _watchdog(conn: Connection, t: TimeoutSettings, expires: float) -> None:
    if conn.closed:
        return
    now = time.monotonic()
    if now >= conn.next_keepalive:
        conn.send(Frame(protocol.keepalive_frame()))
        conn.next_keepalive = now + t.keepalive_seconds
    deadlines = [(expires, "connection expired")]
    if t.idle_timeout_seconds > 0:
        deadlines.append((conn.last_activity + t.idle_timeout_seconds, "idle timeout"))
    if conn.claims.heartbeat_timeout:
        deadlines.append((conn.last_heartbeat + conn.claims.heartbeat_timeout, "heartbeat timeout"))
    due, reason = min(deadlines)
    if now >= due:
        conn.close(CloseCode.GOING_AWAY, reason)
        return
    wake = min(due, conn.next_keepalive)
    conn.timer = asyncio.get_running_loop().call_later(wake - now, _watchdog, conn, t, expires)
