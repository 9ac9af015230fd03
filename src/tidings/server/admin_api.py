"""The admin channels API (spec §16), authenticated with an API key."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tidings.core.names import validate_channel
from tidings.core.storage import validate_keys_param
from tidings.server.http import json_response, require_api_key

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/channels/{name}")
async def channel_info(request: web.Request) -> web.Response:
    hub = require_api_key(request)
    name = request.match_info["name"]
    body: dict[str, Any] = {"name": name, "subscriptionsCount": await hub.subscriptions_count(name)}
    members = await hub.members(name)
    if members is not None:
        body["members"] = members
    return json_response(body)


@routes.get("/channels/{name}/storage")
async def channel_storage(request: web.Request) -> web.Response:
    """Live storage entries in key order, 100 a page after ``after``; ``keys`` filters."""
    hub = require_api_key(request)
    channel = validate_channel(request.match_info["name"])
    keys = validate_keys_param(request.query.get("keys"))
    after = request.query.get("after")
    return json_response(await hub.list_storage_admin(channel, keys=keys, after=after))
