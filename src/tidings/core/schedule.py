"""Scheduling rules (spec §14): ``at(…)`` expressions, their time zone, ``scheduleBefore``, and
the opaque schedule IDs handed back as ``scheduleArn``.

Pure: callers pass the clock reading (``now_ms``). Zone rules come from ``zoneinfo`` (the
system's tz database, or the ``tzdata`` package where the system has none).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tidings.core.ids import is_ulid
from tidings.errors import ErrorCode, ProtocolError

__all__ = [
    "SCHEDULE_ARN_PREFIX",
    "check_schedule_before",
    "parse_at",
    "read_schedule",
    "schedule_arn",
    "schedule_id_from_path",
]

SCHEDULE_ARN_PREFIX = "tidings:schedule:"

_AT = re.compile(r"at\((\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\)")
_RECURRING = re.compile(r"(rate|cron)\(.*\)", re.DOTALL)


def parse_at(expression: object, timezone: object = None) -> int:
    """The instant (Unix milliseconds) that ``at(YYYY-MM-DDThh:mm:ss)`` names in ``timezone``
    (an IANA name; None or empty means UTC).

    A local time that does not exist (a DST gap) or occurs twice (a DST repeat) takes the
    offset in force before the change, the earlier one (spec §14).

    Raises:
        ProtocolError: ``INVALID_SCHEDULE`` for anything but a one-time ``at(…)`` naming a
            real date and time in a known zone.
    """
    if not isinstance(expression, str):
        raise _invalid("scheduleExpression must be a string")
    if _RECURRING.fullmatch(expression):
        raise _invalid(
            f"recurring schedules are not supported: {expression[:64]!r}; "
            "use at(YYYY-MM-DDThh:mm:ss)"
        )
    match = _AT.fullmatch(expression)
    if match is None:
        raise _invalid(f"scheduleExpression {expression[:64]!r} is not at(YYYY-MM-DDThh:mm:ss)")
    zone = _zone(timezone)
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    try:
        local = datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError:
        raise _invalid(f"scheduleExpression {expression!r} names no real date and time") from None
    # fold=0 (the default) is the pre-transition offset for both gaps and repeats (PEP 495)
    return int(local.timestamp() * 1000)


def read_schedule(body: dict[str, Any]) -> int | None:
    """The scheduled instant of a request body (Unix ms), or None when it names none; a
    ``scheduleExpressionTimezone`` without an expression is ignored (spec §14).

    Raises:
        ProtocolError: ``INVALID_SCHEDULE`` (see ``parse_at``).
    """
    expression = body.get("scheduleExpression")
    if expression is None:
        return None
    return parse_at(expression, body.get("scheduleExpressionTimezone"))


def check_schedule_before(due_ms: int, schedule_before: int, now_ms: int) -> None:
    """A client may schedule for ``due_ms`` only when ``scheduleBefore`` (Unix seconds) is in
    the future and not earlier than the scheduled instant (spec §3.7, §14).

    Raises:
        ProtocolError: ``SCHEDULE_PERMISSION_DENIED``.
    """
    limit_ms = schedule_before * 1000
    if limit_ms <= now_ms:
        raise ProtocolError(
            ErrorCode.SCHEDULE_PERMISSION_DENIED,
            "scheduling is not permitted (scheduleBefore is absent or past)",
        )
    if due_ms > limit_ms:
        raise ProtocolError(
            ErrorCode.SCHEDULE_PERMISSION_DENIED,
            "the scheduled time is later than scheduleBefore allows",
        )


def schedule_arn(schedule_id: str) -> str:
    """The ``scheduleArn`` answered for a schedule: ``tidings:schedule:<ULID>``."""
    return SCHEDULE_ARN_PREFIX + schedule_id


def schedule_id_from_path(value: str) -> str | None:
    """The schedule ULID that ``DELETE /schedules/{value}`` names (the bare ULID or the whole
    ``scheduleArn``), or None when it cannot name one."""
    if value.startswith(SCHEDULE_ARN_PREFIX):
        value = value[len(SCHEDULE_ARN_PREFIX) :]
    return value if is_ulid(value) else None


def _zone(timezone: object) -> tzinfo:
    if timezone is None or timezone == "":
        return UTC
    if not isinstance(timezone, str):
        raise _invalid("scheduleExpressionTimezone must be a string")
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: a key that is not a relative path (absolute, "..", NUL); OSError: a
        # directory or unreadable file under a valid-looking key
        raise _invalid(f"unknown time zone {timezone[:64]!r}") from None


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_SCHEDULE, message)
