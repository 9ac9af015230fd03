"""Baseline servers for the tidings benchmarks. Each runs in its own process:

    python bench/baselines.py ws  --port 9001 [--verify]   # websockets + websockets.broadcast()
    python bench/baselines.py sio --port 9002              # python-socketio (aiohttp) room emit
    python bench/baselines.py aiohttp --port 9003          # bare aiohttp WebSocket (reference)

Both answer ``GET /healthz`` with 200 so the harness starts them exactly like tidings.

``ws`` speaks the smallest useful subset of the Hotsock frames so the *same* lean load generator
drives it and tidings:
  * on connect it sends a ``hotsock.connected`` frame (connectionId/expiry/secret, meta);
  * ``{"event":"hotsock.subscribe","channel":C}`` → joins C, replies ``hotsock.subscribed``;
  * any other frame ``{"channel":C,"event":E,"data":D}`` is a publish: the server parses it,
    builds ``{"id":<ULID>,"event":E,"channel":C,"data":D}`` (the tidings wire shape), serialises
    it once with orjson and hands it to ``websockets.broadcast()`` for every subscriber of C.
  * ``--verify``: the ``?token=`` JWT is verified (joserfc, HS256, exp + scope) before the
    upgrade, as a reference for the cost of token checking in the handshake benchmark.

``aiohttp`` is a bare aiohttp WebSocket endpoint (hello frame, then read until closed): the
floor for tidings, which is built on aiohttp; used for the memory and handshake references.

``sio`` is the idiomatic python-socketio equivalent: ``subscribe`` → ``enter_room`` + a
``subscribed`` event; ``publish`` → ``await sio.emit(event, frame, room=channel, skip_sid=sid)``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import time
from datetime import UTC, datetime, timedelta

import orjson
from ulid import ULID

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HOST, SIGNING_SECRET, raise_nofile


def _connected_frame() -> bytes:
    exp = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return orjson.dumps(
        {
            "event": "hotsock.connected",
            "data": {
                "connectionId": secrets.token_urlsafe(12),
                "connectionExpiresAt": exp,
                "connectionSecret": secrets.token_urlsafe(15),
            },
            "meta": {"uid": None, "umd": None},
        }
    )


# ------------------------------------------------------------------------------------------
# websockets + broadcast()


async def run_ws(port: int, verify: bool) -> None:
    from websockets.asyncio.server import broadcast, serve
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    channels: dict[str, set[object]] = {}

    verifier = None
    if verify:
        from joserfc import jwt
        from joserfc.jwk import OctKey

        key = OctKey.import_key(SIGNING_SECRET)

        def verifier(token: str) -> bool:
            try:
                tok = jwt.decode(token, key, algorithms=["HS256"])
            except Exception:
                return False
            c = tok.claims
            exp = c.get("exp")
            scope = str(c.get("scope", "")).split()
            return isinstance(exp, int) and exp > time.time() and "connect" in scope

    def unauthorized() -> Response:
        body = b'{"error":{"code":"INVALID_CONNECT_TOKEN","message":"invalid token"}}'
        return Response(401, "Unauthorized", Headers([("Content-Type", "application/json")]), body)

    def process_request(connection, request):  # type: ignore[no-untyped-def]
        path = request.path
        if path.startswith("/healthz"):
            return connection.respond(200, '{"status":"ok"}\n')
        if verifier is not None:
            token = ""
            if "?" in path:
                for part in path.split("?", 1)[1].split("&"):
                    if part.startswith("token="):
                        token = part[6:]
            if not verifier(token):
                return unauthorized()
        return None

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        subs: list[set[object]] = []
        await ws.send(_connected_frame(), text=True)
        try:
            async for raw in ws:
                try:
                    msg = orjson.loads(raw)
                    event = msg["event"]
                    ch = msg.get("channel")
                except Exception:
                    continue
                if event == "hotsock.subscribe":
                    s = channels.setdefault(ch, set())
                    s.add(ws)
                    subs.append(s)
                    await ws.send(
                        orjson.dumps(
                            {
                                "event": "hotsock.subscribed",
                                "channel": ch,
                                "data": {},
                                "meta": {"uid": None, "umd": None},
                            }
                        ),
                        text=True,
                    )
                elif event == "hotsock.ping":
                    await ws.send(b'{"event":"hotsock.pong","data":{}}', text=True)
                else:
                    frame = orjson.dumps(
                        {"id": str(ULID()), "event": event, "channel": ch, "data": msg.get("data")}
                    )
                    targets = channels.get(ch)
                    if targets:
                        broadcast(targets, frame, text=True)
        finally:
            for s in subs:
                s.discard(ws)

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(
        handler,
        HOST,
        port,
        process_request=process_request,
        compression=None,
        max_size=128 * 1024,
        backlog=4096,
    ):
        print(f"ws baseline ready on {HOST}:{port} verify={verify}", flush=True)
        await stop


# ------------------------------------------------------------------------------------------
# python-socketio room emit


def run_sio(port: int) -> None:
    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(
        async_mode="aiohttp", cors_allowed_origins="*", logger=False, engineio_logger=False
    )
    app = web.Application()
    sio.attach(app)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", healthz)

    @sio.on("subscribe")
    async def _subscribe(sid: str, channel: str) -> None:
        await sio.enter_room(sid, channel)
        await sio.emit("subscribed", channel, to=sid)

    @sio.on("publish")
    async def _publish(sid: str, msg: dict[str, object]) -> None:
        ch = msg["channel"]
        ev = msg["event"]
        frame = {"id": str(ULID()), "event": ev, "channel": ch, "data": msg.get("data")}
        await sio.emit(ev, frame, room=ch, skip_sid=sid)

    print(f"socketio baseline ready on {HOST}:{port}", flush=True)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None, backlog=4096)


# ------------------------------------------------------------------------------------------
# bare aiohttp WebSocket (memory / handshake reference: the floor tidings builds on)


def run_aiohttp(port: int) -> None:
    from aiohttp import web

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ws_handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, autoping=True, max_msg_size=128 * 1024)
        await ws.prepare(request)
        await ws.send_str(_connected_frame().decode())
        async for _msg in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", ws_handler)
    print(f"aiohttp baseline ready on {HOST}:{port}", flush=True)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None, backlog=4096)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["ws", "sio", "aiohttp"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--verify", action="store_true", help="ws: verify the ?token= JWT")
    a = ap.parse_args()
    raise_nofile()
    if a.kind == "ws":
        asyncio.run(run_ws(a.port, a.verify))
    elif a.kind == "aiohttp":
        run_aiohttp(a.port)
    else:
        run_sio(a.port)


if __name__ == "__main__":
    main()
