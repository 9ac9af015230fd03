"""Channel storage rules: keys, values, TTLs, ``keys`` filters, deep equality, frames (§11)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tidings.core.storage import (
    KEYS_MAX,
    StorageWrite,
    data_frame,
    entry_json,
    json_equal,
    parse_server_storage,
    updated_frame,
    validate_after,
    validate_key,
    validate_key_list,
    validate_keys_param,
    validate_storage_store,
    value_json,
)
from tidings.errors import ErrorCode, ProtocolError


def code_of(fn: Any, *args: Any) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        fn(*args)
    return info.value.code


@pytest.mark.parametrize("key", ["a", "k" * 128, "game.settings", "日本", "a-b_c:d/e"])
def test_storage_key_accepts_valid_keys(key: str) -> None:
    """1-128 characters of anything but the forbidden ones."""
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    [None, "", 5, ["a"], "k" * 129, "a b", "a\tb", "a\u00a0b", "a*", "#a", "a,b", "a\x00", "\x85"],
)
def test_storage_key_refuses_invalid_keys(key: object) -> None:
    """Missing, non-string, too long, whitespace, ``*``, ``#``, ``,``, control characters."""
    assert code_of(validate_key, key) is ErrorCode.INVALID_STORAGE_KEY


@pytest.mark.parametrize("data", [None, {}])
def test_storage_value_null_and_empty_object_delete(data: object) -> None:
    """``null``, absent and ``{}`` delete the entry (spec §11)."""
    assert value_json(data) is None


@pytest.mark.parametrize("data", [[], "", 0, False, {"a": None}, "x" * 32766])
def test_storage_value_encodes_everything_else(data: object) -> None:
    """Any other JSON value is kept, up to 32 KiB serialized."""
    assert value_json(data) == orjson.dumps(data)


def test_storage_value_over_32_kib_is_too_large() -> None:
    """One byte over the limit is ``DATA_TOO_LARGE``."""
    assert code_of(value_json, "x" * 32767) is ErrorCode.DATA_TOO_LARGE


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, -1), (-1, -1), (1, 1), (3155695200, 3155695200)]
)
def test_storage_store_accepts_its_range(value: object, seconds: int) -> None:
    """Absent is forever; -1 or 1..3155695200."""
    assert validate_storage_store(value) == seconds


@pytest.mark.parametrize("value", [0, -2, 3155695201, True, 1.5, "60"])
def test_storage_store_refuses_zero_and_out_of_range(value: object) -> None:
    """``0`` is invalid for storage writes, as is anything outside the range or not an int."""
    assert code_of(validate_storage_store, value) is ErrorCode.INVALID_MESSAGE


def test_storage_key_list_filters() -> None:
    """Absent is no filter; duplicates drop, order stays; 100 keys is the limit."""
    assert validate_key_list(None) is None
    assert validate_key_list(["b", "a", "b"]) == ["b", "a"]
    assert validate_key_list([f"k{i}" for i in range(KEYS_MAX)]) is not None
    assert code_of(validate_key_list, [f"k{i}" for i in range(KEYS_MAX + 1)]) is (
        ErrorCode.INVALID_MESSAGE
    )
    assert code_of(validate_key_list, "a,b") is ErrorCode.INVALID_MESSAGE
    assert code_of(validate_key_list, ["a", 1]) is ErrorCode.INVALID_MESSAGE
    assert code_of(validate_key_list, ["a", "b c"]) is ErrorCode.INVALID_STORAGE_KEY


def test_storage_keys_param_splits_on_commas() -> None:
    """The admin query parameter is comma-separated (spec §16)."""
    assert validate_keys_param(None) is None
    assert validate_keys_param("a,b") == ["a", "b"]
    assert code_of(validate_keys_param, "a,,b") is ErrorCode.INVALID_STORAGE_KEY
    too_many = ",".join(f"k{i}" for i in range(KEYS_MAX + 1))
    assert code_of(validate_keys_param, too_many) is ErrorCode.INVALID_MESSAGE


def test_storage_after_is_a_string_cursor() -> None:
    """``after`` is any string, or absent."""
    assert validate_after(None) is None
    assert validate_after("k") == "k"
    assert code_of(validate_after, 3) is ErrorCode.INVALID_MESSAGE


def test_storage_server_write_defaults() -> None:
    """A server write has no writer, lives forever unless ``store`` says otherwise."""
    write = parse_server_storage({"channel": "game.lobby", "key": "settings", "data": [1]})
    assert write == StorageWrite(
        channel="game.lobby",
        key="settings",
        data_json=b"[1]",
        store_seconds=-1,
        uid=None,
        umd_json=b"null",
        emit_event=False,
        trigger="server.http",
    )
    delete = parse_server_storage(
        {"channel": "c", "key": "k", "data": {}, "store": 60, "emitPubSubEvent": True}
    )
    assert (delete.data_json, delete.store_seconds, delete.emit_event) == (None, 60, True)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"key": "k"}, ErrorCode.INVALID_CHANNEL),
        ({"channel": "c"}, ErrorCode.INVALID_STORAGE_KEY),
        ({"channel": "c", "key": "k", "store": 0}, ErrorCode.INVALID_MESSAGE),
        ({"channel": "c", "key": "k", "data": "x" * 40000}, ErrorCode.DATA_TOO_LARGE),
        ({"channel": "c", "key": "k", "emitPubSubEvent": 1}, ErrorCode.INVALID_MESSAGE),
    ],
)
def test_storage_server_write_refusals(body: dict[str, Any], code: ErrorCode) -> None:
    """Each bad field gets its own code."""
    assert code_of(parse_server_storage, body) is code


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ('{"a":1,"b":2}', '{ "b": 2, "a": 1 }', True),
        ("[1,2]", "[1.0,2e0]", True),
        ("true", "1", False),
        ("1", "true", False),
        ("false", "false", True),
        ("0", "false", False),
        ('{"a":[1,{"b":null}]}', '{"a":[1,{"b":null}]}', True),
        ('{"a":[1,{"b":null}]}', '{"a":[1,{"b":false}]}', False),
        ('{"a":1}', '{"a":1,"b":1}', False),
        ("[1,2]", "[1,2,3]", False),
        ('"1"', "1", False),
        ('"a"', '"\\u0061"', True),
        ("[]", "{}", False),
    ],
)
def test_storage_json_equal_is_deep_and_typed(a: str, b: str, equal: bool) -> None:
    """Key order and spacing do not matter; types do (spec §11)."""
    assert json_equal(a, b) is equal


def test_storage_frames_splice_pre_encoded_json() -> None:
    """Updated, data and list items carry ``data`` and ``meta`` as given."""
    meta = b'{"uid":"host","umd":null}'
    assert orjson.loads(updated_frame("game.lobby", "settings", b'{"maxPlayers":6}', meta)) == {
        "event": "hotsock.channelStorageUpdated",
        "channel": "game.lobby",
        "key": "settings",
        "data": {"maxPlayers": 6},
        "meta": {"uid": "host", "umd": None},
    }
    assert orjson.loads(data_frame("c", "k", b"null", b"null")) == {
        "event": "hotsock.channelStorageData",
        "channel": "c",
        "key": "k",
        "data": None,
        "meta": None,
    }
    assert orjson.loads(entry_json("k", b"[1]", meta)) == {
        "key": "k",
        "data": [1],
        "meta": {"uid": "host", "umd": None},
    }
