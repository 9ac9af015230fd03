"""Presence channels (spec §7): joining and leaving the cluster-wide member list, and
announcing member changes to every subscriber and as backend events."""

from __future__ import annotations

from typing import Any

from tidings.broker.base import Broker, Delivery, PresenceUpdate
from tidings.core.json import dumps
from tidings.core.presence import Change, member_event_frame
from tidings.hub.emitter import Emitter

__all__ = ["Presence"]


class Presence:
    def __init__(self, *, broker: Broker, emitter: Emitter, max_bytes: int) -> None:
        self._broker = broker
        self._emitter = emitter
        self._max_bytes = max_bytes  # the member list's size bound (limits.presence_max_bytes)

    async def join(self, channel: str, connection_id: str, uid: str, umd: Any) -> PresenceUpdate:
        """Add a member; raises ``ProtocolError`` when the member list would grow too big."""
        return await self._broker.presence_join(
            channel, connection_id, uid, umd, max_bytes=self._max_bytes
        )

    async def leave(self, channel: str, connection_id: str, uid: str) -> PresenceUpdate:
        return await self._broker.presence_leave(channel, connection_id, uid)

    async def announce(self, channel: str, update: PresenceUpdate, *, skip: str) -> None:
        """Tell every subscriber of the channel on every node except ``skip`` about a change."""
        if update.member is None or update.change is Change.NONE:
            return
        self._emitter.member(channel, update)
        frame = member_event_frame(update.change, channel, update.member, dumps(update.members))
        await self._broker.publish(channel, [Delivery(frame, skip)])
