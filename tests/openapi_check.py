"""Checks real HTTP responses against the OpenAPI document (``tidings.server.openapi``).

``start_server`` in ``tests/conftest.py`` puts ``recording_middleware`` in front of every test
node, so each response any server test receives is checked; a mismatch fails that test with the
route and the reason. Fix the document (``src/tidings/server/openapi/<module>.json``), or the
route if the document is right.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from jsonschema import Draft202012Validator

from tidings.server.openapi import document

__all__ = ["ResponseChecker", "recording_middleware"]


class ResponseChecker:
    """Finds an answer's operation in the document and validates status, type and body."""

    def __init__(self) -> None:
        self.doc = document()
        # literal paths before templated ones, as OpenAPI path matching requires
        self._paths = sorted(
            ((_template_regex(p), p) for p in self.doc["paths"]),
            key=lambda item: item[1].count("{"),
        )

    # Public methods

    def find(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        """The documented (path template, operation) answering ``method path``."""
        for regex, template in self._paths:
            if regex.fullmatch(path):
                operation = self.doc["paths"][template].get(method.lower())
                return (template, operation) if operation is not None else None
        return None

    def problem(
        self, method: str, path: str, status: int, content_type: str | None, body: bytes | None
    ) -> str | None:
        """Why the answer does not match the document, or None when it does (``content_type``
        None: not known yet, check the status only)."""
        found = self.find(method, path)
        if found is None:
            if status == 405:
                return None  # the right answer to a method the document does not list
            return f"{method} {path} is not in the OpenAPI document"
        template, operation = found
        responses = operation.get("responses", {})
        response = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")
        if response is None:
            return f"{method} {template} answered {status}, which is not documented"
        response = self._deref(response)
        content = response.get("content")
        if not content or content_type is None:
            return None
        media = content.get(content_type) or content.get(content_type.split("/")[0] + "/*")
        media = media or content.get("*/*")
        if media is None:
            return f"{method} {template} {status} answered {content_type!r}, not documented"
        if content_type != "application/json" or body is None or "schema" not in media:
            return None
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            return f"{method} {template} {status} is not valid JSON"
        # the document's components ride along, so "#/components/..." resolves in place
        validator = Draft202012Validator({**media["schema"], "components": self.doc["components"]})
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(body)"
            return f"{method} {template} {status}: {where}: {first.message}"
        return None

    # Private methods

    def _deref(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def recording_middleware(checker: ResponseChecker, problems: list[str]) -> Middleware:
    """An aiohttp middleware appending to ``problems`` every answer that breaks the document."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None or request.method == "HEAD":
            return await handler(request)  # no route matched: nothing to document
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _note(checker, problems, request, exc.status, exc.content_type, None)
            raise
        if isinstance(response, web.Response):
            raw = response.body if isinstance(response.body, bytes) else None
            _note(checker, problems, request, response.status, response.content_type, raw)
        else:  # files and WebSockets: the type is only settled when they are prepared
            _note(checker, problems, request, response.status, None, None)
        return response

    return record


def _note(
    checker: ResponseChecker,
    problems: list[str],
    request: web.Request,
    status: int,
    content_type: str | None,
    body: bytes | None,
) -> None:
    problem = checker.problem(
        request.method, request.raw_path.split("?")[0], status, content_type, body
    )
    if problem is not None:
        problems.append(problem)
