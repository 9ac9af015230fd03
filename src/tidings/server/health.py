"""``/healthz`` for load balancers and ``/metrics`` in the Prometheus text format."""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import web

from tidings.errors import ErrorCode
from tidings.hub.metrics import CONTENT_TYPE
from tidings.server.http import HUB, error_response, json_response

__all__ = ["READY", "routes"]

READY = web.AppKey("ready", asyncio.Event)  # set once the node listens

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    if not request.app[READY].is_set() or request.app[HUB].draining:
        return json_response({"status": "unavailable"}, status=503)
    return json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    token = hub.settings.server.metrics_token
    if token is not None:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {token.value}".encode()):
            return error_response(
                ErrorCode.UNAUTHORIZED, "/metrics needs Authorization: Bearer <metrics token>"
            )
    response = web.Response(body=hub.metrics.exposition())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response
