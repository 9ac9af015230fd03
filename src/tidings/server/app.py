"""Assembles one node: backends, hub, and the aiohttp application on one port."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from tidings.broker import open_broker
from tidings.broker.base import Broker
from tidings.config import Settings
from tidings.events import WebhookEndpoint, build_event_bus
from tidings.hub.hub import Hub
from tidings.server import (
    admin_api,
    client_api,
    health,
    moderation_api,
    openapi,
    publish_api,
    revocations_api,
    schedule_api,
)
from tidings.server.client_api import serve_forwarded
from tidings.server.health import READY
from tidings.server.http import HUB, error_middleware
from tidings.server.runner import TidingsRunner
from tidings.server.websocket import websocket_handler
from tidings.store import open_store
from tidings.store.base import Store

__all__ = ["Node", "create_app"]

log = logging.getLogger("tidings")

STATIC = Path(__file__).parent / "static"


def create_app(hub: Hub) -> web.Application:
    """The aiohttp application for ``hub`` (not started)."""
    app = web.Application(
        middlewares=[error_middleware], client_max_size=hub.settings.limits.max_body_bytes
    )
    app[HUB] = hub
    app[READY] = asyncio.Event()
    app.router.add_get("/", websocket_handler)
    app.router.add_get("/v1", websocket_handler)
    for module in (
        publish_api,
        client_api,
        admin_api,
        schedule_api,
        moderation_api,
        revocations_api,
        health,
        openapi,
    ):
        app.router.add_routes(module.routes)
    app.router.add_get("/console", _console_redirect)
    app.router.add_get("/console/", _console_index)
    if STATIC.is_dir():
        app.router.add_static("/console/", STATIC, append_version=False)
    return app


async def _console_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/console/")


async def _console_index(request: web.Request) -> web.StreamResponse:
    page = STATIC / "console.html"
    if not page.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


class Node:
    """One running tidings node: ``await node.start()``, then ``await node.stop()``."""

    def __init__(
        self, settings: Settings, *, store: Store | None = None, broker: Broker | None = None
    ) -> None:
        """``store`` and ``broker`` replace the backends ``settings`` name (third-party
        backends, or tests that put a fault in front of a real one)."""
        self.settings = settings
        self.store = store if store is not None else open_store(settings.backends.store)
        self.broker = broker if broker is not None else open_broker(settings.backends.broker)
        self.hub = Hub(
            settings=settings,
            store=self.store,
            broker=self.broker,
            events=build_event_bus(
                endpoints=[
                    WebhookEndpoint(
                        w.url,
                        tuple(x.value for x in w.secrets),
                        frozenset(w.types) if w.types is not None else None,
                    )
                    for w in settings.events.webhooks
                ],
                store_url=settings.backends.store,
                backoff=settings.events.backoff_seconds,
            ),
        )
        self.app = create_app(self.hub)
        # tokens travel in the query string: let long ones reach the token gate for a JSON 401
        self._runner = TidingsRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            max_line_size=65536,
            max_field_size=16384,
        )
        self.port: int | None = None

    async def start(self) -> None:
        await self.hub.start(serve=lambda request: serve_forwarded(self.hub, request))
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.settings.server.host, self.settings.server.port, backlog=4096
        )
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.server.port
        self.app[READY].set()

    async def stop(self) -> None:
        """Graceful drain (spec §23): refuse new work, close sockets with 1001, flush the store."""
        await self.hub.drain()
        await self._runner.cleanup()

    async def run_until_signalled(self, on_ready: Callable[[Node], None] | None = None) -> None:
        """Start, call ``on_ready``, wait for SIGTERM/SIGINT, then drain."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        if on_ready is not None:
            on_ready(self)
        await stop.wait()
        log.info("= draining")
        await self.stop()
        log.info("= stopped")
