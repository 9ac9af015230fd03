"""Token revocations (spec §24.2), authenticated with an API key: ``POST /revocations``,
``GET /revocations`` and ``DELETE /revocations/{kind}/{value}`` (kind ``jti`` or ``uid``)."""

from __future__ import annotations

from aiohttp import web

from tidings.core.requests import parse_body
from tidings.core.revocations import parse_target
from tidings.server.http import json_response, read_body, require_api_key

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.post("/revocations")
async def revoke(request: web.Request) -> web.Response:
    hub = require_api_key(request)
    body = parse_body(await read_body(request))
    return json_response(await hub.revoke(body), status=201)


@routes.get("/revocations")
async def list_revocations(request: web.Request) -> web.Response:
    hub = require_api_key(request)
    return json_response({"revocations": await hub.revocations()})


@routes.delete("/revocations/{kind}/{value}")
async def unrevoke(request: web.Request) -> web.Response:
    hub = require_api_key(request)
    kind, value = parse_target(request.match_info["kind"], request.match_info["value"])
    await hub.unrevoke(kind, value)
    return json_response({"deleted": {kind.value: value}})
