"""``MemoryStore``: message history in process memory (``memory://``), for tests and demos.

Nothing survives the process. Each channel keeps its IDs in a sorted list, so a page is two
``bisect`` calls and a slice walk, like the B-tree range scans of the persistent backends.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator, Sequence

from tidings.errors import StoreUnavailable
from tidings.store.base import MessageRecord, Store

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
        self._closed = False

    # Public methods

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        """Build a store for ``memory://`` (the URL carries no options)."""
        return cls()

    async def open(self) -> None:
        """Nothing to connect to; idempotent. Raises ``StoreUnavailable`` after ``aclose``."""
        self._check_open()

    async def append(self, records: Sequence[MessageRecord]) -> None:
        """Store ``records``; an ID already stored on its channel is ignored.

        Raises:
            StoreUnavailable: the store was closed.
        """
        self._check_open()
        for record in records:
            channel = self._channels.get(record.channel)
            if channel is None:
                channel = self._channels[record.channel] = _Channel()
            if channel.insert(record) and record.expires_ms is not None:
                heapq.heappush(self._expiry, (record.expires_ms, record.channel, record.id))

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

    async def aclose(self) -> None:
        """Drop all records. Idempotent."""
        self._closed = True
        self._channels.clear()
        self._expiry.clear()

    # Private methods

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the memory store is closed")


_: type[Store] = MemoryStore
