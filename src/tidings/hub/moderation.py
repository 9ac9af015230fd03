"""The moderation API's work (spec §24.2): disconnect a connection or every connection of a
user, list a user's connections, and subscribe or unsubscribe a live connection (or a user),
each cluster-wide.

Every call is broadcast to every node (``Control``), which acts on its own connections and
answers what it did; the caller adds the answers up. A disconnect waits for each closed
connection's cleanup (§4.7: presence ``memberRemoved``, counts, backend events), so when the
API answers, the user is gone from every node and from presence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tidings.core.moderation import Disconnect, parse_server_subscribe
from tidings.errors import ErrorCode, ProtocolError
from tidings.hub._common import rfc3339_micros
from tidings.hub.connection import Connection
from tidings.hub.control import Control
from tidings.hub.subscriptions import Subscriptions

__all__ = ["Moderation"]

log = logging.getLogger("tidings.hub")


class Moderation:
    def __init__(
        self,
        *,
        control: Control,
        node_id: str,
        connections: dict[str, Connection],
        subscriptions: Subscriptions,
        close: Callable[[Connection], Awaitable[None]],
    ) -> None:
        self._control = control
        self._node_id = node_id  # shown as each connection's ``node``
        self._connections = connections  # the hub's live connections (read only)
        self._subscriptions = subscriptions
        self._close = close  # the hub's close_connection: awaits the §4.7 cleanup
        for op, handler in (
            ("disconnect", self._on_disconnect),
            ("connections", self._on_connections),
            ("subscribe", self._on_subscribe),
            ("unsubscribe", self._on_unsubscribe),
        ):
            control.register(op, handler)

    # Public methods

    async def disconnect(
        self, how: Disconnect, *, connection_id: str | None = None, uid: str | None = None
    ) -> int:
        """Close one connection (``connection_id``) or every connection of ``uid`` with
        ``how``'s code and reason; return how many were closed.

        Raises:
            ProtocolError: ``NOT_FOUND`` when no node holds such a connection.
        """
        answers = await self._control.broadcast(
            "disconnect", connectionId=connection_id, uid=uid, code=how.code, reason=how.reason
        )
        closed = sum(int(a.get("closed", 0)) for a in answers)
        if not closed:
            raise _not_found(connection_id, uid)
        return closed

    async def connections(self, uid: str) -> list[dict[str, Any]]:
        """The live connections of ``uid`` on every node, oldest first."""
        answers = await self._control.broadcast("connections", uid=uid)
        found = [c for a in answers for c in a.get("connections", [])]
        return sorted(found, key=lambda c: (c["connectedAt"], c["id"]))

    async def subscribe(self, connection_id: str, body: dict[str, Any]) -> None:
        """Subscribe a live connection server-side (``body`` as ``parse_server_subscribe``
        takes it, validated by the caller).

        Raises:
            ProtocolError: ``NOT_FOUND``, or the subscribe's refusal.
        """
        answers = await self._control.broadcast("subscribe", connectionId=connection_id, body=body)
        found = [a for a in answers if a.get("found")]
        if not found:
            raise _not_found(connection_id, None)
        _raise_refusal(found[0])

    async def unsubscribe(
        self, channel: str, *, connection_id: str | None = None, uid: str | None = None
    ) -> int:
        """Unsubscribe one connection or every connection of ``uid`` from ``channel`` (the
        client gets ``hotsock.unsubscribed``); return how many subscriptions ended.

        Raises:
            ProtocolError: ``NOT_FOUND`` when no such connection is live, ``NOT_SUBSCRIBED``
                when none of them is subscribed to ``channel``.
        """
        answers = await self._control.broadcast(
            "unsubscribe", connectionId=connection_id, uid=uid, channel=channel
        )
        if not sum(int(a.get("found", 0)) for a in answers):
            raise _not_found(connection_id, uid)
        ended = sum(int(a.get("unsubscribed", 0)) for a in answers)
        if not ended:
            raise ProtocolError(
                ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {channel!r}", channel=channel
            )
        return ended

    # Private methods: the ops every node runs

    def _targets(self, body: dict[str, Any]) -> list[Connection]:
        connection_id, uid = body.get("connectionId"), body.get("uid")
        if connection_id is not None:
            conn = self._connections.get(connection_id)
            return [conn] if conn is not None and not conn.closed else []
        return [c for c in self._connections.values() if c.uid == uid and not c.closed]

    async def _on_disconnect(self, body: dict[str, Any]) -> dict[str, Any]:
        doomed = self._targets(body)
        for conn in doomed:
            conn.close(int(body["code"]), str(body["reason"]))
        await asyncio.gather(*(self._close(conn) for conn in doomed))
        if doomed:
            log.info("x moderation closed %d connection(s) with %s", len(doomed), body["code"])
        return {"closed": len(doomed)}

    async def _on_connections(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "connections": [
                {
                    "id": conn.id,
                    "node": self._node_id,
                    "connectedAt": rfc3339_micros(conn.connected_ms / 1000),
                    "channels": list(conn.subscriptions),
                }
                for conn in self._targets(body)
            ]
        }

    async def _on_subscribe(self, body: dict[str, Any]) -> dict[str, Any]:
        targets = self._targets(body)
        if not targets:
            return {"found": False}
        try:
            await self._subscriptions.subscribe_server(
                targets[0], parse_server_subscribe(body["body"])
            )
        except ProtocolError as exc:
            return {"found": True, "refused": {"code": exc.code.value, "message": exc.message}}
        return {"found": True}

    async def _on_unsubscribe(self, body: dict[str, Any]) -> dict[str, Any]:
        targets = self._targets(body)
        ended = 0
        for conn in targets:
            try:
                await self._subscriptions.unsubscribe(conn, body["channel"])
            except ProtocolError:
                continue  # NOT_SUBSCRIBED: this connection has nothing to end
            ended += 1
        return {"found": len(targets), "unsubscribed": ended}


def _not_found(connection_id: str | None, uid: str | None) -> ProtocolError:
    if connection_id is not None:
        return ProtocolError(ErrorCode.NOT_FOUND, f"no live connection {connection_id!r}")
    return ProtocolError(ErrorCode.NOT_FOUND, f"user {uid!r} has no live connection")


def _raise_refusal(answer: dict[str, Any]) -> None:
    refused = answer.get("refused")
    if refused is not None:
        raise ProtocolError(ErrorCode(refused["code"]), refused["message"])
