"""``MemoryOutbox`` (``memory://``): lost on exit."""

from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence
from dataclasses import replace

from tidings.events.outbox.base import (
    DEFAULT_LEASE_MS,
    Outbox,
    PendingDelivery,
    check_lease,
)

logger = logging.getLogger("tidings.events.outbox")

__all__ = ["MemoryOutbox"]


class MemoryOutbox:
    """An ``Outbox`` in this process's memory: nothing survives a restart (``memory://``)."""

    def __init__(self, *, lease_ms: int = DEFAULT_LEASE_MS) -> None:
        self._lease_ms = check_lease(lease_ms)
        self._rows: dict[str, PendingDelivery] = {}  # id -> current state
        # Per URL, a heap of (next_attempt_ms, id); entries whose time no longer matches the row
        # are stale (settled or re-leased) and skipped when popped.
        self._heaps: dict[str, list[tuple[int, str]]] = {}

    async def open(self) -> None:
        """Nothing to open."""

    async def add(self, deliveries: Sequence[PendingDelivery]) -> None:
        """See ``Outbox.add``."""
        for delivery in deliveries:
            if delivery.id not in self._rows:
                self._put(delivery)

    async def due(
        self, now_ms: int, limit: int, *, url: str | None = None
    ) -> list[PendingDelivery]:
        """See ``Outbox.due``."""
        heaps = [self._heaps.get(url, [])] if url is not None else list(self._heaps.values())
        claimed: list[PendingDelivery] = []
        while len(claimed) < limit:
            heap = min((h for h in heaps if h), key=lambda h: h[0], default=None)
            if heap is None or heap[0][0] > now_ms:
                break
            when, id_ = heapq.heappop(heap)
            row = self._rows.get(id_)
            if row is None or row.next_attempt_ms != when:
                continue
            leased = replace(row, next_attempt_ms=now_ms + self._lease_ms)
            self._put(leased)
            claimed.append(leased)
        return claimed

    async def done(self, ids: Sequence[str]) -> None:
        """See ``Outbox.done``."""
        for id_ in ids:
            self._rows.pop(id_, None)
        self._compact()

    async def retry(self, id: str, next_attempt_ms: int, attempts: int) -> None:
        """See ``Outbox.retry``."""
        row = self._rows.get(id)
        if row is not None:
            self._put(replace(row, next_attempt_ms=next_attempt_ms, attempts=attempts))

    async def drop(self, id: str) -> None:
        """See ``Outbox.drop``."""
        self._rows.pop(id, None)
        self._compact()

    async def count(self) -> int:
        """See ``Outbox.count``."""
        return len(self._rows)

    async def aclose(self) -> None:
        """Nothing to close; the deliveries stay in this object."""

    def _put(self, row: PendingDelivery) -> None:
        self._rows[row.id] = row
        heapq.heappush(self._heaps.setdefault(row.url, []), (row.next_attempt_ms, row.id))

    def _compact(self) -> None:
        # Stale entries of settled rows are otherwise only removed when they come due, which for
        # leased rows is a whole lease later: rebuild once they dominate a heap.
        for url, heap in self._heaps.items():
            if len(heap) > 64 and len(heap) > 2 * len(self._rows):
                live = [
                    (w, i) for w, i in heap if (r := self._rows.get(i)) and r.next_attempt_ms == w
                ]
                heapq.heapify(live)
                self._heaps[url] = live


_: type[Outbox] = MemoryOutbox
