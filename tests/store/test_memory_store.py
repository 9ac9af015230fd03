"""``MemoryStore`` against the store contract, plus what only the memory backend promises."""

from __future__ import annotations

import pytest

from tidings.store import open_store
from tidings.store.memory import MemoryStore
from tidings.testing.store_contract import T0, StoreContract, StoreFactory, make_record


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
