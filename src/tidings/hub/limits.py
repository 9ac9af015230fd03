"""Rate and connection limits (spec §24.3), enforced per node and, for uids, cluster-wide.

* client frames per connection: a token bucket (``messageRate`` in the connect token replaces
  the node's rate); a refused frame is answered ``hotsock.error`` ``RATE_LIMITED`` and the
  connection stays open, unless one burst of refusals reaches ``rate_limited_close_after``:
  then it is closed with 1008;
* Client HTTP API calls per connection: 429 ``RATE_LIMITED`` with ``Retry-After``;
* new connections per source address per second, live connections per source address and per
  node (checked before the token is read), and per uid across the cluster (the broker counts).

Every refusal is counted for ``/metrics``; only the first of each burst is logged, through the
refusal log, with the number the previous burst refused.
"""

from __future__ import annotations

import logging
import math
import time

from tidings._refusals import refusals
from tidings.broker.base import Broker
from tidings.config import LimitSettings
from tidings.core import protocol
from tidings.core.limits import TokenBucket, message_rate
from tidings.core.tokens import Claims
from tidings.errors import CloseCode, ErrorCode, ProtocolError
from tidings.hub.connection import Connection
from tidings.hub.outbound import Frame

__all__ = ["ConnectionRefused", "Limits"]

log = logging.getLogger("tidings.limits")

_MAX_SOURCES = 10_000  # handshake buckets kept before full ones are forgotten


class ConnectionRefused(ProtocolError):
    """A handshake over a limit; ``retry_after`` seconds for the ``Retry-After`` header."""

    def __init__(self, message: str, *, status: int, retry_after: int) -> None:
        code = ErrorCode.RATE_LIMITED if status == 429 else ErrorCode.SERVICE_UNAVAILABLE
        super().__init__(code, message, status=status)
        self.retry_after = retry_after


