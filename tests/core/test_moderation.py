"""Moderation request validation (spec §24.2)."""

from __future__ import annotations

from typing import Any

import pytest

from tidings.core.moderation import (
    DEFAULT_DISCONNECT_CODE,
    RECONNECT_CODES,
    TERMINAL_CODES,
    Disconnect,
    parse_channel_body,
    parse_disconnect,
    parse_server_subscribe,
)
from tidings.errors import CloseCode, ErrorCode, ProtocolError


def refused(fn: Any, body: Any, code: ErrorCode, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        fn(body)
    assert info.value.code is code
    assert message in info.value.message


def test_disconnect_without_body_is_terminal() -> None:
    """No body: the default code is in the terminal range, with a default reason."""
    assert parse_disconnect(None) == Disconnect(4500, "disconnected by the server")
    assert DEFAULT_DISCONNECT_CODE in TERMINAL_CODES
    assert CloseCode.REVOKED in TERMINAL_CODES
    assert 4000 in RECONNECT_CODES and 4499 in RECONNECT_CODES


def test_disconnect_takes_code_and_reason() -> None:
    """A given code and reason are kept."""
    assert parse_disconnect({"code": 4000, "reason": "move"}) == Disconnect(4000, "move")
    assert parse_disconnect({"code": 4999, "reason": "é" * 61}).code == 4999


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("x", "JSON object"),
        ({"code": 1000}, "4000 to 4999"),
        ({"code": 5000}, "4000 to 4999"),
        ({"code": "4000"}, "4000 to 4999"),
        ({"code": True}, "4000 to 4999"),
        ({"code": 4000.0}, "4000 to 4999"),
        ({"reason": 3}, "reason must be a string"),
        ({"reason": "é" * 62}, "at most 123 bytes"),
    ],
)
def test_disconnect_bad_body_is_refused(body: Any, message: str) -> None:
    """A code outside 4000-4999 or a reason that does not fit a close frame is refused."""
    refused(parse_disconnect, body, ErrorCode.INVALID_MESSAGE, message)


def test_channel_body_is_validated() -> None:
    """Unsubscribe bodies name a valid channel."""
    assert parse_channel_body({"channel": "room"}) == "room"
    refused(parse_channel_body, [], ErrorCode.INVALID_MESSAGE, "JSON object")
    refused(parse_channel_body, {}, ErrorCode.INVALID_CHANNEL, "")
    refused(parse_channel_body, {"channel": "a*"}, ErrorCode.INVALID_CHANNEL, "")


def test_server_subscribe_parses_directives_uid_and_umd() -> None:
    """Directives become grants for the one channel; uid/umd presence is recorded."""
    sub = parse_server_subscribe(
        {
            "channel": "presence.room",
            "directives": {"messages": {"chat": {"publish": True}}, "alias": "r"},
            "uid": "mod",
            "umd": {"role": "moderator"},
        }
    )
    assert sub.channel == "presence.room"
    assert sub.grants.message_flag("presence.room", "chat", "publish") is True
    assert sub.grants.alias_of("presence.room") == "r"
    assert (sub.uid, sub.has_uid, sub.umd, sub.has_umd) == (
        "mod",
        True,
        {"role": "moderator"},
        True,
    )
    bare = parse_server_subscribe({"channel": "room", "uid": ""})
    assert (bare.uid, bare.has_uid, bare.has_umd) == (None, False, False)
    assert bare.grants.has_exact_key("room")


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (None, ErrorCode.INVALID_MESSAGE, "JSON object"),
        ({"channel": 3}, ErrorCode.INVALID_CHANNEL, ""),
        ({"channel": "c", "directives": []}, ErrorCode.INVALID_MESSAGE, "directives must be"),
        (
            {"channel": "c", "directives": {"messages": {"e": {"store": "x"}}}},
            ErrorCode.INVALID_MESSAGE,
            "directives: ",
        ),
        ({"channel": "c", "uid": 5}, ErrorCode.INVALID_MESSAGE, "uid must be a string"),
        ({"channel": "c", "uid": "u" * 129}, ErrorCode.INVALID_MESSAGE, "uid must be"),
        ({"channel": "c", "umd": "x" * 1100}, ErrorCode.INVALID_MESSAGE, "umd must be"),
    ],
)
def test_server_subscribe_bad_body_is_refused(body: Any, code: ErrorCode, message: str) -> None:
    """Each malformed server subscribe is refused with a clear error."""
    refused(parse_server_subscribe, body, code, message)
