"""The moderation API (spec §24.2), authenticated with an API key: disconnect, list, and
server-side subscribe or unsubscribe of live connections, cluster-wide. ``{id}`` and ``{uid}``
are one percent-encoded path segment each."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tidings.core.moderation import parse_channel_body, parse_disconnect, parse_server_subscribe
from tidings.core.requests import parse_body
from tidings.server.http import json_response, read_body, require_api_key

__all__ = ["routes"]

routes = web.RouteTableDef()


async def _optional_body(request: web.Request) -> Any:
    """The JSON body, or None when there is none (a disconnect's body is optional)."""
    raw = await read_body(request)
    return parse_body(raw) if raw.strip() else None


@routes.post("/connections/{id}/disconnect")
async def disconnect_connection(request: web.Request) -> web.Response:
    hub = require_api_key(request)
    how = parse_disconnect(await _optional_body(request))
    closed = await hub.disconnect(how, connection_id=request.match_info["id"])
    return json_response({"disconnected": closed})


@routes.post("/users/{uid}/disconnect")
async def disconnect_user(request: web.Request) -> web.Response:
    hub = require_api_key(request)
    how = parse_disconnect(await _optional_body(request))
    closed = await hub.disconnect(how, uid=request.match_info["uid"])
    return json_response({"disconnected": closed})


@routes.get("/users/{uid}/connections")
async def user_connections(request: web.Request) -> web.Response:
    hub = require_api_key(request)
    return json_response({"connections": await hub.user_connections(request.match_info["uid"])})


@routes.post("/connections/{id}/subscribe")
async def subscribe_connection(request: web.Request) -> web.Response:
    hub = require_api_key(request)
    body = parse_body(await read_body(request))
    channel = parse_server_subscribe(body).channel  # refuse bad input before any broadcast
    await hub.subscribe_connection(request.match_info["id"], body)
    return json_response({"subscribed": channel})


@routes.post("/connections/{id}/unsubscribe")
async def unsubscribe_connection(request: web.Request) -> web.Response:
    hub = require_api_key(request)
    channel = parse_channel_body(parse_body(await read_body(request)))
    ended = await hub.unsubscribe(channel, connection_id=request.match_info["id"])
    return json_response({"unsubscribed": ended})


@routes.post("/users/{uid}/unsubscribe")
async def unsubscribe_user(request: web.Request) -> web.Response:
    hub = require_api_key(request)
    channel = parse_channel_body(parse_body(await read_body(request)))
    ended = await hub.unsubscribe(channel, uid=request.match_info["uid"])
    return json_response({"unsubscribed": ended})
