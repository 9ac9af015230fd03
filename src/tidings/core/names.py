"""Validation of channel names, event names and payload sizes (spec §2.1)."""

from __future__ import annotations

import re
from typing import Any, NewType

from tidings.core.json import dumps
from tidings.errors import ErrorCode, ProtocolError

__all__ = [
    "DATA_MAX_BYTES",
    "PRESENCE_PREFIX",
    "STORE_MAX_SECONDS",
    "UID_MAX_CHARS",
    "UMD_MAX_BYTES",
    "Channel",
    "is_presence",
    "is_valid_channel",
    "sent_name",
    "validate_channel",
    "validate_data",
    "validate_event",
    "validate_store",
    "validate_uid",
    "validate_umd",
]

Channel = NewType("Channel", str)

CHANNEL_MAX_CHARS = 256
EVENT_MAX_CHARS = 128
UID_MAX_CHARS = 128
DATA_MAX_BYTES = 32 * 1024
UMD_MAX_BYTES = 1024
STORE_MAX_SECONDS = 3_155_695_200
PRESENCE_PREFIX = "presence."


def _is_control(ch: str) -> bool:
    # tidings choice: control characters (U+0000-U+001F, U+007F-U+009F) are refused in names;
    # PostgreSQL cannot store U+0000 in text, and none of them is printable
    return ch < " " or "\x7f" <= ch <= "\x9f"


# one C-level scan instead of a Python loop per character (every message checks its channel);
# for str patterns \s is exactly str.isspace(), and the ranges are _is_control's
_CHANNEL_REFUSED = re.compile(r"[*#,\s\x00-\x1f\x7f-\x9f]")


def is_valid_channel(name: object) -> bool:
    """True when ``name`` is a string usable as a channel name."""
    if not isinstance(name, str) or not 1 <= len(name) <= CHANNEL_MAX_CHARS:
        return False
    return _CHANNEL_REFUSED.search(name) is None


def sent_name(name: object) -> str:
    """A client-sent channel field as a string (it may still be an alias), or raise
    ``INVALID_CHANNEL``."""
    if name is None:
        raise ProtocolError(ErrorCode.INVALID_CHANNEL, "channel is required")
    if not isinstance(name, str):
        raise ProtocolError(ErrorCode.INVALID_CHANNEL, "channel must be a string")
    return name


def validate_channel(name: object, *, sent_as: str | None = None) -> Channel:
    """Return ``name`` as a Channel or raise ``INVALID_CHANNEL``."""
    name = sent_name(name)
    if not is_valid_channel(name):
        raise ProtocolError(
            ErrorCode.INVALID_CHANNEL,
            "channel must be 1-256 characters without '*', '#', ',' or whitespace",
            channel=sent_as if sent_as is not None else name,
        )
    return Channel(name)


def is_presence(channel: str) -> bool:
    return channel.startswith(PRESENCE_PREFIX)


def validate_event(name: object, *, reserved_ok: frozenset[str] = frozenset()) -> str:
    """Return ``name`` or raise ``INVALID_EVENT``. ``reserved_ok`` lists allowed ``hotsock.*``."""
    if name is None or name == "":
        raise ProtocolError(ErrorCode.INVALID_EVENT, "event is required")
    if not isinstance(name, str):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "event must be a string")
    if len(name) > EVENT_MAX_CHARS:
        raise ProtocolError(ErrorCode.INVALID_EVENT, "event must be at most 128 characters")
    if "*" in name:
        raise ProtocolError(ErrorCode.INVALID_EVENT, "event must not contain '*'")
    if name.startswith("#"):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "event must not start with '#'")
    if any(_is_control(ch) for ch in name):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "event must not contain control characters")
    if name.startswith("hotsock.") and name not in reserved_ok:
        raise ProtocolError(ErrorCode.INVALID_EVENT, f"event {name!r} is reserved")
    return name


def validate_data(data: Any) -> bytes:
    """Encode ``data`` once and check the 32 KiB limit; returns the compact encoding."""
    encoded = dumps(data)
    if len(encoded) > DATA_MAX_BYTES:
        raise ProtocolError(
            ErrorCode.DATA_TOO_LARGE, f"data is {len(encoded)} bytes; the limit is {DATA_MAX_BYTES}"
        )
    return encoded


def validate_store(value: object, *, field: str = "store") -> int:
    """Return a message retention in seconds (-1 forever, 0 not stored) or raise
    ``INVALID_MESSAGE``."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{field} must be an integer")
    if value < -1 or value > STORE_MAX_SECONDS:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"{field} must be -1, 0 or up to {STORE_MAX_SECONDS} seconds"
        )
    return value


def validate_uid(value: object, *, field: str = "uid") -> str:
    """Return a user ID given in a request body (not a token): a non-empty string of at most
    128 characters. Absent or empty raises ``USER_ID_REQUIRED``, anything else
    ``INVALID_MESSAGE``."""
    if value is None or value == "":
        raise ProtocolError(ErrorCode.USER_ID_REQUIRED, f"{field} is required")
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{field} must be a string")
    if len(value) > UID_MAX_CHARS:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"{field} must be at most {UID_MAX_CHARS} characters"
        )
    return value


def validate_umd(value: Any, *, field: str = "umd") -> bytes:
    """Encode user metadata given in a request body and check the 1 KiB limit; returns the
    compact encoding."""
    encoded = dumps(value)
    if len(encoded) > UMD_MAX_BYTES:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"{field} is {len(encoded)} bytes; the limit is {UMD_MAX_BYTES}",
        )
    return encoded
