"""``GET /openapi.json``: the OpenAPI 3.1 document of every HTTP route (spec §24.4).

The document is assembled from JSON fragments in ``server/openapi/``: ``_components.json``
holds the header and shared components, and each route module has one fragment named after it
(``publish_api.json`` documents ``publish_api.py``) with its ``paths`` and any components of its
own. A fragment per module keeps parallel work on different routes from touching one file.

To add a route: add its path to the fragment of the module that serves it (or a new fragment
for a new module). ``tests/server/test_openapi.py`` fails while a routed path is undocumented,
and every server test checks each response it receives against the document.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

from aiohttp import web

from tidings.server.http import json_response

__all__ = ["document", "routes"]

routes = web.RouteTableDef()


@functools.cache
def _assembled() -> dict[str, Any]:
    folder = resources.files("tidings.server") / "openapi"
    doc: dict[str, Any] = json.loads((folder / "_components.json").read_text("utf-8"))
    doc.setdefault("paths", {})
    fragments = sorted(
        (f for f in folder.iterdir() if f.name.endswith(".json") and f.name != "_components.json"),
        key=lambda f: f.name,
    )
    for fragment in fragments:
        part = json.loads(fragment.read_text("utf-8"))
        _merge(doc["paths"], part.get("paths", {}), f"{fragment.name}: path")
        for kind, entries in part.get("components", {}).items():
            section = doc["components"].setdefault(kind, {})
            _merge(section, entries, f"{fragment.name}: components.{kind}")
    return doc


def _merge(into: dict[str, Any], entries: dict[str, Any], what: str) -> None:
    for key, value in entries.items():
        if key in into:
            # two fragments defining one name would silently shadow each other
            raise ValueError(f"{what} {key!r} is defined twice")
        into[key] = value


def document() -> dict[str, Any]:
    """A copy of the whole document (the caller may change it)."""
    return copy.deepcopy(_assembled())


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(_assembled())
