"""Channel storage rules (spec §2.1, §11, §15, §16): keys, values, TTLs, ``keys`` filters,
deep JSON equality, and the storage frames. Pure: values in, values or ``ProtocolError`` out.

A write is described once, as a :class:`StorageWrite`, whoever asked for it (a client over the
WebSocket or the Client HTTP API, a server over ``POST /publish``, or a schedule coming due):
the hub applies it in the channel's lane, where its TTL starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from tidings.core.json import dumps
from tidings.core.names import DATA_MAX_BYTES, STORE_MAX_SECONDS, validate_channel
from tidings.errors import ErrorCode, ProtocolError

__all__ = [
    "KEYS_MAX",
    "KEY_MAX_CHARS",
    "PAGE_MAX_ENTRIES",
    "STORAGE_DATA_EVENT",
    "STORAGE_GET_EVENT",
    "STORAGE_SET_EVENT",
    "STORAGE_UPDATED_EVENT",
    "StorageWrite",
    "data_frame",
    "entry_json",
    "json_equal",
    "parse_server_storage",
    "updated_frame",
    "validate_after",
    "validate_key",
    "validate_key_list",
    "validate_keys_param",
    "validate_storage_store",
    "value_json",
]

STORAGE_SET_EVENT = "hotsock.channelStorageSet"
STORAGE_GET_EVENT = "hotsock.channelStorageGet"
STORAGE_UPDATED_EVENT = "hotsock.channelStorageUpdated"
STORAGE_DATA_EVENT = "hotsock.channelStorageData"

KEY_MAX_CHARS = 128
KEYS_MAX = 100  # keys in one list filter (spec §2.1)
PAGE_MAX_ENTRIES = 100  # entries in one list page (spec §22 item 27)

_FORBIDDEN_IN_KEY = frozenset("*#,")


@dataclass(frozen=True, slots=True)
class StorageWrite:
    """One validated, authorised storage write, ready to apply (spec §11).

    Plain values only, so a scheduler can persist it and apply it later: the TTL is relative
    and starts when the write is applied.
    """

    channel: str
    key: str
    data_json: bytes | None  # compact JSON of the new value; None deletes the entry
    store_seconds: int  # -1 forever, else 1..STORE_MAX_SECONDS
    uid: str | None  # the writer (None for server writes)
    umd_json: bytes  # the writer's umd, b"null" when none
    emit_event: bool  # emit the hotsock.channelStorageUpdated backend event
    trigger: str  # client.websocket | client.http | server.http | server.lambda
    connection_id: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None


def _is_control(ch: str) -> bool:
    return ch < " " or "\x7f" <= ch <= "\x9f"


def validate_key(key: object) -> str:
    """Return a storage key, or raise ``INVALID_STORAGE_KEY``: 1-128 characters without
    ``*``, ``#``, ``,``, whitespace (spec §22 item 49) or control characters."""
    if key is None or key == "":
        raise ProtocolError(ErrorCode.INVALID_STORAGE_KEY, "key is required")
    if not isinstance(key, str):
        raise ProtocolError(ErrorCode.INVALID_STORAGE_KEY, "key must be a string")
    if len(key) > KEY_MAX_CHARS or any(
        ch in _FORBIDDEN_IN_KEY or ch.isspace() or _is_control(ch) for ch in key
    ):
        raise ProtocolError(
            ErrorCode.INVALID_STORAGE_KEY,
            f"key must be 1-{KEY_MAX_CHARS} characters without '*', '#', ',' or whitespace",
        )
    return key


def value_json(data: Any) -> bytes | None:
    """The compact JSON of a storage value, or None when the value deletes the entry
    (``null``, absent, or ``{}``, spec §11). Raises ``DATA_TOO_LARGE`` above 32 KiB."""
    if data is None or (isinstance(data, dict) and not data):
        return None
    encoded = dumps(data)
    if len(encoded) > DATA_MAX_BYTES:
        raise ProtocolError(
            ErrorCode.DATA_TOO_LARGE,
            f"storage value is {len(encoded)} bytes; the limit is {DATA_MAX_BYTES}",
        )
    return encoded


