"""The Client HTTP API operations (spec §10), independent of the HTTP library, so a node can
answer them both for its own connections and for requests forwarded by another node."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tidings.core.json import dumps, loads
from tidings.errors import UNAVAILABLE, ErrorCode, ProtocolError, wire_error
from tidings.hub.connection import Connection
from tidings.hub.hub import Hub, PublishResult

__all__ = ["OPERATIONS", "decode_forwarded", "encode_forwarded", "run_operation", "serve_forwarded"]


def result_body(result: PublishResult, eager: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"channel": result.channel, "event": result.event}
    if eager:
        body["id"] = result.id
    return body


async def _list_messages(hub: Hub, conn: Connection, body: dict[str, Any]) -> tuple[int, bytes]:
    return 200, await hub.list_messages(conn, body)


async def _publish_message(hub: Hub, conn: Connection, body: dict[str, Any]) -> tuple[int, bytes]:
    eager = body.get("eagerIdGeneration", False)
    if not isinstance(eager, bool):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "eagerIdGeneration must be a boolean")
    if body.get("scheduleExpression") is not None:
        raise ProtocolError(
            ErrorCode.INVALID_SCHEDULE, "scheduled publishing is not supported by this server yet"
        )
    future = hub.publish_client(
        conn, body.get("channel"), body.get("event"), body.get("data"), trigger="client.http"
    )
    return 202, dumps(result_body(await future, eager))


Operation = Callable[[Hub, Connection, dict[str, Any]], Awaitable[tuple[int, bytes]]]
OPERATIONS: dict[str, Operation] = {
    "listMessages": _list_messages,
    "publishMessage": _publish_message,
}


def _error(code: ErrorCode, message: str) -> tuple[int, bytes]:
    return code.http_status, dumps({"error": {"code": code.value, "message": message}})


async def run_operation(
    hub: Hub, operation: str, connection_id: str, secret: str, body: bytes
) -> tuple[int, bytes]:
    """Run one operation for a connection held by this node; returns (status, JSON body).
    Refusals come back as §18.3 error bodies, never as exceptions."""
    handler = OPERATIONS.get(operation)
    if handler is None:
        return _error(ErrorCode.NOT_FOUND, f"unknown operation {operation!r}")
    try:
        conn = hub.authorize_http(connection_id, secret)
        if not body.strip():
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "request body must be JSON")
        parsed = loads(body)
        if not isinstance(parsed, dict):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "request body must be a JSON object")
        return await handler(hub, conn, parsed)
    except (ProtocolError, *UNAVAILABLE) as exc:
        return _error(*wire_error(exc))


# Forwarding between nodes: "<operation>\n<connection ID>\n<secret>\n<body>" in, and
# "<status>\n<body>" back.


def encode_forwarded(operation: str, connection_id: str, secret: str, body: bytes) -> bytes:
    return "\n".join((operation, connection_id, secret)).encode() + b"\n" + body


def decode_forwarded(response: bytes) -> tuple[int, bytes]:
    status, _, body = response.partition(b"\n")
    return int(status), body


async def serve_forwarded(hub: Hub, request: bytes) -> bytes:
    """Answer a request another node forwarded for a connection held here."""
    try:
        operation, connection_id, secret, body = request.split(b"\n", 3)
        status, answer = await run_operation(
            hub, operation.decode(), connection_id.decode(), secret.decode(), body
        )
    except (ValueError, UnicodeDecodeError):
        status, answer = _error(ErrorCode.INVALID_MESSAGE, "malformed forwarded request")
    return str(status).encode() + b"\n" + answer
