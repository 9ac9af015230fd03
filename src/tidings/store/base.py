"""The ``Store`` interface: durable message history with per-message TTL (spec §9).

Every backend (``memory://``, ``sqlite:///…``, ``postgresql://…``) passes the contract suite in
``tidings.testing.store_contract``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["MessageRecord", "Store", "lower_bound"]


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One stored channel message (spec §9.1).

    ``data`` and ``umd`` hold the compact JSON *text* of the value (``"null"`` for JSON null), so
    any value that is valid on the wire round-trips byte for byte, on every backend (PostgreSQL's
    ``jsonb`` would refuse ``\\u0000`` and reorder keys; text does neither).
    """

    id: str  # ULID; also the sort key
    channel: str
    event: str
    data: str  # JSON text
    uid: str | None
    umd: str  # JSON text, "null" when absent
    created_ms: int  # Unix milliseconds
    expires_ms: int | None  # Unix milliseconds; None = never expires
    trigger: str  # client.websocket | client.http | server.http | server.lambda
    connection_id: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None


class Store(Protocol):
    """Durable, ordered message history. All methods are coroutines safe to call concurrently."""

    async def open(self) -> None:
        """Connect and create or migrate the schema. Idempotent; safe when several nodes start
        at once."""
        ...

    async def append(self, records: Sequence[MessageRecord]) -> None:
        """Persist ``records``. When this returns, every record is durable (survives a crash of
        this process); when it raises, none of them may be acknowledged to a client. Records with
        an ID already stored are ignored (idempotent retries).

        Raises:
            StoreUnavailable: the backend cannot be reached; nothing was written.
            StoreError: any other failure.
        """
        ...

    async def list_messages(
        self,
        channel: str,
        *,
        now_ms: int,
        min_id: str | None = None,
        after: str | None = None,
        before: str | None = None,
        reverse: bool = False,
        limit: int = 100,
    ) -> list[MessageRecord]:
        """Return up to ``limit`` unexpired records of ``channel`` (``expires_ms > now_ms`` or no
        expiry) with ``id >= min_id`` (inclusive), ``id > after`` and ``id < before`` (each
        exclusive, each ignored when None), ordered by ID ascending, or descending when
        ``reverse``. Never blocks the event loop."""
        ...

    async def get_message(
        self, channel: str, message_id: str, *, now_ms: int
    ) -> MessageRecord | None:
        """The unexpired record with that ID on that channel, or None."""
        ...

    async def sweep(self, *, now_ms: int, limit: int = 1000) -> int:
        """Physically delete at most ``limit`` expired records; return how many were deleted."""
        ...

    async def aclose(self) -> None:
        """Flush pending writes and release resources. Idempotent."""
        ...


def lower_bound(min_id: str | None, after: str | None) -> tuple[str | None, bool]:
    """Fold the inclusive ``min_id`` and exclusive ``after`` of ``Store.list_messages`` into
    one bound (value, inclusive), so a query has a single lower bound an index can seek to."""
    if after is not None and (min_id is None or after >= min_id):
        return after, False
    return min_id, True
