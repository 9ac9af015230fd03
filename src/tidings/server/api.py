"""HTTP routes: server publish (§15), Client HTTP API (§10), admin channels (§16), health."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from aiohttp import web

from tidings.errors import UNAVAILABLE, ErrorCode, ProtocolError, wire_error
from tidings.hub.hub import Hub
from tidings.server.client_api import (
    OPERATIONS,
    decode_forwarded,
    encode_forwarded,
    result_body,
    run_operation,
)
from tidings.server.http import HUB, error_response, json_response, read_body, read_json

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


# Server publish


@routes.post("/publish")
async def publish(request: web.Request) -> web.Response:
    hub = _check_api_key(request)
    body = await read_json(request)
    if isinstance(body, list):
        return await _publish_many(hub, body)
    pub = hub.prepare_server_publication(body)
    result = await hub.enqueue(pub)
    return json_response(result_body(result, body.get("eagerIdGeneration") is True), status=202)


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
            code, message = wire_error(outcome)
            results.append({"error": {"code": code.value, "message": message}})
        else:
            results.append(result_body(outcome, item.get("eagerIdGeneration") is True))
    if failure is None:
        return json_response(results, status=202)
    code, _ = wire_error(failure)
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
        forwarded = await hub.broker.forward(
            connection_id, encode_forwarded(operation, connection_id, secret, body)
        )
        if forwarded is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "unknown connection or wrong secret")
        status, answer = decode_forwarded(forwarded)
    return json_response(answer, status=status)


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
    counters = dict(hub.stats)
    events = hub.events
    if events is not None and events.dispatcher is not None:
        counters["webhooks_delivered"] = events.dispatcher.delivered
        counters["webhook_attempts_failed"] = events.dispatcher.failed_attempts
        counters["webhooks_dropped"] = events.dropped + events.dispatcher.dropped
    for name, value in counters.items():
        lines += [f"# TYPE tidings_{name}_total counter", f"tidings_{name}_total {value}"]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


READY = web.AppKey("ready", asyncio.Event)
