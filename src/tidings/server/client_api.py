"""The Client HTTP API (spec §10): ``/connection/{operation}`` with a connection's credentials.

Operations are independent of the HTTP library, so a node answers them both for its own
connections and for calls another node forwards (any node may receive the request).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tidings._refusals import refusals
from tidings.core.json import dumps
from tidings.core.reactions import REACTION_EVENT
from tidings.core.requests import flag, parse_body_object, refuse_schedule
from tidings.core.storage import STORAGE_SET_EVENT
from tidings.errors import UNAVAILABLE, ErrorCode, ProtocolError, wire_error, wire_status
from tidings.hub.connection import Connection
from tidings.hub.hub import Hub
from tidings.server.http import HUB, error_response, json_response, read_body
from tidings.server.publish_api import result_body

__all__ = [
    "OPERATIONS",
    "decode_forwarded",
    "encode_forwarded",
    "routes",
    "run_operation",
    "serve_forwarded",
]

routes = web.RouteTableDef()


# Operations


async def _list_messages(hub: Hub, conn: Connection, body: dict[str, Any]) -> tuple[int, bytes]:
    return 200, await hub.list_messages(conn, body)


async def _publish_message(hub: Hub, conn: Connection, body: dict[str, Any]) -> tuple[int, bytes]:
    eager = flag(body, "eagerIdGeneration")
    if body.get("event") == REACTION_EVENT:
        refuse_schedule(body, "a reaction")
        future = await hub.react_client(
            conn, body.get("channel"), body.get("data"), trigger="client.http"
        )
        result = await future
        return 202, dumps({"channel": result.channel, "event": REACTION_EVENT})
    if body.get("scheduleExpression") is not None:
        result = await hub.schedule_client(
            conn,
            body.get("channel"),
            body.get("event"),
            body.get("data"),
            body.get("scheduleExpression"),
            body.get("scheduleExpressionTimezone"),
            trigger="client.http",
            eager=eager,
        )
        return 202, dumps(result_body(result, eager))
    future = hub.publish_client(
        conn, body.get("channel"), body.get("event"), body.get("data"), trigger="client.http"
    )
    return 202, dumps(result_body(await future, eager))


async def _list_reactions(hub: Hub, conn: Connection, body: dict[str, Any]) -> tuple[int, bytes]:
    return 200, await hub.list_reactions(conn, body)


async def _get_channel_info(hub: Hub, conn: Connection, body: dict[str, Any]) -> tuple[int, bytes]:
    return 200, dumps(await hub.channel_info(conn, body))


async def _storage_get(hub: Hub, conn: Connection, body: dict[str, Any]) -> tuple[int, bytes]:
    return 200, await hub.get_storage_client(conn, body.get("channel"), body.get("key"))


async def _storage_set(hub: Hub, conn: Connection, body: dict[str, Any]) -> tuple[int, bytes]:
    write = hub.prepare_storage_client(
        conn, body.get("channel"), body.get("key"), body.get("data"), trigger="client.http"
    )
    if body.get("scheduleExpression") is not None:
        scheduled = await hub.schedule_storage_client(
            conn, write, body["scheduleExpression"], body.get("scheduleExpressionTimezone")
        )
        return 202, dumps(result_body(scheduled, eager=False))
    result = await hub.write_storage(write)
    return 202, dumps({"channel": result.channel, "event": STORAGE_SET_EVENT})


async def _storage_list(hub: Hub, conn: Connection, body: dict[str, Any]) -> tuple[int, bytes]:
    return 200, await hub.list_storage_client(conn, body)


async def _umd_update(hub: Hub, conn: Connection, body: dict[str, Any]) -> tuple[int, bytes]:
    if body.get("token") is None:
        raise ProtocolError(ErrorCode.INVALID_UMD_TOKEN, "token is required")
    await hub.update_umd(conn, body.get("channel"), body.get("token"))
    return 200, b"{}"


Operation = Callable[[Hub, Connection, dict[str, Any]], Awaitable[tuple[int, bytes]]]
OPERATIONS: dict[str, Operation] = {
    "listMessages": _list_messages,
    "publishMessage": _publish_message,
    "listReactions": _list_reactions,
    "getChannelInfo": _get_channel_info,
    "umdUpdate": _umd_update,
    "channelStorageGet": _storage_get,
    "channelStorageSet": _storage_set,
    "channelStorageList": _storage_list,
}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _error(code: ErrorCode, message: str, status: int | None = None) -> tuple[int, bytes]:
    body = dumps({"error": {"code": code.value, "message": message}})
    return status or code.http_status, body


async def run_operation(
    hub: Hub, operation: str, connection_id: str, secret: str, body: bytes
) -> tuple[int, bytes]:
    """Run one operation for a connection held by this node; returns (status, JSON body).
    Refusals come back as §18.3 error bodies, never as exceptions."""
    handler = OPERATIONS.get(operation)
    if handler is None:
        return _error(ErrorCode.NOT_FOUND, f"unknown operation {operation!r}")
    parsed: dict[str, Any] = {}
    try:
        conn = hub.authorize_http(connection_id, secret)
        hub.check_http_rate(conn)
        parsed = parse_body_object(body)
        return await handler(hub, conn, parsed)
    except (ProtocolError, *UNAVAILABLE) as exc:
        status = wire_status(exc)
        limited = isinstance(exc, ProtocolError) and exc.code is ErrorCode.RATE_LIMITED
        if isinstance(exc, ProtocolError) and status < 500 and not limited:  # limits log their own
            channel = parsed.get("channel")
            refusals.refused(
                f"http:{operation}",
                exc.code,
                channel if isinstance(channel, str) else None,
                _text(parsed.get("event")),
                exc.message,
            )
        return _error(*wire_error(exc), status)


# The route


def _cors_headers(request: web.Request) -> dict[str, str]:
    origins = request.app[HUB].settings.server.cors_origins
    origin = request.headers.get("Origin")
    if "*" in origins:
        return {"Access-Control-Allow-Origin": "*"}
    if origin is not None and origin in origins:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {"Vary": "Origin"}


@routes.route("*", "/connection/{operation}")
async def connection_api(request: web.Request) -> web.Response:
    cors = _cors_headers(request)
    if request.method == "OPTIONS":
        headers = dict(cors)
        headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        headers["Access-Control-Allow-Headers"] = request.headers.get(
            "Access-Control-Request-Headers", "Content-Type"
        )
        headers["Access-Control-Max-Age"] = "86400"
        return web.Response(status=204, headers=headers)
    try:
        response = await _connection_operation(request)
    except (ProtocolError, *UNAVAILABLE) as exc:
        response = error_response(*wire_error(exc))
    response.headers.update(cors)
    return response


async def _connection_operation(request: web.Request) -> web.Response:
    if request.method != "POST":
        return error_response(
            ErrorCode.METHOD_NOT_ALLOWED,
            "the Client HTTP API takes POST only",
            headers={"Allow": "POST, OPTIONS"},
        )
    hub = request.app[HUB]
    operation = request.match_info["operation"]
    if operation not in OPERATIONS:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"unknown operation {operation!r}")
    connection_id = request.query.get("connectionId", "")
    secret = request.query.get("connectionSecret", "")
    body = await read_body(request)
    if connection_id in hub.connections:
        status, answer = await run_operation(hub, operation, connection_id, secret, body)
    else:
        # held by another node, or by none: the broker knows (spec: any node answers)
        forwarded = await hub.forward(
            connection_id, encode_forwarded(operation, connection_id, secret, body)
        )
        if forwarded is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "unknown connection or wrong secret")
        status, answer = decode_forwarded(forwarded)
    if status == 429:
        return json_response(
            answer, status=status, headers={"Retry-After": str(hub.http_retry_after())}
        )
    return json_response(answer, status=status)


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
