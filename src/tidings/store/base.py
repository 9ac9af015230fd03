"""The ``Store`` interface: durable message history with per-message TTL (spec §9), and the
reactions on stored messages (spec §12).

Every backend (``memory://``, ``sqlite:///…``, ``postgresql://…``) passes the contract suite in
``tidings.testing.store_contract``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "MessageRecord",
    "ReactionChange",
    "ReactionRecord",
    "ReactionRemoval",
    "Store",
    "lower_bound",
]


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


@dataclass(frozen=True, slots=True)
class ReactionRecord:
    """One stored reaction (spec §12): at most one per (channel, message, uid, reaction value).

    It inherits its message's expiry, so it vanishes with the message without a removal event.
    The request fields describe the request that added it: the backend event of a later removal
    reports them (spec §17.2).
    """

    id: str  # ULID of the event that announced it; IDs sort in creation order
    channel: str
    message_id: str
    reaction: str
    uid: str
    umd: str  # JSON text, "null" when absent
    created_ms: int  # Unix milliseconds
    expires_ms: int | None  # the message's expiry; None = never expires
    trigger: str  # client.websocket | client.http | server.http | server.lambda
    request_id: str | None = None
    connection_id: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class ReactionRemoval:
    """Remove the reaction ``reaction`` of ``uid`` from a message."""

    channel: str
    message_id: str
    uid: str
    reaction: str


ReactionChange = ReactionRecord | ReactionRemoval
"""What ``Store.apply_reactions`` takes: a record to add, or a removal."""


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

    async def apply_reactions(
        self, changes: Sequence[ReactionChange], *, now_ms: int
    ) -> list[ReactionRecord | None]:
        """Apply ``changes`` in order, atomically and durably, and report what each did.

        Adding returns the record when it was stored, None when an unexpired reaction with the
        same (channel, message, uid, reaction) exists (a repeated add changes nothing; an
        expired one is replaced). Removing returns the unexpired record it deleted, None when
        there was none. The store does not check that the message exists: the caller has.

        Raises:
            StoreUnavailable: the backend cannot be reached; nothing was applied.
            StoreError: any other failure; nothing was applied.
        """
        ...

    async def reaction_counts(
        self, channel: str, message_ids: Sequence[str], *, now_ms: int
    ) -> dict[str, list[tuple[str, int]]]:
        """Count the unexpired reactions of each of ``message_ids`` in one query: message ID ->
        (reaction, count) pairs, values ordered by their first reaction. Messages without
        reactions are absent."""
        ...

    async def list_reactions(
        self, channel: str, message_ids: Sequence[str], *, now_ms: int
    ) -> dict[str, list[ReactionRecord]]:
        """The unexpired reactions of each of ``message_ids`` in one query, each list in
        creation (ID) order. Messages without reactions are absent."""
        ...

    async def sweep_reactions(self, *, now_ms: int, limit: int = 1000) -> int:
        """Physically delete at most ``limit`` expired reactions; return how many."""
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
