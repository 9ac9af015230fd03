"""Channel figures (spec §10.2 ``getChannelInfo``, §16): the cluster-wide subscription count and,
for presence channels, the deduplicated members. One source for the client and admin APIs."""

from __future__ import annotations

from typing import Any

from tidings.broker.base import Broker
from tidings.core.names import is_presence
from tidings.errors import ErrorCode, ProtocolError
from tidings.hub._common import resolve_sent
from tidings.hub.connection import Connection

__all__ = ["ChannelInfo"]


class ChannelInfo:
    def __init__(self, *, broker: Broker) -> None:
        self._broker = broker

    async def count(self, channel: str) -> int:
        """``subscriptionsCount`` across the cluster (spec §6.4)."""
        return await self._broker.count(channel)

    async def members(self, channel: str) -> list[dict[str, Any]] | None:
        """Presence members (deduplicated by uid), or None for a standard channel."""
        if not is_presence(channel):
            return None
        return await self._broker.presence_members(channel)

    async def for_client(self, conn: Connection, body: dict[str, Any]) -> dict[str, Any]:
        """``getChannelInfo``: needs ``getInfo`` (from the subscription's directives when
        subscribed, else the connect token's); no subscription needed.

        Raises:
            ProtocolError: ``INVALID_CHANNEL`` or ``GET_INFO_PERMISSION_DENIED``.
        """
        sent, channel = resolve_sent(conn, body.get("channel"))
        sub = conn.subscriptions.get(channel)
        perms = sub.permissions if sub is not None else conn.permissions
        if not perms.channel_flag(channel, "getInfo"):
            raise ProtocolError(
                ErrorCode.GET_INFO_PERMISSION_DENIED,
                "getInfo not permitted for channel",
                channel=sent,
            )
        info: dict[str, Any] = {"channel": channel, "subscriptionsCount": await self.count(channel)}
        members = await self.members(channel)
        if members is not None:
            info["members"] = members
        return info