class Limits:
    """The node's limits; the hub calls it at each entry point."""

    def __init__(self, *, settings: LimitSettings, broker: Broker) -> None:
        self._s = settings
        self._broker = broker
        self._handshakes: dict[str, TokenBucket] = {}  # source address -> bucket
        self._per_ip: dict[str, int] = {}  # source address -> live connections here
        self.live = 0  # connections counted against max_connections

    # Handshakes

    def admit_handshake(self, source_ip: str | None) -> None:
        """Check the per-address handshake rate and the per-node and per-address connection
        limits, before the token is verified.

        Raises:
            ConnectionRefused: answer 429 (or 503 when the node is full) with Retry-After.
        """
        s = self._s
        if s.max_connections and self.live >= s.max_connections:
            self._refused("handshake", ErrorCode.SERVICE_UNAVAILABLE, None)
            raise ConnectionRefused(
                f"this node holds its maximum of {s.max_connections} connections",
                status=503,
                retry_after=1,
            )
        if source_ip is None:
            return
        if s.max_connections_per_ip and self._per_ip.get(source_ip, 0) >= s.max_connections_per_ip:
            self._refused("handshake", ErrorCode.RATE_LIMITED, None)
            raise ConnectionRefused(
                f"at most {s.max_connections_per_ip} live connections per source address",
                status=429,
                retry_after=1,
            )
        if not s.handshakes_per_ip_per_second:
            return
        now = time.monotonic()
        bucket = self._handshakes.get(source_ip)
        if bucket is None:
            if len(self._handshakes) >= _MAX_SOURCES:
                self._forget_full(now)
            bucket = self._handshakes[source_ip] = TokenBucket(
                s.handshakes_per_ip_per_second, s.handshakes_per_ip_burst, now
            )
        if bucket.take(now):
            return
        self._refused("handshake", ErrorCode.RATE_LIMITED, bucket)
        raise ConnectionRefused(
            f"at most {s.handshakes_per_ip_per_second:g} new connections per second per source "
            "address",
            status=429,
            retry_after=max(1, math.ceil(bucket.retry_after())),
        )

    async def claim(self, claims: Claims, source_ip: str | None) -> None:
        """Count a verified connection against the per-uid (cluster-wide) and per-address
        limits; the caller must call ``release`` when a claim succeeded and the connection ends.

        Raises:
            ConnectionRefused: the uid holds its maximum of connections (429).
            BrokerUnavailable: the cluster count cannot be read (503).
        """
        s = self._s
        if claims.uid is not None and s.max_connections_per_uid:
            if not await self._broker.claim_user_connection(claims.uid, s.max_connections_per_uid):
                self._refused("handshake", ErrorCode.RATE_LIMITED, None)
                raise ConnectionRefused(
                    f"this user holds its maximum of {s.max_connections_per_uid} connections",
                    status=429,
                    retry_after=1,
                )
        self.live += 1
        if source_ip is not None:
            self._per_ip[source_ip] = self._per_ip.get(source_ip, 0) + 1

    async def release(self, uid: str | None, source_ip: str | None) -> None:
        """Undo a successful ``claim``."""
        self.live -= 1
        if source_ip is not None:
            left = self._per_ip.get(source_ip, 0) - 1
            if left > 0:
                self._per_ip[source_ip] = left
            else:
                self._per_ip.pop(source_ip, None)
        if uid is not None and self._s.max_connections_per_uid:
            await self._broker.release_user_connection(uid)

    def buckets(self, conn: Connection) -> None:
        """Give a new connection its message and HTTP buckets (``messageRate`` wins)."""
        s = self._s
        now = time.monotonic()
        rate = message_rate(conn.claims.raw) or (
            s.client_messages_per_second,
            s.client_messages_burst,
        )
        if rate[0]:
            conn.message_bucket = TokenBucket(rate[0], rate[1], now)
        if s.http_calls_per_second:
            conn.http_bucket = TokenBucket(s.http_calls_per_second, s.http_calls_burst, now)

    # Per-connection rates

    def refuse_frame(self, conn: Connection, bucket: TokenBucket) -> None:
        """Answer a frame its bucket refused: ``RATE_LIMITED``, or close 1008 when the burst
        reached ``rate_limited_close_after``."""
        self._refused("websocket", ErrorCode.RATE_LIMITED, bucket)
        close_after = self._s.rate_limited_close_after
        if close_after and bucket.refused >= close_after:
            log.info("x closing %s (1008): %d frames refused in one burst", conn.id, bucket.refused)
            conn.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
            return
        message = f"too many messages: at most {bucket.rate:g} per second (burst {bucket.burst})"
        conn.send(Frame(protocol.error_frame(ErrorCode.RATE_LIMITED, message)))

    def check_http(self, conn: Connection) -> None:
        """Spend one Client HTTP API call of ``conn``.

        Raises:
            ProtocolError: ``RATE_LIMITED`` (429); ``retry_after_seconds`` tells the header.
        """
        bucket = conn.http_bucket
        if bucket is None or bucket.take(time.monotonic()):
            return
        self._refused("http", ErrorCode.RATE_LIMITED, bucket)
        raise ProtocolError(
            ErrorCode.RATE_LIMITED,
            f"too many calls: at most {bucket.rate:g} per second (burst {bucket.burst})",
            status=429,
        )

    def retry_after_seconds(self) -> int:
        """``Retry-After`` for a refused Client HTTP API call: the time one call refills."""
        rate = self._s.http_calls_per_second
        return max(1, math.ceil(1 / rate)) if rate else 1

    # Private methods

    def _refused(self, where: str, code: ErrorCode, bucket: TokenBucket | None) -> None:
        if bucket is None or bucket.refused == 1:  # the first refusal of a burst
            refusals.refused(where, code, None, None, "limit reached")
        else:
            refusals.count(where, code)

    def _forget_full(self, now: float) -> None:
        full = [ip for ip, b in self._handshakes.items() if b.full(now)]
        for ip in full:
            del self._handshakes[ip]
        if len(self._handshakes) >= _MAX_SOURCES:  # all busy: forget the oldest half
            for ip in list(self._handshakes)[: _MAX_SOURCES // 2]:
                del self._handshakes[ip]
