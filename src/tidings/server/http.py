"""Shared pieces of the HTTP adapters: app keys, JSON error bodies (spec §18.3), body parsing."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tidings.core.json import dumps
from tidings.core.requests import parse_body
from tidings.errors import UNAVAILABLE, ErrorCode, ProtocolError, wire_error, wire_status
from tidings.hub.hub import Hub

__all__ = [
    "HUB",
    "error_middleware",
    "error_response",
    "json_response",
    "read_body",
    "read_json",
    "require_api_key",
]

log = logging.getLogger("tidings.http")

HUB = web.AppKey("hub", Hub)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    raw = body if isinstance(body, bytes) else dumps(body)
    return web.Response(body=raw, status=status, content_type="application/json", headers=headers)


def error_response(
    code: ErrorCode,
    message: str,
    *,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return json_response(
        {"error": {"code": code.value, "message": message}},
        status=status or code.http_status,
        headers=headers,
    )


async def read_body(request: web.Request) -> bytes:
    """The raw request body, capped at the configured size (413 beyond)."""
    limit = request.app[HUB].settings.limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, f"request body over {limit} bytes")
    # read(n) returns what has arrived so far (at most n bytes), not n bytes: read until the
    # end, or until one byte past the limit proves it too large
    body = bytearray()
    while len(body) <= limit:
        chunk = await request.content.read(limit + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > limit:
        raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, f"request body over {limit} bytes")
    return bytes(body)


async def read_json(request: web.Request) -> Any:
    """The request body parsed as JSON regardless of ``Content-Type`` (spec §10.1)."""
    return parse_body(await read_body(request))


def require_api_key(request: web.Request) -> Hub:
    """The hub, once the request's ``Authorization: Bearer`` API key checks out (spec §15)."""
    hub = request.app[HUB]
    hub.check_api_key(request.headers.get("Authorization", ""))
    return hub


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as ``{"error": {"code", "message"}}``; nothing leaks internals."""
    try:
        return await handler(request)
    except (ProtocolError, *UNAVAILABLE) as exc:
        return error_response(*wire_error(exc), status=wire_status(exc))
    except web.HTTPException as exc:
        if exc.status == 404:
            return error_response(ErrorCode.NOT_FOUND, "no such route", status=404)
        if exc.status == 405:
            return error_response(ErrorCode.METHOD_NOT_ALLOWED, "method not allowed", status=405)
        if exc.status == 413:
            return error_response(ErrorCode.PAYLOAD_TOO_LARGE, "request body too large", status=413)
        if exc.status < 400:
            raise
        return error_response(ErrorCode.INVALID_MESSAGE, exc.reason, status=exc.status)
    except ConnectionResetError:
        # the client went away mid-answer (an abort during the WebSocket handshake): expected,
        # and nobody is left to read a reply
        log.debug("x client left during %s %s", request.method, request.path)
        return error_response(ErrorCode.INVALID_MESSAGE, "client went away", status=400)
    except Exception as exc:
        log.exception("! unexpected failure on %s %s", request.method, request.path)
        return error_response(*wire_error(exc))
