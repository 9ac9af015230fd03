"""The one JSON codec tidings uses (orjson), with the size rule of spec §0.

Sizes are measured on the compact UTF-8 encoding, which is exactly what ``dumps`` returns.
"""

from __future__ import annotations

from typing import Any

import orjson

from tidings.errors import ErrorCode, ProtocolError

__all__ = ["JSONValue", "dumps", "loads", "loads_object"]

JSONValue = Any  # orjson returns plain dict/list/str/int/float/bool/None

dumps = orjson.dumps


def loads(data: bytes | str) -> JSONValue:
    """Parse JSON; malformed, too deep (orjson caps nesting at 1024) or non-finite input raises
    ``ProtocolError(INVALID_MESSAGE)``."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"invalid JSON: {exc.msg}") from exc


def loads_object(data: bytes | str, *, what: str = "message") -> dict[str, Any]:
    """Parse JSON that must be an object."""
    value = loads(data)
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{what} must be a JSON object")
    return value
