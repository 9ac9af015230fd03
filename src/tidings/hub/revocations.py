"""Token revocations on this node (spec §24.2).

The store holds them; every node keeps them in memory (``RevocationSet``, read by ``Auth`` at
connect, subscribe and umdUpdate), loads them at start and re-reads them each sweep interval.
A change made through the API is stored first, then broadcast, so every live node applies it
at once: it caches it and closes its connections opened with a revoked connect token (close
code 4501). A node the broadcast missed catches up at its next refresh, which also closes such
connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tidings.core.revocations import Revocation, RevocationKind, RevocationSet, parse_revocation
from tidings.errors import UNAVAILABLE, CloseCode, ErrorCode, ProtocolError
from tidings.hub._common import now_ms
from tidings.hub.connection import Connection
from tidings.hub.control import Control
from tidings.store.base import Store

__all__ = ["Revocations"]

log = logging.getLogger("tidings.hub")

SWEEP_BATCH = 1000


class Revocations:
    def __init__(
        self,
        *,
        store: Store,
        control: Control,
        revoked: RevocationSet,
        connections: dict[str, Connection],
        close: Callable[[Connection], Awaitable[None]],
        ttl_seconds: float,
        leeway_seconds: float,
        refresh_interval: float,
    ) -> None:
        self._store = store
        self._control = control
        self.revoked = revoked  # shared with Auth, which refuses tokens it finds here
        self._connections = connections  # the hub's live connections (read only)
        self._close = close  # the hub's close_connection: awaits the §4.7 cleanup
        self._ttl = ttl_seconds
        self._leeway = leeway_seconds
        self._interval = refresh_interval
        self._changes = 0  # bumped by every applied change, so a refresh knows it raced one
        control.register("revoke", self._on_revoke)
        control.register("unrevoke", self._on_unrevoke)

    # Public methods

    async def load(self) -> None:
        """Read every revocation from the store (before the node accepts connections)."""
        self.revoked.replace(await self._store.list_revocations(now_ms=now_ms()))

    async def revoke(self, body: Any) -> dict[str, Any]:
        """``POST /revocations``: store, apply on every node; the revocation's JSON with
        ``connectionsClosed`` (cluster-wide).

        Raises:
            ProtocolError: ``INVALID_MESSAGE`` for a bad body.
            StoreUnavailable: nothing was revoked.
        """
        revocation = parse_revocation(
            body, now=time.time(), default_ttl_seconds=self._ttl, leeway_seconds=self._leeway
        )
        await self._store.put_revocation(revocation)
        closed = await self._everywhere("revoke", self._on_revoke, revocation=_encode(revocation))
        return {**revocation.body(), "connectionsClosed": closed}

    async def in_force(self) -> list[dict[str, Any]]:
        """``GET /revocations``: the revocations in force, from the store."""
        return [r.body() for r in await self._store.list_revocations(now_ms=now_ms())]

    async def unrevoke(self, kind: RevocationKind, value: str) -> None:
        """``DELETE /revocations/{kind}/{value}``.

        Raises:
            ProtocolError: ``NOT_FOUND`` when no such revocation is in force.
        """
        if not await self._store.delete_revocation(kind, value, now_ms=now_ms()):
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no revocation of {kind.value} {value!r}")
        await self._everywhere("unrevoke", self._on_unrevoke, kind=kind.value, value=value)

    def refuses(self, conn: Connection) -> bool:
        """Close ``conn`` (4501) when its connect token is revoked by now: a revocation that
        reached this node between the handshake's check and the connection's registration
        was not applied to it."""
        if not self.revoked or self.revoked.find(conn.claims, conn.claims.uid, now_ms()) is None:
            return False
        conn.close(CloseCode.REVOKED, "token revoked")
        return True

    async def refresh_forever(self) -> None:
        """Every interval: sweep expired revocations, re-read the rest, enforce them."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except UNAVAILABLE as exc:  # an outage, not a bug: no traceback every interval
                log.warning("! refreshing revocations failed: %s", exc)
            except Exception:
                log.exception("! refreshing revocations failed")

    async def refresh(self) -> None:
        while await self._store.sweep_revocations(now_ms=now_ms(), limit=SWEEP_BATCH) >= (
            SWEEP_BATCH
        ):
            await asyncio.sleep(0)
        seen = self._changes
        current = await self._store.list_revocations(now_ms=now_ms())
        if seen == self._changes:  # else a broadcast landed meanwhile: this read may predate it
            self.revoked.replace(current)
        await self._enforce()

    # Private methods

    async def _everywhere(
        self, op: str, local: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], **args: Any
    ) -> int:
        """Broadcast a stored change; when the broker fails, apply it here at least (the other
        nodes take it from the store at their next refresh)."""
        try:
            answers = await self._control.broadcast(op, **args)
        except UNAVAILABLE as exc:
            log.warning("! %s reached only this node (%s); others refresh from the store", op, exc)
            answers = [await local(args)]
        return sum(int(a.get("closed", 0)) for a in answers)

    async def _on_revoke(self, body: dict[str, Any]) -> dict[str, Any]:
        self.revoked.add(_decode(body["revocation"]))
        self._changes += 1
        return {"closed": await self._enforce()}

    async def _on_unrevoke(self, body: dict[str, Any]) -> dict[str, Any]:
        self.revoked.remove(RevocationKind(body["kind"]), body["value"])
        self._changes += 1
        return {}

    async def _enforce(self) -> int:
        """Close this node's connections whose connect token is revoked; how many."""
        if not self.revoked:
            return 0
        now = now_ms()
        doomed = [
            c
            for c in self._connections.values()
            if not c.closed and self.revoked.find(c.claims, c.claims.uid, now) is not None
        ]
        for conn in doomed:
            conn.close(CloseCode.REVOKED, "token revoked")
        await asyncio.gather(*(self._close(conn) for conn in doomed))
        return len(doomed)


def _encode(r: Revocation) -> dict[str, Any]:
    return {
        "kind": r.kind.value,
        "value": r.value,
        "issuedBeforeMs": r.issued_before_ms,
        "createdMs": r.created_ms,
        "expiresMs": r.expires_ms,
    }


def _decode(raw: dict[str, Any]) -> Revocation:
    return Revocation(
        RevocationKind(raw["kind"]),
        raw["value"],
        raw["issuedBeforeMs"],
        raw["createdMs"],
        raw["expiresMs"],
    )
