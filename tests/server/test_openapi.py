"""The OpenAPI document (spec §24.4): valid 3.1, covers every route, and describes real answers.

Every server test also checks each response it receives against the document (see
``tests/openapi_check.py``); these tests check the document itself and that the check bites.
"""

from __future__ import annotations

import re

import pytest
from aiohttp import web
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from tests.conftest import API_KEY, Server
from tests.openapi_check import ResponseChecker

from tidings.server import openapi
from tidings.server.client_api import OPERATIONS

_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _routed(app: web.Application) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route the app serves (HEAD is implied by GET)."""
    found: set[tuple[str, str]] = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        if isinstance(resource, web.StaticResource):
            path = resource.canonical + "/{filename}"
        else:
            path = resource.canonical
        if route.method == "HEAD":
            continue
        found.add((route.method.lower(), path))
    return found


def _documented(doc: dict[str, object]) -> set[tuple[str, str]]:
    paths = doc["paths"]
    assert isinstance(paths, dict)
    return {(m, p) for p, item in paths.items() for m in item if m in _METHODS}


def test_document_is_valid_openapi_3_1() -> None:
    """The assembled document passes the OpenAPI 3.1 validator."""
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_validator_refuses_a_broken_document() -> None:
    """The validator used above does catch a broken document."""
    doc = openapi.document()
    doc["paths"]["/publish"]["post"]["responses"] = "nope"
    with pytest.raises(OpenAPIValidationError):
        validate(doc)


async def test_every_route_is_documented_and_every_path_routed(server: Server) -> None:
    """Each (method, path) the node routes is in the document, and nothing else is."""
    routed = _routed(server.node.app)
    documented = _documented(openapi.document())
    # "*" routes (the Client HTTP API) answer the methods the document lists for them
    wildcard = {p for m, p in routed if m == "*"}
    concrete = {(m, p) for m, p in routed if m != "*"}
    undocumented = {r for r in concrete if r not in documented}
    assert not undocumented, f"add these routes to src/tidings/server/openapi/: {undocumented}"
    for method, path in documented:
        served = (method, path) in concrete or any(re.fullmatch(_regex(w), path) for w in wildcard)
        assert served, f"{method.upper()} {path} is documented but not routed"


def _regex(template: str) -> str:
    return re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))


def test_every_client_operation_is_documented() -> None:
    """Each Client HTTP API operation has its own path with POST and the CORS preflight."""
    paths = openapi.document()["paths"]
    for operation in OPERATIONS:
        item = paths.get(f"/connection/{operation}")
        assert item is not None, f"/connection/{operation} is not documented"
        assert {"post", "options"} <= set(item), operation


async def test_openapi_json_serves_the_document(server: Server) -> None:
    """GET /openapi.json answers the assembled document as JSON."""
    async with server.http.get(f"{server.base}/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == openapi.document()


def test_fragments_cannot_define_a_name_twice() -> None:
    """Two fragments documenting one path are refused rather than shadowing each other."""
    into: dict[str, object] = {"/publish": {}}
    with pytest.raises(ValueError, match="'/publish' is defined twice"):
        openapi._merge(into, {"/publish": {}}, "x.json: path")


def test_checker_catches_answers_that_break_the_document() -> None:
    """The response check reports wrong bodies, undocumented statuses, types and paths."""
    checker = ResponseChecker()
    ok = b'{"name":"a","subscriptionsCount":0}'
    assert checker.problem("GET", "/channels/a", 200, "application/json", ok) is None
    wrong = b'{"name":"a","subscriptionsCount":"zero"}'
    problem = checker.problem("GET", "/channels/a", 200, "application/json", wrong)
    assert problem is not None and "subscriptionsCount" in problem
    problem = checker.problem("GET", "/channels/a", 418, "application/json", ok)
    assert problem is not None and "418" in problem
    problem = checker.problem("GET", "/channels/a", 200, "text/html", b"<p>")
    assert problem is not None and "text/html" in problem
    problem = checker.problem("GET", "/nowhere", 200, "application/json", b"{}")
    assert problem is not None and "not in the OpenAPI document" in problem
    bad_error = b'{"error":{"code":"UNAUTHORIZED"}}'
    problem = checker.problem("GET", "/channels/a", 401, "application/json", bad_error)
    assert problem is not None and "message" in problem
    # a method the document does not list is rightly answered 405
    assert checker.problem("DELETE", "/publish", 405, "application/json", b"{}") is None


async def test_documented_routes_answer_as_documented(server: Server) -> None:
    """One real call per documented route family; the fixture checks every answer."""
    client = await server.connect({"channels": {"room": {"subscribe": True, "getInfo": True}}})
    await client.subscribe("room")
    await server.publish({"channel": "room", "event": "e", "data": 1, "store": 60})
    await server.call(client, "listMessages", {"channel": "room"}, status=200)
    await server.call(client, "getChannelInfo", {"channel": "room"}, status=200)
    await server.call(client, "nosuchOperation", {}, status=404)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for path, status in [
        ("/channels/room", 200),
        ("/healthz", 200),
        ("/metrics", 200),
        ("/console", 200),  # followed to /console/
        ("/console/nothing-here.js", 404),
        ("/", 426),
    ]:
        async with server.http.get(f"{server.base}{path}", headers=headers) as resp:
            assert resp.status == status, path
    async with server.http.options(f"{server.base}/connection/listMessages") as resp:
        assert resp.status == 204
