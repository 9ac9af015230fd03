"""Rate limits (spec §24.3): a token bucket, and the ``messageRate`` token directive.

Pure: callers pass ``now`` (monotonic seconds).
"""

from __future__ import annotations

from typing import Any

from tidings.errors import TokenError

__all__ = ["QUIET_SECONDS", "RATE_CLAIM", "TokenBucket", "message_rate"]

QUIET_SECONDS = 1.0
"""A burst of refusals ends once a request is allowed this long after the last refusal."""

RATE_CLAIM = "messageRate"
"""Connect-token claim ``{"perSecond": n, "burst": m}`` replacing the node's default
client-message rate for that connection (tidings extension)."""

_MAX_RATE = 100_000.0
_MAX_BURST = 1_000_000


class TokenBucket:
    """Allows ``burst`` requests at once and ``rate`` per second sustained.

    It also tracks the current burst of refusals: ``refused`` is how many requests were
    refused since the bucket last recovered (an allowed request ``QUIET_SECONDS`` after the
    latest refusal), so callers can log the first refusal of each burst only and act on a
    client that keeps going.
    """

    __slots__ = ("_last", "_last_refused", "_tokens", "burst", "rate", "refused")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate  # tokens per second
        self.burst = burst  # capacity
        self._tokens = float(burst)
        self._last = now
        self._last_refused = now
        self.refused = 0

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False (and one more refusal) if not."""
        tokens = self._tokens + (now - self._last) * self.rate
        self._last = now
        if tokens >= 1:
            self._tokens = min(float(self.burst), tokens) - 1
            if self.refused and now - self._last_refused >= QUIET_SECONDS:
                self.refused = 0
            return True
        self._tokens = tokens
        self.refused += 1
        self._last_refused = now
        return False

    def retry_after(self) -> float:
        """Seconds until the next token (after a refused ``take``)."""
        return max(0.0, (1 - self._tokens) / self.rate)

    def full(self, now: float) -> bool:
        """True when the bucket has refilled completely (it can be forgotten)."""
        return self._tokens + (now - self._last) * self.rate >= self.burst


def message_rate(claims: dict[str, Any]) -> tuple[float, int] | None:
    """The ``messageRate`` directive of a connect token, or None when absent.

    Raises:
        TokenError: the directive is malformed (the token is refused, spec §3.9).
    """
    value = claims.get(RATE_CLAIM)
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"perSecond", "burst"}:
        raise TokenError(f"token {RATE_CLAIM} must be an object with perSecond and burst")
    rate, burst = value.get("perSecond"), value.get("burst")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= _MAX_RATE:
        raise TokenError(f"token {RATE_CLAIM}.perSecond must be a number above 0, at most 100000")
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= _MAX_BURST:
        raise TokenError(f"token {RATE_CLAIM}.burst must be an integer from 1 to 1000000")
    return float(rate), burst
