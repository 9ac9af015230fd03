"""HTTP routes: server publish (§15), Client HTTP API (§10), admin channels (§16), health."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from aiohttp import web

from tidings.errors import ErrorCode, ProtocolError, StoreUnavailable
from tidings.hub.hub import Hub, PublishResult
from tidings.server.http import HUB, error_response, json_response, read_json

__all__ = ["routes"]

MAX_BATCH = 1000  # messages in one array publish

routes = web.RouteTableDef()


def _check_api_key(request: web.Request) -> Hub:
    hub = request.app[HUB]
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    given = key.strip().encode("utf-8", "surrogatepass")
    ok = False
    for secret in hub.settings.auth.api_keys:
        # compare bytes: compare_digest raises on non-ASCII str, and every key is tried so the
        # time taken does not reveal which one matched
        ok |= hmac.compare_digest(secret.value.encode(), given)
    if scheme.lower() != "bearer" or not ok:
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "missing or invalid API key")
    return hub


def _result_body(result: PublishResult, eager: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"channel": result.channel, "event": result.event}
    if eager:
        body["id"] = result.id
    return body


# Server publish


@routes.post("/publish")
async def publish(request: web.Request) -> web.Response:
    hub = _check_api_key(request)
    body = await read_json(request)
    if isinstance(body, list):
        return await _publish_many(hub, body)
    pub = hub.prepare_server_publication(body)
    result = await hub.enqueue(pub)
    return json_response(_result_body(result, body.get("eagerIdGeneration") is True), status=202)


async def _publish_many(hub: Hub, items: list[Any]) -> web.Response:
    if not items or len(items) > MAX_BATCH:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"an array publish holds 1 to {MAX_BATCH} messages"
        )
    pubs = []
    for index, item in enumerate(items):
        try:
            pubs.append(hub.prepare_server_publication(item))
        except ProtocolError as exc:
            raise ProtocolError(exc.code, f"message {index}: {exc.message}") from exc
    # all validated before any is queued, so a bad item publishes nothing
    futures = [hub.enqueue(p) for p in pubs]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    results: list[dict[str, Any]] = []
    failure: BaseException | None = None
    for item, outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            failure = failure or outcome
            code = (
                ErrorCode.SERVICE_UNAVAILABLE
                if isinstance(outcome, StoreUnavailable)
                else ErrorCode.INTERNAL_ERROR
            )
            results.append({"error": {"code": code.value, "message": "not published"}})
        else:
            results.append(_result_body(outcome, item.get("eagerIdGeneration") is True))
    if failure is None:
        return json_response(results, status=202)
    code = (
        ErrorCode.SERVICE_UNAVAILABLE
        if isinstance(failure, StoreUnavailable)
        else ErrorCode.INTERNAL_ERROR
    )
    return json_response(
        {
            "error": {"code": code.value, "message": "some messages were not published"},
            "results": results,
        },
        status=code.http_status,
    )


# Client HTTP API (spec §10)


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
    except ProtocolError as exc:
        response = error_response(exc.code, exc.message)
    except StoreUnavailable:
        response = error_response(
            ErrorCode.SERVICE_UNAVAILABLE, "storage is unavailable; retry later"
        )
    response.headers.update(cors)
    return response


async def _connection_operation(request: web.Request) -> web.Response:
    if request.method != "POST":
        return error_response(
            ErrorCode.METHOD_NOT_ALLOWED,
            "the Client HTTP API takes POST only",
            headers={"Allow": "POST, OPTIONS"},
        )
    operation = request.match_info["operation"]
    handler = _OPERATIONS.get(operation)
    if handler is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"unknown operation {operation!r}")
    hub = request.app[HUB]
    conn = hub.authorize_http(
        request.query.get("connectionId"), request.query.get("connectionSecret")
    )
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "request body must be a JSON object")
    return await handler(hub, conn, body)


async def _list_messages(hub: Hub, conn: Any, body: dict[str, Any]) -> web.Response:
    return json_response(await hub.list_messages(conn, body))


async def _publish_message(hub: Hub, conn: Any, body: dict[str, Any]) -> web.Response:
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
    result = await future
    return json_response(_result_body(result, eager), status=202)


_OPERATIONS = {"listMessages": _list_messages, "publishMessage": _publish_message}


# Admin channels API (spec §16)


@routes.get("/channels/{name}")
async def channel_info(request: web.Request) -> web.Response:
    hub = _check_api_key(request)
    name = request.match_info["name"]
    body: dict[str, Any] = {"name": name, "subscriptionsCount": await hub.subscriptions_count(name)}
    members = await hub.members(name)
    if members is not None:
        body["members"] = members
    return json_response(body)


# Health and metrics


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    if not request.app[READY].is_set() or request.app[HUB].draining:
        return json_response({"status": "unavailable"}, status=503)
    return json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    lines = [
        "# TYPE tidings_connections gauge",
        f"tidings_connections {len(hub.connections)}",
    ]
    for name, value in hub.stats.items():
        lines += [f"# TYPE tidings_{name}_total counter", f"tidings_{name}_total {value}"]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


READY = web.AppKey("ready", asyncio.Event)
