"""``DELETE /schedules/{id}``: cancel a pending schedule (spec §14, a tidings extension)."""

from __future__ import annotations

from aiohttp import web

from tidings.core.schedule import schedule_id_from_path
from tidings.errors import ErrorCode, ProtocolError
from tidings.server.http import require_api_key

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.delete("/schedules/{scheduleId}")
async def cancel_schedule(request: web.Request) -> web.Response:
    """204 when the schedule was pending; 404 when it is unknown, has run or is running. The
    ID may be the bare ULID or the whole ``scheduleArn``."""
    hub = require_api_key(request)
    schedule_id = schedule_id_from_path(request.match_info["scheduleId"])
    if schedule_id is None or not await hub.cancel_schedule(schedule_id):
        raise ProtocolError(ErrorCode.NOT_FOUND, "no pending schedule with that ID")
    return web.Response(status=204)
