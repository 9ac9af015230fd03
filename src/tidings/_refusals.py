"""One log line per refused request, so operators see refusals at the default level (issue 9).

Every refused WebSocket command, Client HTTP API call or server publish (a 4xx answer) is logged
at INFO with its code, channel and event, and never with tokens, secrets or payloads. A token
bucket bounds the rate, so a client flooding bad requests cannot fill the disk: what the bucket
drops is counted and reported in the next line that gets through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RefusalLog", "refusals"]


class RefusalLog:
    """Rate-limited refusal lines on the ``tidings.refused`` logger."""

    def __init__(
        self,
        *,
        per_second: float = 20.0,
        burst: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = logging.getLogger("tidings.refused")
        self._per_second = per_second  # sustained lines per second
        self._burst = float(burst)  # lines that may go out at once after a quiet spell
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        self.suppressed = 0  # refusals dropped since the last line that went out
        # every refusal by (entry point kind, code), logged or not: the metrics read these
        self.counts: dict[tuple[str, str], int] = {}

    def count(self, where: str, code: str) -> None:
        """Count a refusal without logging it (the rest of a burst already logged once)."""
        key = (where.partition(":")[0], str(code))
        self.counts[key] = self.counts.get(key, 0) + 1

    def refused(
        self, where: str, code: str, channel: str | None, event: str | None, reason: str
    ) -> None:
        """Log one refusal unless the rate limit is exhausted (then count it).

        Args:
            where: the entry point: ``websocket``, ``http:<operation>`` or ``publish``.
            code: the wire error code.
            channel: the channel as the client sent it, if any.
            event: the event or command, if known.
            reason: the client-safe error message (never contains a token).
        """
        self.count(where, code)
        if not self.log.isEnabledFor(logging.INFO):
            return
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._per_second)
        self._last = now
        if self._tokens < 1:
            self.suppressed += 1
            return
        self._tokens -= 1
        dropped, self.suppressed = self.suppressed, 0
        self.log.info(
            "! refused %s on %s: channel=%r event=%r: %s%s",
            code,
            where,
            _short(channel),
            _short(event),
            reason,
            f" ({dropped} more refusals not logged)" if dropped else "",
        )


def _short(value: str | None, limit: int = 300) -> str | None:
    if value is None or len(value) <= limit:
        return value
    return value[:limit] + "…"


refusals = RefusalLog()
"""The process-wide refusal log every adapter reports to."""
