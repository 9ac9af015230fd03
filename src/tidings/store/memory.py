"""``MemoryStore``: message history in process memory (``memory://``), for tests and demos.

Nothing survives the process. Each channel keeps its IDs in a sorted list, so a page is two
``bisect`` calls and a slice walk, like the B-tree range scans of the persistent backends.
Reactions live in a dict per message, keyed like the persistent backends' primary key.
Schedules live in a dict by ID with a min-heap on their next claimable instant, the
counterpart of the persistent backends' index on ``next_ms``.
Storage entries live in a dict per channel beside a sorted key list (the listing index).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator, Sequence
from dataclasses import replace

from tidings.errors import StoreUnavailable
from tidings.store.base import (
    DEDUP_WINDOW_MS,
    MessageRecord,
    ReactionChange,
    ReactionRecord,
    ReactionRemoval,
    Revocation,
    RevocationKind,
    ScheduleRecord,
    StorageChange,
    StorageEntry,
    StorageOutcome,
    Store,
    decide_storage,
)

__all__ = ["MemoryStore"]


class _Channel:
    """The records of one channel, indexed by ID and kept in ID order."""

    __slots__ = ("ids", "records")

    def __init__(self) -> None:
        self.ids: list[str] = []  # sorted; the range-scan index
        self.records: dict[str, MessageRecord] = {}  # id -> record

    def insert(self, record: MessageRecord) -> bool:
        if record.id in self.records:
            return False  # first write wins, as INSERT OR IGNORE does in SQL backends
        self.records[record.id] = record
        ids = self.ids
        # IDs are monotonic per channel, so appending at the end is the common case.
        if not ids or ids[-1] < record.id:
            ids.append(record.id)
        else:
            bisect.insort(ids, record.id)
        return True

    def remove(self, message_id: str) -> None:
        del self.records[message_id]
        index = bisect.bisect_left(self.ids, message_id)
        del self.ids[index]


class _Storage:
    """The storage entries of one channel, with their keys in order for listing."""

    __slots__ = ("entries", "keys")

    def __init__(self) -> None:
        self.keys: list[str] = []  # sorted
        self.entries: dict[str, StorageEntry] = {}

    def put(self, entry: StorageEntry) -> None:
        if entry.key not in self.entries:
            bisect.insort(self.keys, entry.key)
        self.entries[entry.key] = entry

    def delete(self, key: str) -> None:
        del self.entries[key]
        del self.keys[bisect.bisect_left(self.keys, key)]


class MemoryStore:
    """An in-memory ``Store``. Not durable: ``append`` "persists" to a dict.

    Operations complete without awaiting anything, so they are atomic with respect to other
    coroutines. ``open`` is optional for this backend; calls after ``aclose`` raise
    ``StoreUnavailable`` like the persistent backends do.
    """

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}
        # (expires_ms, channel, id) min-heap so that sweep() never scans unexpired records.
        self._expiry: list[tuple[int, str, str]] = []
        # (channel, message ID) -> (uid, reaction) -> record
        self._reactions: dict[tuple[str, str], dict[tuple[str, str], ReactionRecord]] = {}
        # (expires_ms, reaction ID, channel, message ID, uid, reaction): sweep_reactions' heap;
        # an entry whose record was removed or replaced since is skipped
        self._reaction_expiry: list[tuple[int, str, str, str, str, str]] = []
        # schedule ID -> (record, next claimable instant)
        self._schedules: dict[str, tuple[ScheduleRecord, int]] = {}
        # (next claimable instant, schedule ID); an entry whose schedule was claimed (moved) or
        # deleted since is skipped
        self._schedule_heap: list[tuple[int, str]] = []
        self._revocations: dict[tuple[str, str], Revocation] = {}  # (kind, value) -> revocation
        self._storage: dict[str, _Storage] = {}  # channel -> its entries
        # (expires_ms, channel, key): sweep_storage's heap. A key's current item is the instant
        # in _storage_due (an earlier one supersedes it); a popped key whose entry lives longer
        # now is pushed again, so refreshing an entry's expiry over and over does not grow it
        self._storage_expiry: list[tuple[int, str, str]] = []
        self._storage_due: dict[tuple[str, str], int] = {}
        # dedup_id -> (message ID, expires_ms), and sweep_dedup's heap of (expires_ms, dedup_id);
        # an entry whose dedup_id was claimed again since is skipped
        self._dedup: dict[str, tuple[str, int]] = {}
        self._dedup_expiry: list[tuple[int, str]] = []
        self._closed = False

    # Public methods

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        """Build a store for ``memory://`` (the URL carries no options)."""
        return cls()

    async def open(self) -> None:
        """Nothing to connect to; idempotent. Raises ``StoreUnavailable`` after ``aclose``."""
        self._check_open()

    async def append(self, records: Sequence[MessageRecord]) -> list[str]:
        """See ``Store.append``.

        Raises:
            StoreUnavailable: the store was closed.
        """
        self._check_open()
        stored: list[str] = []
        for record in records:
            if record.dedup_id is not None:
                known = self._dedup.get(record.dedup_id)
                if known is not None and known[1] > record.created_ms:
                    stored.append(known[0])
                    continue
                expires = record.created_ms + DEDUP_WINDOW_MS
                self._dedup[record.dedup_id] = (record.id, expires)
                heapq.heappush(self._dedup_expiry, (expires, record.dedup_id))
            stored.append(record.id)
            channel = self._channels.get(record.channel)
            if channel is None:
                channel = self._channels[record.channel] = _Channel()
            if channel.insert(record) and record.expires_ms is not None:
                heapq.heappush(self._expiry, (record.expires_ms, record.channel, record.id))
        return stored

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
        """See ``Store.list_messages``."""
        self._check_open()
        state = self._channels.get(channel)
        if state is None or limit <= 0:
            return []
        ids = state.ids
        start = 0
        if min_id is not None:
            start = bisect.bisect_left(ids, min_id)
        if after is not None:
            start = max(start, bisect.bisect_right(ids, after))
        stop = len(ids) if before is None else bisect.bisect_left(ids, before)
        indexes: Iterator[int] = (
            reversed(range(start, stop)) if reverse else iter(range(start, stop))
        )
        page: list[MessageRecord] = []
        for index in indexes:
            record = state.records[ids[index]]
            if record.expires_ms is None or record.expires_ms > now_ms:
                page.append(record)
                if len(page) >= limit:
                    break
        return page

    async def get_message(
        self, channel: str, message_id: str, *, now_ms: int
    ) -> MessageRecord | None:
        """See ``Store.get_message``."""
        self._check_open()
        state = self._channels.get(channel)
        record = None if state is None else state.records.get(message_id)
        if record is None or (record.expires_ms is not None and record.expires_ms <= now_ms):
            return None
        return record

    async def sweep(self, *, now_ms: int, limit: int = 1000) -> int:
        """Delete at most ``limit`` records with ``expires_ms <= now_ms``; return the count."""
        self._check_open()
        deleted = 0
        expiry = self._expiry
        while deleted < limit and expiry and expiry[0][0] <= now_ms:
            _, channel, message_id = heapq.heappop(expiry)
            state = self._channels[channel]
            state.remove(message_id)
            if not state.ids:
                del self._channels[channel]  # so idle channels do not leak memory
            deleted += 1
        return deleted

    async def sweep_dedup(self, *, now_ms: int, limit: int = 1000) -> int:
        """See ``Store.sweep_dedup``."""
        self._check_open()
        deleted = 0
        expiry = self._dedup_expiry
        while deleted < limit and expiry and expiry[0][0] <= now_ms:
            expires, dedup_id = heapq.heappop(expiry)
            known = self._dedup.get(dedup_id)
            if known is None or known[1] != expires:
                continue  # claimed again since
            del self._dedup[dedup_id]
            deleted += 1
        return deleted

    async def apply_reactions(
        self, changes: Sequence[ReactionChange], *, now_ms: int
    ) -> list[ReactionRecord | None]:
        """See ``Store.apply_reactions``."""
        self._check_open()
        outcomes: list[ReactionRecord | None] = []
        for change in changes:
            message = (change.channel, change.message_id)
            key = (change.uid, change.reaction)
            current = self._reactions.get(message, {}).get(key)
            if current is not None and not _live(current.expires_ms, now_ms):
                current = None
            if isinstance(change, ReactionRemoval):
                if current is not None:
                    reactions = self._reactions[message]
                    del reactions[key]
                    if not reactions:
                        del self._reactions[message]
                outcomes.append(current)
                continue
            if current is not None:
                outcomes.append(None)
                continue
            self._reactions.setdefault(message, {})[key] = change
            if change.expires_ms is not None:
                heapq.heappush(
                    self._reaction_expiry, (change.expires_ms, change.id, *message, *key)
                )
            outcomes.append(change)
        return outcomes

    async def reaction_counts(
        self, channel: str, message_ids: Sequence[str], *, now_ms: int
    ) -> dict[str, list[tuple[str, int]]]:
        """See ``Store.reaction_counts``."""
        counts: dict[str, list[tuple[str, int]]] = {}
        for message_id, records in (
            await self.list_reactions(channel, message_ids, now_ms=now_ms)
        ).items():
            tally: dict[str, int] = {}
            for record in records:  # in creation order, so values follow their first reaction
                tally[record.reaction] = tally.get(record.reaction, 0) + 1
            counts[message_id] = list(tally.items())
        return counts

    async def list_reactions(
        self, channel: str, message_ids: Sequence[str], *, now_ms: int
    ) -> dict[str, list[ReactionRecord]]:
        """See ``Store.list_reactions``."""
        self._check_open()
        found: dict[str, list[ReactionRecord]] = {}
        for message_id in message_ids:
            reactions = self._reactions.get((channel, message_id))
            if not reactions:
                continue
            live = [r for r in reactions.values() if _live(r.expires_ms, now_ms)]
            if live:
                found[message_id] = sorted(live, key=lambda r: r.id)
        return found

    async def sweep_reactions(self, *, now_ms: int, limit: int = 1000) -> int:
        """Delete at most ``limit`` reactions with ``expires_ms <= now_ms``; return the count."""
        self._check_open()
        deleted = 0
        expiry = self._reaction_expiry
        while deleted < limit and expiry and expiry[0][0] <= now_ms:
            _, reaction_id, channel, message_id, uid, reaction = heapq.heappop(expiry)
            reactions = self._reactions.get((channel, message_id), {})
            current = reactions.get((uid, reaction))
            if current is None or current.id != reaction_id:
                continue  # removed or replaced since
            del reactions[(uid, reaction)]
            if not reactions:
                del self._reactions[(channel, message_id)]
            deleted += 1
        return deleted

    async def add_schedules(self, records: Sequence[ScheduleRecord]) -> None:
        """See ``Store.add_schedules``."""
        self._check_open()
        for record in records:
            if record.id not in self._schedules:
                self._schedules[record.id] = (replace(record, attempts=0), record.due_ms)
                heapq.heappush(self._schedule_heap, (record.due_ms, record.id))

    async def next_schedule_ms(self) -> int | None:
        """See ``Store.next_schedule_ms``."""
        self._check_open()
        heap = self._schedule_heap
        while heap and not self._current(*heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    async def claim_schedules(
        self, *, now_ms: int, limit: int, lease_ms: int
    ) -> list[ScheduleRecord]:
        """See ``Store.claim_schedules``."""
        self._check_open()
        claimed: list[ScheduleRecord] = []
        heap = self._schedule_heap
        while len(claimed) < limit and heap and heap[0][0] <= now_ms:
            next_ms, schedule_id = heapq.heappop(heap)
            if not self._current(next_ms, schedule_id):
                continue
            record = self._schedules[schedule_id][0]
            record = replace(record, attempts=record.attempts + 1)
            self._schedules[schedule_id] = (record, now_ms + lease_ms)
            heapq.heappush(heap, (now_ms + lease_ms, schedule_id))
            claimed.append(record)
        return claimed

    async def complete_schedules(self, schedule_ids: Sequence[str]) -> None:
        """See ``Store.complete_schedules``."""
        self._check_open()
        for schedule_id in schedule_ids:
            self._schedules.pop(schedule_id, None)

    async def delete_schedule(self, schedule_id: str, *, now_ms: int) -> bool:
        """See ``Store.delete_schedule``."""
        self._check_open()
        entry = self._schedules.get(schedule_id)
        if entry is None or (entry[0].attempts > 0 and entry[1] > now_ms):
            return False
        del self._schedules[schedule_id]
        return True

    async def put_revocation(self, revocation: Revocation) -> None:
        self._check_open()
        self._revocations[(revocation.kind.value, revocation.value)] = revocation

    async def list_revocations(self, *, now_ms: int) -> list[Revocation]:
        self._check_open()
        return [r for _, r in sorted(self._revocations.items()) if r.expires_ms > now_ms]

    async def delete_revocation(self, kind: RevocationKind, value: str, *, now_ms: int) -> bool:
        self._check_open()
        removed = self._revocations.pop((kind.value, value), None)
        return removed is not None and removed.expires_ms > now_ms

    async def sweep_revocations(self, *, now_ms: int, limit: int = 1000) -> int:
        """A scan: revocations are few, and swept once per sweep interval."""
        self._check_open()
        expired = [k for k, r in self._revocations.items() if r.expires_ms <= now_ms][:limit]
        for key in expired:
            del self._revocations[key]
        return len(expired)

    async def apply_storage(
        self, changes: Sequence[StorageChange], *, now_ms: int
    ) -> list[StorageOutcome]:
        """See ``Store.apply_storage``."""
        self._check_open()
        outcomes: list[StorageOutcome] = []
        for change in changes:
            state = self._storage.get(change.channel)
            stored = None if state is None else state.entries.get(change.key)
            outcome, row = decide_storage(change, stored, now_ms)
            outcomes.append(outcome)
            if row is None:
                if state is not None and stored is not None:
                    self._drop(state, change.channel, change.key)
                continue
            if state is None:
                state = self._storage[change.channel] = _Storage()
            state.put(row)
            if row.expires_ms is not None:
                self._schedule_sweep(row.channel, row.key, row.expires_ms)
        return outcomes

    async def get_storage(self, channel: str, key: str, *, now_ms: int) -> StorageEntry | None:
        """See ``Store.get_storage``."""
        self._check_open()
        state = self._storage.get(channel)
        entry = None if state is None else state.entries.get(key)
        return entry if entry is not None and _live(entry.expires_ms, now_ms) else None

    async def list_storage(
        self,
        channel: str,
        *,
        now_ms: int,
        keys: Sequence[str] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[StorageEntry]:
        """See ``Store.list_storage``."""
        self._check_open()
        state = self._storage.get(channel)
        if state is None or limit <= 0:
            return []
        if keys is not None:
            candidates: Sequence[str] = sorted(
                k for k in set(keys) if k in state.entries and (after is None or k > after)
            )
        else:
            start = 0 if after is None else bisect.bisect_right(state.keys, after)
            candidates = state.keys[start:]
        page: list[StorageEntry] = []
        for key in candidates:
            entry = state.entries[key]
            if _live(entry.expires_ms, now_ms):
                page.append(entry)
                if len(page) >= limit:
                    break
        return page

    async def sweep_storage(self, *, now_ms: int, limit: int = 1000) -> list[StorageEntry]:
        """Delete at most ``limit`` entries with ``expires_ms <= now_ms``; return them."""
        self._check_open()
        swept: list[StorageEntry] = []
        expiry = self._storage_expiry
        while len(swept) < limit and expiry and expiry[0][0] <= now_ms:
            due, channel, key = heapq.heappop(expiry)
            if self._storage_due.get((channel, key)) != due:
                continue  # superseded by an earlier instant for the same key
            del self._storage_due[(channel, key)]
            state = self._storage.get(channel)
            entry = None if state is None else state.entries.get(key)
            if state is None or entry is None:
                continue  # deleted since
            if entry.expires_ms is None or entry.expires_ms > now_ms:
                if entry.expires_ms is not None:  # rewritten with a later expiry
                    self._schedule_sweep(channel, key, entry.expires_ms)
                continue
            self._drop(state, channel, key)
            swept.append(entry)
        return swept

    async def aclose(self) -> None:
        """Drop all records. Idempotent."""
        self._closed = True
        self._schedules.clear()
        self._schedule_heap.clear()
        self._revocations.clear()
        self._channels.clear()
        self._expiry.clear()
        self._reactions.clear()
        self._reaction_expiry.clear()
        self._storage.clear()
        self._storage_expiry.clear()
        self._storage_due.clear()
        self._dedup.clear()
        self._dedup_expiry.clear()

    # Private methods

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the memory store is closed")

    def _current(self, next_ms: int, schedule_id: str) -> bool:
        """Whether a heap entry still describes its schedule."""
        entry = self._schedules.get(schedule_id)
        return entry is not None and entry[1] == next_ms

    def _schedule_sweep(self, channel: str, key: str, expires_ms: int) -> None:
        due = self._storage_due.get((channel, key))
        if due is None or expires_ms < due:
            self._storage_due[(channel, key)] = expires_ms
            heapq.heappush(self._storage_expiry, (expires_ms, channel, key))

    def _drop(self, state: _Storage, channel: str, key: str) -> None:
        state.delete(key)
        if not state.entries:
            del self._storage[channel]  # so idle channels do not leak memory


def _live(expires_ms: int | None, now_ms: int) -> bool:
    return expires_ms is None or expires_ms > now_ms


_: type[Store] = MemoryStore
