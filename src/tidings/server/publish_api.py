"""``POST /publish``: server-side publishing, one message or an array (spec §15)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tidings._refusals import refusals
from tidings.core.reactions import REACTION_EVENT
from tidings.core.requests import ServerPublish, parse_server_publish, refuse_schedule
from tidings.core.schedule import schedule_arn
from tidings.core.storage import STORAGE_SET_EVENT, parse_server_storage
from tidings.errors import ErrorCode, ProtocolError, wire_error
from tidings.hub.hub import Hub, PublishResult
from tidings.server.http import json_response, read_json, require_api_key

__all__ = ["MAX_BATCH", "result_body", "routes"]

MAX_BATCH = 1000  # messages in one array publish

routes = web.RouteTableDef()


def result_body(result: PublishResult, eager: bool) -> dict[str, Any]:
    """A 202 answer: the message ID only when ``eagerIdGeneration`` asked for it, the
    ``scheduleArn`` only when scheduled (spec §14, §15)."""
    body: dict[str, Any] = {"channel": result.channel, "event": result.event}
    if eager:
        body["id"] = result.id
    if result.schedule_id is not None:
        body["scheduleArn"] = schedule_arn(result.schedule_id)
    return body


@routes.post("/publish")
async def publish(request: web.Request) -> web.Response:
    body: Any = None
    try:
        hub = require_api_key(request)
        body = await read_json(request)
        return await _publish(hub, body)
    except ProtocolError as exc:
        one = body if isinstance(body, dict) else {}
        channel, event = one.get("channel"), one.get("event")
        refusals.refused(
            "publish",
            exc.code,
            channel if isinstance(channel, str) else None,
            event if isinstance(event, str) else None,
            exc.message,
        )
        raise


async def _publish(hub: Hub, body: Any) -> web.Response:
    if isinstance(body, list):
        return await _publish_many(hub, body)
    if isinstance(body, dict) and body.get("event") == REACTION_EVENT:
        refuse_schedule(body, "a reaction")
        result = await (await hub.react_server(body))
        return json_response({"channel": result.channel, "event": REACTION_EVENT}, status=202)
    if isinstance(body, dict) and body.get("event") == STORAGE_SET_EVENT:
        write = parse_server_storage(body)
        if body.get("scheduleExpression") is not None:
            scheduled = await hub.schedule_storage_server(
                write, body["scheduleExpression"], body.get("scheduleExpressionTimezone")
            )
            return json_response(result_body(scheduled, eager=False), status=202)
        stored = await hub.write_storage(write)
        return json_response({"channel": stored.channel, "event": STORAGE_SET_EVENT}, status=202)
    message = parse_server_publish(body)
    result = await hub.publish_server(message)
    return json_response(result_body(result, message.eager), status=202)


async def _publish_many(hub: Hub, items: list[Any]) -> web.Response:
    if not items or len(items) > MAX_BATCH:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"an array publish holds 1 to {MAX_BATCH} messages"
        )
    messages: list[ServerPublish] = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("event") in (REACTION_EVENT, STORAGE_SET_EVENT):
            raise ProtocolError(
                ErrorCode.INVALID_EVENT,
                f"message {index}: {item['event']} must be published on its own, not in an array",
            )
        try:
            messages.append(parse_server_publish(item))
        except ProtocolError as exc:
            raise ProtocolError(exc.code, f"message {index}: {exc.message}") from exc
    # all validated before any is queued, so a bad item publishes nothing
    futures = [hub.publish_server(m) for m in messages]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    results: list[dict[str, Any]] = []
    failure: BaseException | None = None
    for message, outcome in zip(messages, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            failure = failure or outcome
            code, text = wire_error(outcome)
            results.append({"error": {"code": code.value, "message": text}})
        else:
            results.append(result_body(outcome, message.eager))
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
