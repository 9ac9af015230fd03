"""core/limits.py: the token bucket and the messageRate directive (pure, explicit clock)."""

from __future__ import annotations

import pytest

from tidings.core.limits import QUIET_SECONDS, TokenBucket, message_rate
from tidings.errors import TokenError


def test_bucket_allows_the_burst_then_the_rate() -> None:
    """A full bucket allows ``burst`` at once, then one per 1/rate seconds."""
    bucket = TokenBucket(2.0, 3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == pytest.approx(0.5)
    assert not bucket.take(0.25)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)


def test_bucket_never_holds_more_than_its_burst() -> None:
    """A long quiet spell refills to ``burst``, not beyond."""
    bucket = TokenBucket(10.0, 2, now=0.0)
    assert not bucket.full(0.0) or bucket.take(0.0)
    assert bucket.full(100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [True, True, False]
    assert not bucket.full(100.0)


def test_bucket_counts_one_burst_of_refusals_until_it_recovers() -> None:
    """``refused`` grows while refusals keep coming and resets once a request is allowed
    QUIET_SECONDS after the latest refusal."""
    bucket = TokenBucket(1.0, 1, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.1) and not bucket.take(0.2)
    assert bucket.refused == 2
    assert bucket.take(1.1)  # allowed, but the burst is still going (0.9 s after a refusal)
    assert bucket.refused == 2
    assert not bucket.take(1.2)
    assert bucket.refused == 3
    assert bucket.take(1.2 + QUIET_SECONDS)
    assert bucket.refused == 0


def test_message_rate_reads_the_directive() -> None:
    """Absent: None; present: (perSecond, burst)."""
    assert message_rate({}) is None
    assert message_rate({"messageRate": None}) is None
    assert message_rate({"messageRate": {"perSecond": 5, "burst": 10}}) == (5.0, 10)
    assert message_rate({"messageRate": {"perSecond": 0.5, "burst": 1}}) == (0.5, 1)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("fast", "an object"),
        ({"perSecond": 1}, "burst"),
        ({"burst": 1}, "perSecond"),
        ({"perSecond": 1, "burst": 1, "x": 1}, "an object"),
        ({"perSecond": 0, "burst": 1}, "perSecond"),
        ({"perSecond": 100_001, "burst": 1}, "perSecond"),
        ({"perSecond": True, "burst": 1}, "perSecond"),
        ({"perSecond": "1", "burst": 1}, "perSecond"),
        ({"perSecond": 1, "burst": 0}, "burst"),
        ({"perSecond": 1, "burst": 1_000_001}, "burst"),
        ({"perSecond": 1, "burst": 2.0}, "burst"),
        ({"perSecond": 1, "burst": False}, "burst"),
    ],
)
def test_message_rate_refuses_malformed_directives(value: object, match: str) -> None:
    """A malformed directive is a TokenError naming the field."""
    with pytest.raises(TokenError, match=match):
        message_rate({"messageRate": value})
