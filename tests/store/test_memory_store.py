"""``MemoryStore`` against the store contract, plus what only the memory backend promises."""

from __future__ import annotations

import pytest

from tidings.store import open_store
from tidings.store.memory import MemoryStore
from tidings.testing.store_contract import (
    T0,
    StoreContract,
    StoreFactory,
    make_entry,
    make_record,
)


class TestMemoryStore(StoreContract):
    persistent = False

    @pytest.fixture
    def make_store(self) -> StoreFactory:
        return MemoryStore


def test_open_store_memory_url_builds_memory_store() -> None:
    """``memory://`` selects the in-memory backend."""
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(MemoryStore.from_url("memory://"), MemoryStore)


async def test_memory_store_sweep_forgets_emptied_channels() -> None:
    """A channel whose last record was swept no longer holds memory."""
    store = MemoryStore()
    await store.open()
    await store.append([make_record("room.gone", expires_ms=T0 + 1)])
    assert await store.sweep(now_ms=T0 + 1) == 1
    assert store._channels == {}
    await store.aclose()


async def test_memory_store_refreshing_expiry_does_not_grow_the_sweep_heap() -> None:
    """Rewriting one entry with ever later expiries keeps one heap item, and the entry is
    still swept once it finally expires; an earlier expiry still counts."""
    store = MemoryStore()
    await store.open()
    for n in range(1000):
        await store.apply_storage([make_entry("k", str(n), expires_ms=T0 + 10 + n)], now_ms=T0)
    assert len(store._storage_expiry) == 1
    assert await store.sweep_storage(now_ms=T0 + 500) == []  # rewritten: lives until T0 + 1009
    assert len(store._storage_expiry) == 1
    [swept] = await store.sweep_storage(now_ms=T0 + 1009)
    assert swept.data == "999"
    await store.apply_storage([make_entry("j", "1", expires_ms=T0 + 100)], now_ms=T0)
    await store.apply_storage([make_entry("j", "2", expires_ms=T0 + 50)], now_ms=T0)
    [early] = await store.sweep_storage(now_ms=T0 + 50)
    assert early.data == "2"
    assert await store.sweep_storage(now_ms=T0 + 100) == []
    assert store._storage_expiry == [] and store._storage_due == {}
    await store.aclose()
