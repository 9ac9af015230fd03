"""Publish request validation shared by every entry point (core/requests.py)."""

from __future__ import annotations

import pytest

from tidings.core.requests import (
    flag,
    parse_body,
    parse_body_object,
    parse_server_publish,
    refuse_schedule,
)
from tidings.errors import ErrorCode, ProtocolError


def _code(fn: object, *args: object) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.code


def test_parse_body_accepts_any_json_and_refuses_empty() -> None:
    """A body is JSON whatever it holds; blank or malformed is INVALID_MESSAGE."""
    assert parse_body(b"[1]") == [1]
    assert _code(parse_body, b"  ") is ErrorCode.INVALID_MESSAGE
    assert _code(parse_body, b"{") is ErrorCode.INVALID_MESSAGE


def test_parse_body_object_requires_an_object() -> None:
    """Client HTTP API bodies must be JSON objects."""
    assert parse_body_object(b'{"a": 1}') == {"a": 1}
    assert _code(parse_body_object, b"") is ErrorCode.INVALID_MESSAGE
    with pytest.raises(ProtocolError, match="request body must be a JSON object"):
        parse_body_object(b"[]")


def test_flag_reads_optional_booleans() -> None:
    """Absent and null are False; a non-boolean is refused with the option's name."""
    assert flag({}, "eagerIdGeneration") is False
    assert flag({"eagerIdGeneration": None}, "eagerIdGeneration") is False
    assert flag({"eagerIdGeneration": True}, "eagerIdGeneration") is True
    with pytest.raises(ProtocolError, match="emitPubSubEvent must be a boolean"):
        flag({"emitPubSubEvent": "yes"}, "emitPubSubEvent")


def test_refuse_schedule_refuses_only_a_given_expression() -> None:
    """A request that cannot be scheduled refuses an expression, naming itself; null is no
    schedule."""
    refuse_schedule({"scheduleExpression": None}, "a reaction")
    with pytest.raises(ProtocolError, match="a reaction cannot be scheduled") as info:
        refuse_schedule({"scheduleExpression": "at(2030-01-01T00:00:00)"}, "a reaction")
    assert info.value.code is ErrorCode.INVALID_SCHEDULE


def test_parse_server_publish_reads_every_field() -> None:
    """A full POST /publish message becomes one ServerPublish."""
    msg = parse_server_publish(
        {
            "channel": "room",
            "event": "e",
            "data": {"x": 1},
            "store": 60,
            "deduplicationId": "d-1",
            "eagerIdGeneration": True,
            "emitPubSubEvent": True,
            "scheduleExpression": "at(2030-01-01T00:00:00)",
            "scheduleExpressionTimezone": "Europe/Paris",
        }
    )
    assert (msg.channel, msg.event, msg.data_json, msg.store_seconds) == (
        "room",
        "e",
        b'{"x":1}',
        60,
    )
    assert (msg.deduplication_id, msg.eager, msg.emit_event) == ("d-1", True, True)
    assert msg.due_ms == 1_893_452_400_000  # 2029-12-31T23:00:00Z


def test_parse_server_publish_defaults() -> None:
    """Only channel and event are required; an empty deduplicationId means none."""
    msg = parse_server_publish({"channel": "room", "event": "e", "deduplicationId": ""})
    assert (msg.data_json, msg.store_seconds, msg.deduplication_id) == (b"null", 0, None)
    assert (msg.eager, msg.emit_event, msg.due_ms) == (False, False, None)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("not an object", ErrorCode.INVALID_MESSAGE),
        ({"event": "e"}, ErrorCode.INVALID_CHANNEL),
        ({"channel": "room"}, ErrorCode.INVALID_EVENT),
        ({"channel": "room", "event": "e", "store": "x"}, ErrorCode.INVALID_MESSAGE),
        ({"channel": "room", "event": "e", "deduplicationId": 5}, ErrorCode.INVALID_MESSAGE),
        ({"channel": "room", "event": "e", "eagerIdGeneration": 1}, ErrorCode.INVALID_MESSAGE),
        ({"channel": "room", "event": "e", "scheduleExpression": "x"}, ErrorCode.INVALID_SCHEDULE),
    ],
)
def test_parse_server_publish_refuses_bad_fields(body: object, code: ErrorCode) -> None:
    """Each bad field is refused with its own code."""
    assert _code(parse_server_publish, body) is code
