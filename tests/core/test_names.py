"""Name and size validation (spec §2.1)."""

from __future__ import annotations

import pytest

from tidings.core.names import (
    is_presence,
    is_valid_channel,
    validate_channel,
    validate_data,
    validate_event,
    validate_store,
    validate_uid,
    validate_umd,
)
from tidings.errors import ErrorCode, ProtocolError


@pytest.mark.parametrize("name", ["a", "chat.1", "presence.x", "é" * 256, "a/b?c%d", "a:b;c"])
def test_channel_valid_names(name: str) -> None:
    """Ordinary names, up to 256 code points, are accepted."""
    assert is_valid_channel(name) and validate_channel(name) == name


@pytest.mark.parametrize(
    "name", ["", "x" * 257, "a*b", "a#b", "a,b", "a b", "a\tb", "a\u2003b", "a\x00b", "a\x7fb", 5]
)
def test_channel_invalid_names(name: object) -> None:
    """Empty, too long, '*', '#', ',', whitespace, control characters and non-strings fail."""
    assert not is_valid_channel(name)
    with pytest.raises(ProtocolError) as info:
        validate_channel(name)
    assert info.value.code is ErrorCode.INVALID_CHANNEL


def test_channel_error_reports_name_as_sent() -> None:
    with pytest.raises(ProtocolError) as info:
        validate_channel("a b", sent_as="alias")
    assert info.value.channel == "alias"
    with pytest.raises(ProtocolError):
        validate_channel(None)


@pytest.mark.parametrize("name", ["e", "a#b", "x" * 128, "with space", "émoji🎉"])
def test_event_valid_names(name: str) -> None:
    assert validate_event(name) == name


@pytest.mark.parametrize(
    "name", [None, "", 3, "x" * 129, "a*b", "#a", "hotsock.anything", "a\x00b"]
)
def test_event_invalid_names(name: object) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_event(name)
    assert info.value.code is ErrorCode.INVALID_EVENT


def test_event_reserved_allowed_when_listed() -> None:
    assert validate_event("hotsock.x", reserved_ok=frozenset({"hotsock.x"})) == "hotsock.x"


def test_data_limit_is_32_kib_of_compact_json() -> None:
    assert validate_data("x" * (32768 - 2)) == b'"' + b"x" * 32766 + b'"'
    with pytest.raises(ProtocolError) as info:
        validate_data("x" * 32767)
    assert info.value.code is ErrorCode.DATA_TOO_LARGE


@pytest.mark.parametrize("value,expected", [(None, 0), (0, 0), (-1, -1), (3155695200, 3155695200)])
def test_store_valid(value: object, expected: int) -> None:
    assert validate_store(value) == expected


@pytest.mark.parametrize("value", [-2, 3155695201, 1.5, "60", True])
def test_store_invalid(value: object) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_store(value)
    assert info.value.code is ErrorCode.INVALID_MESSAGE


def test_presence_prefix() -> None:
    assert is_presence("presence.room") and not is_presence("room.presence.")


def test_sent_name_returns_strings_as_they_are() -> None:
    """A sent channel field only has to be a string; alias resolution comes later."""
    from tidings.core.names import sent_name

    assert sent_name("my alias") == "my alias"
    with pytest.raises(ProtocolError, match="channel is required"):
        sent_name(None)
    with pytest.raises(ProtocolError, match="channel must be a string"):
        sent_name(5)


@pytest.mark.parametrize("uid", ["Jim", "x" * 128, "😀"])
def test_uid_valid(uid: str) -> None:
    """A request-body uid is any non-empty string up to 128 characters."""
    assert validate_uid(uid) == uid


@pytest.mark.parametrize(
    "value,code",
    [
        (None, ErrorCode.USER_ID_REQUIRED),
        ("", ErrorCode.USER_ID_REQUIRED),
        (5, ErrorCode.INVALID_MESSAGE),
        (["Jim"], ErrorCode.INVALID_MESSAGE),
        ("x" * 129, ErrorCode.INVALID_MESSAGE),
    ],
)
def test_uid_invalid(value: object, code: ErrorCode) -> None:
    """A missing uid is USER_ID_REQUIRED; a wrong type or length is INVALID_MESSAGE."""
    with pytest.raises(ProtocolError) as info:
        validate_uid(value)
    assert info.value.code is code


def test_umd_limit_is_one_kib() -> None:
    """umd encodes compactly and may take exactly 1024 bytes, not one more."""
    assert validate_umd(None) == b"null"
    assert validate_umd({"a": [1, 2]}) == b'{"a":[1,2]}'
    at_limit = "x" * (1024 - 2)
    assert len(validate_umd(at_limit)) == 1024
    with pytest.raises(ProtocolError) as info:
        validate_umd(at_limit + "x")
    assert info.value.code is ErrorCode.INVALID_MESSAGE and "1025 bytes" in info.value.message
