"""The ``Store`` interface: durable message history with per-message TTL (spec §9), the
reactions on stored messages (spec §12), the pending schedules (spec §14), token revocations
(spec §24.2), and channel storage entries (spec §11).

Every backend (``memory://``, ``sqlite:///…``, ``postgresql://…``) passes the contract suite in
``tidings.testing.store_contract``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from tidings.core.revocations import Revocation, RevocationKind
from tidings.core.storage import json_equal

__all__ = [
    "DEDUP_WINDOW_MS",
    "MessageRecord",
    "ReactionChange",
    "ReactionRecord",
    "ReactionRemoval",
    "Revocation",
    "RevocationKind",
    "ScheduleRecord",
    "StorageChange",
    "StorageEntry",
    "StorageOutcome",
    "StorageRemoval",
    "Store",
    "decide_storage",
    "lower_bound",
]


DEDUP_WINDOW_MS: Final = 5 * 60 * 1000
"""How long a ``deduplicationId`` is remembered from its first acceptance (spec §15)."""


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One stored channel message (spec §9.1).

    ``data`` and ``umd`` hold the compact JSON *text* of the value (``"null"`` for JSON null), so
    any value that is valid on the wire round-trips byte for byte, on every backend (PostgreSQL's
    ``jsonb`` would refuse ``\\u0000`` and reorder keys; text does neither).

    ``dedup_id`` is the publisher's ``deduplicationId``: ``append`` records it in the same
    transaction as the message, so a retry is recognised even after a crash. It is not read
    back (listed records have None) and takes no part in equality.
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
    dedup_id: str | None = field(default=None, compare=False)


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


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """One pending schedule (spec §14): what to do (``kind`` and its ``payload``) and when.

    The store only keeps, orders and hands out schedules; the hub's scheduler decides what a
    payload means. A claim hides a schedule from other claims for a lease, so that exactly one
    node runs it; a schedule whose claimer dies is handed out again once the lease ends.
    """

    id: str  # ULID; the scheduleArn names it
    due_ms: int  # Unix milliseconds: the scheduled instant
    kind: str  # "message" or "storage"
    channel: str
    payload: str  # JSON text, read by the scheduler
    created_ms: int  # Unix milliseconds: when it was accepted
    attempts: int = 0  # claims so far, the returned claim included


ReactionChange = ReactionRecord | ReactionRemoval
"""What ``Store.apply_reactions`` takes: a record to add, or a removal."""


@dataclass(frozen=True, slots=True)
class StorageEntry:
    """One channel storage entry (spec §11): the value of ``key`` on ``channel`` and its last
    writer. The request fields describe the last write that changed the value: the sweeper's
    ``expired`` backend event reports them (spec §17.2)."""

    channel: str
    key: str
    data: str  # JSON text of the value (never null: a null write deletes the entry)
    uid: str | None  # the last writer; None for server writes
    umd: str  # JSON text, "null" when absent
    updated_ms: int  # Unix milliseconds of the last change
    expires_ms: int | None  # Unix milliseconds; None = never expires
    emit_event: bool  # the last change asked for hotsock.channelStorageUpdated events
    trigger: str  # client.websocket | client.http | server.http | server.lambda
    connection_id: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class StorageRemoval:
    """Delete the entry ``key`` of ``channel`` (a write of ``null``, absent data or ``{}``)."""

    channel: str
    key: str


StorageChange = StorageEntry | StorageRemoval
"""What ``Store.apply_storage`` takes: an entry to write, or a removal."""


@dataclass(frozen=True, slots=True)
class StorageOutcome:
    """What one storage change did.

    Attributes:
        previous: the live entry before the change, or None.
        current: the live entry after it (None when deleted or never set). For an unchanged
            value this is ``previous`` with the new ``expires_ms``.
        changed: whether the value changed (deep JSON equality, ``core.storage.json_equal``);
            an unchanged write is neither delivered nor announced.
        expired: an expired entry the change replaced or deleted before the sweeper reached
            it; the sweeper will not report it, so the caller does.
    """

    previous: StorageEntry | None
    current: StorageEntry | None
    changed: bool
    expired: StorageEntry | None = None


class Store(Protocol):
    """Durable, ordered message history. All methods are coroutines safe to call concurrently."""

    async def open(self) -> None:
        """Connect and create or migrate the schema. Idempotent; safe when several nodes start
        at once."""
        ...

    async def append(self, records: Sequence[MessageRecord]) -> list[str]:
        """Persist ``records``. When this returns, every record is durable (survives a crash of
        this process); when it raises, none of them may be acknowledged to a client. Records with
        an ID already stored are ignored (idempotent retries).

        A record with a ``dedup_id`` is stored only when no unexpired earlier record (on any
        channel) holds that ``dedup_id``; the ``dedup_id`` is recorded, in the same transaction
        as the message, until ``created_ms + DEDUP_WINDOW_MS``. Among records of one call, the
        first wins.

        Returns:
            For each record, in order, the ID its message is stored under: its own, or, for a
            duplicate ``dedup_id``, the original message's (and that record was not stored).

        Raises:
            StoreOutcomeUnknown: the connection died while committing; the records may or may
                not be stored. A retry with the same records (same ``dedup_id``) is safe.
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

    async def sweep_dedup(self, *, now_ms: int, limit: int = 1000) -> int:
        """Physically delete at most ``limit`` expired ``dedup_id`` records; return how many.
        Expired ones are ignored by ``append`` even before they are swept."""
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

    async def add_schedules(self, records: Sequence[ScheduleRecord]) -> None:
        """Persist pending schedules (their ``attempts`` is ignored: a new one has none). When
        this returns they are durable; an ID already stored is ignored.

        Raises:
            StoreUnavailable: the backend cannot be reached; nothing was written.
            StoreError: any other failure.
        """
        ...

    async def next_schedule_ms(self) -> int | None:
        """The earliest instant (Unix ms) at which ``claim_schedules`` may return something:
        the first due time, or the end of a lease that would hand a schedule out again; None
        when no schedule is pending. One index lookup."""
        ...

    async def claim_schedules(
        self, *, now_ms: int, limit: int, lease_ms: int
    ) -> list[ScheduleRecord]:
        """Claim at most ``limit`` schedules that are due (``due_ms <= now_ms``) and not held
        by a live lease, earliest first, and hold them until ``now_ms + lease_ms``. Atomic
        across every caller of every node sharing the backend: no schedule is handed to two
        claims whose leases overlap. The caller runs them, then ``complete_schedules``.

        Raises:
            StoreUnavailable: the backend cannot be reached; nothing was claimed.
            StoreError: any other failure.
        """
        ...

    async def complete_schedules(self, schedule_ids: Sequence[str]) -> None:
        """Forget schedules that ran. Idempotent; unknown IDs are ignored."""
        ...

    async def delete_schedule(self, schedule_id: str, *, now_ms: int) -> bool:
        """Cancel a pending schedule. True when it was deleted; False when it is unknown, has
        run, or is running (claimed, lease not over)."""

    async def apply_storage(
        self, changes: Sequence[StorageChange], *, now_ms: int
    ) -> list[StorageOutcome]:
        """Apply storage ``changes`` in order, atomically and durably, and report what each did.

        Writing an entry whose ``data`` deep-equals the live value (``core.storage.json_equal``)
        changes nothing but ``expires_ms``: the stored writer, ``updated_ms``, ``emit_event``
        and request fields stay (spec §11). Writing over an expired entry, or removing one,
        treats it as absent and reports it in ``expired``. Removing an absent entry is an
        unchanged no-op.

        Raises:
            StoreUnavailable: the backend cannot be reached; nothing was applied.
            StoreError: any other failure; nothing was applied.
        """
        ...

    async def get_storage(self, channel: str, key: str, *, now_ms: int) -> StorageEntry | None:
        """The live entry ``key`` of ``channel`` (``expires_ms > now_ms`` or no expiry), or
        None."""
        ...

    async def list_storage(
        self,
        channel: str,
        *,
        now_ms: int,
        keys: Sequence[str] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[StorageEntry]:
        """Up to ``limit`` live entries of ``channel`` ordered by key (code point order), with
        ``key > after`` when given, and only keys in ``keys`` when given."""
        ...

    async def sweep_storage(self, *, now_ms: int, limit: int = 1000) -> list[StorageEntry]:
        """Physically delete at most ``limit`` expired entries and return them. Several nodes
        may sweep at once; each deleted entry is returned by exactly one call."""
        ...

    async def put_revocation(self, revocation: Revocation) -> None:
        """Store ``revocation`` durably, replacing any of the same kind and value.

        Raises:
            StoreUnavailable: the backend cannot be reached; nothing was written.
            StoreError: any other failure.
        """
        ...

    async def list_revocations(self, *, now_ms: int) -> list[Revocation]:
        """Every unexpired revocation (``expires_ms > now_ms``), ordered by kind, then value."""
        ...

    async def delete_revocation(self, kind: RevocationKind, value: str, *, now_ms: int) -> bool:
        """Delete the revocation of ``kind`` and ``value``; True when an unexpired one was
        deleted (an expired one is deleted too, but counts as absent)."""
        ...

    async def sweep_revocations(self, *, now_ms: int, limit: int = 1000) -> int:
        """Physically delete at most ``limit`` expired revocations; return how many."""
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


def decide_storage(
    change: StorageChange, stored: StorageEntry | None, now_ms: int
) -> tuple[StorageOutcome, StorageEntry | None]:
    """What ``change`` does to the row ``stored`` (live or expired, None when there is none):
    the outcome ``Store.apply_storage`` reports, and what the row must hold afterwards (None:
    no row). Every backend decides with this one function, inside its transaction."""
    live = stored if stored is not None and _live(stored.expires_ms, now_ms) else None
    expired = stored if live is None else None
    if isinstance(change, StorageRemoval):
        return StorageOutcome(live, None, live is not None, expired), None
    if live is not None and json_equal(live.data, change.data):
        current = dataclasses.replace(live, expires_ms=change.expires_ms)
        return StorageOutcome(live, current, False), current
    return StorageOutcome(live, change, True, expired), change


def _live(expires_ms: int | None, now_ms: int) -> bool:
    return expires_ms is None or expires_ms > now_ms
