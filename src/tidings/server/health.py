"""``/healthz`` for load balancers and ``/metrics`` in the Prometheus text format."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tidings.server.http import HUB, json_response

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
    lines = ["# TYPE tidings_connections gauge", f"tidings_connections {len(hub.connections)}"]
    for name, value in hub.metrics().items():
        lines += [f"# TYPE tidings_{name}_total counter", f"tidings_{name}_total {value}"]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
