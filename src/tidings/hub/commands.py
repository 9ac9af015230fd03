"""The WebSocket frame switch (spec §4-§8): one small handler per client command."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tidings._refusals import refusals
from tidings.core import protocol
from tidings.errors import UNAVAILABLE, ErrorCode, ProtocolError, wire_error
from tidings.hub.connection import Connection
from tidings.hub.limits import Limits
from tidings.hub.outbound import Frame
from tidings.hub.publishing import Publisher, failure_reporter
from tidings.hub.reactions import Reactions
from tidings.hub.scheduler import Scheduler
from tidings.hub.storage import Storage
from tidings.hub.subscriptions import Subscriptions
from tidings.hub.umd import UmdUpdates

__all__ = ["Commands"]

log = logging.getLogger("tidings.hub")

Handler = Callable[[Connection, Any], Awaitable[None]]


class Commands:
    """Runs client frames; every refusal is answered with ``hotsock.error``."""

    def __init__(
        self,
        *,
        subscriptions: Subscriptions,
        publisher: Publisher,
        scheduler: Scheduler,
        reactions: Reactions,
        umd: UmdUpdates,
        storage: Storage,
        limits: Limits | None = None,
    ) -> None:
        self._limits = limits  # None: no rate limits (hub tests that build Commands alone)
        self._subscriptions = subscriptions
        self._publisher = publisher
        self._scheduler = scheduler
        self._reactions = reactions
        self._umd = umd
        self._storage = storage
        self._handlers: dict[type, Handler] = {
            protocol.ClientMessage: self._message,
            protocol.Subscribe: self._subscribe,
            protocol.Unsubscribe: self._unsubscribe,
            protocol.Ping: self._ping,
            protocol.Heartbeat: self._heartbeat,
            protocol.MessageReaction: self._reaction,
            protocol.UmdUpdate: self._umd_update,
            protocol.ChannelStorageSet: self._storage_set,
            protocol.ChannelStorageGet: self._storage_get,
        }

    async def handle(self, conn: Connection, text: str | bytes) -> None:
        """Process one client frame."""
        now = conn.last_activity = time.monotonic()
        bucket = conn.message_bucket
        if bucket is not None and not bucket.take(now) and self._limits is not None:
            self._limits.refuse_frame(conn, bucket)
            return
        command: protocol.Command | None = None
        try:
            command = protocol.parse_client_frame(text)
            handler = self._handlers.get(type(command))
            if handler is not None:  # hotsock.pong needs no answer (spec §4.6)
                await handler(conn, command)
        except ProtocolError as exc:
            refusals.refused("websocket", exc.code, exc.channel, _event_of(command), exc.message)
            conn.send(Frame(protocol.error_frame(exc.code, exc.message, exc.channel)))
        except Exception as exc:
            if not isinstance(exc, UNAVAILABLE):
                log.exception("! unexpected failure handling a frame of %s", conn.id)
            sent = (
                command.channel
                if isinstance(
                    command,
                    (
                        protocol.Subscribe,
                        protocol.Unsubscribe,
                        protocol.MessageReaction,
                        protocol.UmdUpdate,
                        protocol.ChannelStorageSet,
                        protocol.ChannelStorageGet,
                    ),
                )
                else None
            )
            conn.send(Frame(protocol.error_frame(*wire_error(exc), sent)))

    def refuse_binary(self, conn: Connection) -> None:
        """Binary frames are not part of the protocol; a flood of them is rate limited too."""
        now = conn.last_activity = time.monotonic()
        bucket = conn.message_bucket
        if bucket is not None and not bucket.take(now) and self._limits is not None:
            self._limits.refuse_frame(conn, bucket)
            return
        error = protocol.error_frame(ErrorCode.INVALID_MESSAGE, "binary frames are not supported")
        conn.send(Frame(error))

    # Handlers

    async def _message(self, conn: Connection, command: protocol.ClientMessage) -> None:
        if command.schedule_expression is None:
            self._publisher.send_client(conn, command.channel, command.event, command.data)
            return
        await self._scheduler.schedule_client(
            conn,
            command.channel,
            command.event,
            command.data,
            command.schedule_expression,
            command.schedule_timezone,
            trigger="client.websocket",
        )

    async def _subscribe(self, conn: Connection, command: protocol.Subscribe) -> None:
        await self._subscriptions.subscribe(
            conn,
            command.channel,
            command.token,
            resume=command.resume,
            resume_from=command.resume_from,
        )

    async def _unsubscribe(self, conn: Connection, command: protocol.Unsubscribe) -> None:
        await self._subscriptions.unsubscribe(conn, command.channel)

    async def _ping(self, conn: Connection, command: protocol.Ping) -> None:
        conn.send(Frame(protocol.pong_frame()))

    async def _heartbeat(self, conn: Connection, command: protocol.Heartbeat) -> None:
        conn.last_heartbeat = conn.last_activity

    async def _reaction(self, conn: Connection, command: protocol.MessageReaction) -> None:
        future = await self._reactions.react_client(
            conn, command.channel, command.data, trigger="client.websocket"
        )
        sent = command.channel or ""

        future.add_done_callback(failure_reporter(conn, sent, "reaction"))

    async def _umd_update(self, conn: Connection, command: protocol.UmdUpdate) -> None:
        await self._umd.update(conn, command.channel, command.token)

    async def _storage_set(self, conn: Connection, command: protocol.ChannelStorageSet) -> None:
        write = self._storage.prepare_client(
            conn, command.channel, command.key, command.data, trigger="client.websocket"
        )
        if command.schedule_expression is not None:
            try:
                await self._scheduler.schedule_storage_client(
                    conn, write, command.schedule_expression, command.schedule_timezone
                )
            except ProtocolError as exc:
                exc.channel = command.channel
                raise
            return
        future = self._storage.write(write)
        sent = command.channel or ""

        future.add_done_callback(failure_reporter(conn, sent, "storage write"))

    async def _storage_get(self, conn: Connection, command: protocol.ChannelStorageGet) -> None:
        conn.send(Frame(await self._storage.get_client(conn, command.channel, command.key)))


_COMMAND_EVENTS: dict[type, str] = {
    protocol.Subscribe: "hotsock.subscribe",
    protocol.Unsubscribe: "hotsock.unsubscribe",
    protocol.MessageReaction: "hotsock.messageReaction",
    protocol.UmdUpdate: "hotsock.umdUpdate",
    protocol.ChannelStorageSet: "hotsock.channelStorageSet",
    protocol.ChannelStorageGet: "hotsock.channelStorageGet",
}


def _event_of(command: protocol.Command | None) -> str | None:
    """The event a refused frame carried, for the refusal log (None when unparsable)."""
    if isinstance(command, protocol.ClientMessage):
        return command.event if isinstance(command.event, str) else None
    return _COMMAND_EVENTS.get(type(command))
