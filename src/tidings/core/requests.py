"""Validation of publish requests, written once for every entry point (spec §8, §10.2, §15).

A server ``POST /publish`` message, a client ``publishMessage`` body and a WebSocket
``hotsock.message`` share their channel, event and data rules (``core/names.py``); the options
that only some of them accept (``eagerIdGeneration``, ``emitPubSubEvent``, ``deduplicationId``,
``scheduleExpression``, ``store``) are read here, each by one function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidings.core.json import loads, loads_object
from tidings.core.names import (
    Channel,
    validate_channel,
    validate_data,
    validate_event,
    validate_store,
)
from tidings.core.schedule import read_schedule
from tidings.errors import ErrorCode, ProtocolError

__all__ = [
    "ServerPublish",
    "flag",
    "parse_body",
    "parse_body_object",
    "parse_server_publish",
    "refuse_schedule",
]


@dataclass(frozen=True, slots=True)
class ServerPublish:
    """One validated ``POST /publish`` message."""

    channel: Channel
    event: str
    data_json: bytes  # compact JSON of ``data``
    store_seconds: int  # 0 not stored, -1 forever
    deduplication_id: str | None
    eager: bool  # answer with the message ID (``eagerIdGeneration``)
    emit_event: bool  # emit ``hotsock.messagePublished`` (``emitPubSubEvent``)
    due_ms: int | None = None  # the scheduled instant (Unix ms), None when not scheduled


def parse_body(raw: bytes) -> Any:
    """A request body as JSON, whatever its ``Content-Type`` (spec §10.1)."""
    if not raw.strip():
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "request body must be JSON")
    return loads(raw)


def parse_body_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object."""
    if not raw.strip():
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "request body must be JSON")
    return loads_object(raw, what="request body")


def flag(body: dict[str, Any], name: str) -> bool:
    """An optional boolean option; absent or null is False."""
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{name} must be a boolean")
    return value is True


def refuse_schedule(body: dict[str, Any], what: str) -> None:
    """Refuse a ``scheduleExpression`` on a request that cannot be scheduled (``what``), rather
    than run it at once."""
    if body.get("scheduleExpression") is not None:
        raise ProtocolError(ErrorCode.INVALID_SCHEDULE, f"{what} cannot be scheduled")


def parse_server_publish(body: object) -> ServerPublish:
    """Validate one ``POST /publish`` message (spec §15)."""
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "each message must be a JSON object")
    channel = validate_channel(body.get("channel"))
    event = validate_event(body.get("event"))
    data_json = validate_data(body.get("data"))
    store = validate_store(body.get("store"))
    dedup = body.get("deduplicationId")
    if dedup is not None and not isinstance(dedup, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "deduplicationId must be a string")
    eager = flag(body, "eagerIdGeneration")
    emit = flag(body, "emitPubSubEvent")
    due_ms = read_schedule(body)
    return ServerPublish(
        channel=channel,
        event=event,
        data_json=data_json,
        store_seconds=store,
        deduplication_id=dedup or None,
        eager=eager,
        emit_event=emit,
        due_ms=due_ms,
    )
