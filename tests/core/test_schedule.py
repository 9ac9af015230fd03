"""Scheduling rules (core/schedule.py): ``at(…)``, time zones and DST, ``scheduleBefore``,
schedule IDs (spec §14)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tidings.core.schedule import (
    check_schedule_before,
    parse_at,
    read_schedule,
    schedule_arn,
    schedule_id_from_path,
)
from tidings.errors import ErrorCode, ProtocolError

ULID = "01JA3S0P7FB7WVYS67X316M32S"


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _refusal(expression: object, timezone: object = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_at(expression, timezone)
    return info.value


def test_parse_at_reads_utc_by_default() -> None:
    """Without a zone the expression is UTC; an empty zone is the same."""
    assert _utc(parse_at("at(2030-01-02T03:04:05)")) == "2030-01-02T03:04:05"
    assert parse_at("at(2030-01-02T03:04:05)", "") == parse_at("at(2030-01-02T03:04:05)")


def test_parse_at_applies_an_iana_zone() -> None:
    """A named zone shifts the instant by its offset on that date (winter and summer)."""
    assert _utc(parse_at("at(2030-01-15T12:00:00)", "Europe/Berlin")) == "2030-01-15T11:00:00"
    assert _utc(parse_at("at(2030-07-15T12:00:00)", "Europe/Berlin")) == "2030-07-15T10:00:00"
    assert _utc(parse_at("at(2030-07-15T12:00:00)", "America/New_York")) == "2030-07-15T16:00:00"


def test_parse_at_resolves_a_dst_gap_to_the_earlier_offset() -> None:
    """02:30 does not exist in Berlin on 2026-03-29: it is read with +01:00, the offset
    before the change."""
    assert _utc(parse_at("at(2026-03-29T02:30:00)", "Europe/Berlin")) == "2026-03-29T01:30:00"


def test_parse_at_resolves_a_dst_repeat_to_the_earlier_offset() -> None:
    """02:30 happens twice in Berlin on 2026-10-25: the first, at +02:00, is meant."""
    assert _utc(parse_at("at(2026-10-25T02:30:00)", "Europe/Berlin")) == "2026-10-25T00:30:00"


@pytest.mark.parametrize(
    "expression",
    ["rate(5 minutes)", "cron(0 12 * * ? *)", "rate(1 day)", "cron()"],
)
def test_parse_at_refuses_recurring_expressions(expression: str) -> None:
    """rate(…) and cron(…) are recurring: refused, naming the reason."""
    refusal = _refusal(expression)
    assert refusal.code is ErrorCode.INVALID_SCHEDULE
    assert "recurring" in refusal.message


@pytest.mark.parametrize(
    "expression",
    [
        "at(2030-02-30T00:00:00)",
        "at(2030-13-01T00:00:00)",
        "at(2030-01-01T24:00:00)",
        "at(2030-01-01T00:60:00)",
        "at(2030-01-01T00:00:60)",
        "at(0000-01-01T00:00:00)",
        "at(2031-02-29T00:00:00)",
    ],
)
def test_parse_at_refuses_impossible_dates(expression: str) -> None:
    """A date or time that the calendar does not have is INVALID_SCHEDULE."""
    refusal = _refusal(expression)
    assert refusal.code is ErrorCode.INVALID_SCHEDULE
    assert "no real date" in refusal.message


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "at(2030-01-01 00:00:00)",
        "at(2030-01-01T00:00)",
        "at(2030-1-01T00:00:00)",
        "at(2030-01-01T00:00:00Z)",
        " at(2030-01-01T00:00:00)",
        "AT(2030-01-01T00:00:00)",
        "2030-01-01T00:00:00",
    ],
)
def test_parse_at_refuses_other_shapes(expression: str) -> None:
    """Only the exact at(YYYY-MM-DDThh:mm:ss) form is accepted."""
    assert _refusal(expression).code is ErrorCode.INVALID_SCHEDULE


@pytest.mark.parametrize("expression", [5, ["at(2030-01-01T00:00:00)"], {"at": 1}, True])
def test_parse_at_refuses_non_strings(expression: object) -> None:
    """The expression must be a string."""
    assert _refusal(expression).message == "scheduleExpression must be a string"


@pytest.mark.parametrize(
    "zone",
    ["Mars/Olympus_Mons", "Europe", "/etc/passwd", "../../etc/passwd", "zone.tab", "a\x00b"],
)
def test_parse_at_refuses_unknown_zones(zone: str) -> None:
    """A name that is not a tz database zone (directories, paths, data files) is refused."""
    refusal = _refusal("at(2030-01-01T00:00:00)", zone)
    assert refusal.code is ErrorCode.INVALID_SCHEDULE
    assert "unknown time zone" in refusal.message


def test_parse_at_refuses_a_non_string_zone() -> None:
    """The zone must be a string when given."""
    assert _refusal("at(2030-01-01T00:00:00)", 1).message == (
        "scheduleExpressionTimezone must be a string"
    )


def test_read_schedule_without_expression_ignores_the_zone() -> None:
    """No expression means no schedule, even beside a zone (valid or not)."""
    assert read_schedule({}) is None
    assert read_schedule({"scheduleExpression": None, "scheduleExpressionTimezone": "Nope"}) is None
    assert read_schedule({"scheduleExpressionTimezone": "Europe/Berlin"}) is None


def test_read_schedule_reads_expression_and_zone() -> None:
    """Both fields are read together."""
    body = {
        "scheduleExpression": "at(2030-01-15T12:00:00)",
        "scheduleExpressionTimezone": "Europe/Berlin",
    }
    assert read_schedule(body) == parse_at("at(2030-01-15T12:00:00)", "Europe/Berlin")


def test_check_schedule_before_allows_up_to_the_limit() -> None:
    """The scheduled instant may equal scheduleBefore (seconds), or precede it."""
    check_schedule_before(2_000_000, 2_000, 1_000_000)
    check_schedule_before(1_500_000, 2_000, 1_000_000)
    check_schedule_before(500_000, 2_000, 1_000_000)  # past times run at once


@pytest.mark.parametrize(
    ("due_ms", "before", "now_ms", "reason"),
    [
        (1_500_000, 0, 1_000_000, "absent or past"),
        (500_000, 900, 1_000_000, "absent or past"),
        (500_000, 1_000, 1_000_000, "absent or past"),
        (2_000_001, 2_000, 1_000_000, "later than scheduleBefore"),
    ],
)
def test_check_schedule_before_refuses(due_ms: int, before: int, now_ms: int, reason: str) -> None:
    """No scheduleBefore, one already past, or a time beyond it: SCHEDULE_PERMISSION_DENIED."""
    with pytest.raises(ProtocolError) as info:
        check_schedule_before(due_ms, before, now_ms)
    assert info.value.code is ErrorCode.SCHEDULE_PERMISSION_DENIED
    assert reason in info.value.message


def test_schedule_ids_round_trip_through_the_arn() -> None:
    """The scheduleArn wraps the ULID; DELETE takes either form and nothing else."""
    arn = schedule_arn(ULID)
    assert arn == f"tidings:schedule:{ULID}"
    assert schedule_id_from_path(arn) == ULID
    assert schedule_id_from_path(ULID) == ULID
    assert schedule_id_from_path("tidings:schedule:nope") is None
    assert schedule_id_from_path(ULID.lower()) is None
    assert schedule_id_from_path("") is None
