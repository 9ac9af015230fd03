"""The aiohttp runner tidings serves with: aiohttp's own, except for requests so malformed that
no route ever sees them (a request line over ``max_line_size``, a bad header). aiohttp answers
those in ``RequestHandler.handle_error`` with a plain-text 400 that echoes the start of the
offending line, and logs it at ERROR with a traceback; since connect tokens travel in the query
string, that put the first 92 characters of ``?token=`` in the log and in the body. Here they
get a JSON error (414 for a line too long) and one debug line that names only the error type.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from tidings.errors import ErrorCode
from tidings.server.http import error_response

__all__ = ["TidingsRunner"]


class _Handler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or status >= 500:
            return super().handle_error(request, status, exc, message)
        # the exception's text quotes the request: neither it nor a traceback is logged
        self.logger.debug("x malformed request from %s: %s", request.remote, type(exc).__name__)
        if isinstance(exc, LineTooLong):
            response = error_response(
                ErrorCode.INVALID_MESSAGE, "request line or header too long", status=414
            )
        else:
            response = error_response(ErrorCode.INVALID_MESSAGE, "malformed HTTP request")
        response.force_close()
        return response


class _Server(web.Server):
    __slots__ = ()

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class TidingsRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed requests as described above."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # same layout; only the protocol factory differs
        return server