def validate_storage_store(value: object, *, field: str = "store") -> int:
    """A storage TTL from a request: absent is -1 (forever); else -1 or 1..3155695200
    seconds; ``0`` is invalid (spec §2.1). Raises ``INVALID_MESSAGE``."""
    if value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{field} must be an integer")
    if value == 0 or value < -1 or value > STORE_MAX_SECONDS:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"{field} of a storage write must be -1 or 1 to {STORE_MAX_SECONDS} seconds",
        )
    return value


def validate_key_list(keys: object) -> list[str] | None:
    """A ``keys`` filter from a JSON body: None when absent; else a list of at most 100 valid
    keys (duplicates dropped, order kept)."""
    if keys is None:
        return None
    if not isinstance(keys, list):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "keys must be a list of strings")
    if len(keys) > KEYS_MAX:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"keys holds {len(keys)} keys; the limit is {KEYS_MAX}"
        )
    if not all(isinstance(key, str) for key in keys):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "keys must be a list of strings")
    return list(dict.fromkeys(validate_key(key) for key in keys))


def validate_keys_param(keys: str | None) -> list[str] | None:
    """The admin listing's comma-separated ``keys`` query parameter (spec §16)."""
    if keys is None:
        return None
    return validate_key_list(keys.split(","))


def validate_after(after: object) -> str | None:
    """A list cursor: the last key of the previous page (any string), or None."""
    if after is None:
        return None
    if not isinstance(after, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "after must be a string (a storage key)")
    return after


def parse_server_storage(body: dict[str, Any], *, trigger: str = "server.http") -> StorageWrite:
    """A ``POST /publish`` storage write (``event: hotsock.channelStorageSet``, spec §15): no
    permission applies; ``store`` defaults to -1 and may not be 0."""
    channel = validate_channel(body.get("channel"))
    key = validate_key(body.get("key"))
    data_json = value_json(body.get("data"))
    store = validate_storage_store(body.get("store"))
    emit = body.get("emitPubSubEvent")
    if emit is not None and not isinstance(emit, bool):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "emitPubSubEvent must be a boolean")
    return StorageWrite(
        channel=channel,
        key=key,
        data_json=data_json,
        store_seconds=store,
        uid=None,
        umd_json=b"null",
        emit_event=emit is True,
        trigger=trigger,
    )


def json_equal(a: str | bytes, b: str | bytes) -> bool:
    """Deep equality of two JSON texts (spec §11): object key order and spacing do not matter,
    ``1`` equals ``1.0``, ``true`` never equals ``1``."""
    if a == b:
        return True
    return _equal(orjson.loads(a), orjson.loads(b))


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(value, b[k]) for k, value in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# Frames and items. ``data_json`` and ``meta_json`` are spliced in pre-encoded.


def _head(event: str, channel: str, key: str) -> bytes:
    return dumps({"event": event, "channel": channel, "key": key})[:-1]


def updated_frame(channel: str, key: str, data_json: bytes, meta_json: bytes) -> bytes:
    """``hotsock.channelStorageUpdated`` (spec §5.2); a deletion carries ``data: null``."""
    return _head(STORAGE_UPDATED_EVENT, channel, key) + _tail(data_json, meta_json)


def data_frame(channel: str, key: str, data_json: bytes, meta_json: bytes) -> bytes:
    """``hotsock.channelStorageData``: the answer to a get; ``null``/``null`` when unset."""
    return _head(STORAGE_DATA_EVENT, channel, key) + _tail(data_json, meta_json)


def entry_json(key: str, data_json: bytes, meta_json: bytes) -> bytes:
    """One item of a storage list: ``{"key","data","meta"}``."""
    return dumps({"key": key})[:-1] + _tail(data_json, meta_json)


def _tail(data_json: bytes, meta_json: bytes) -> bytes:
    return b',"data":' + data_json + b',"meta":' + meta_json + b"}"
