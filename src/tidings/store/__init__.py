"""Storage backends, chosen by URL: ``memory://``, ``sqlite:///path``, ``postgresql://…``."""

from __future__ import annotations

from tidings.store.base import MessageRecord, ReactionRecord, ReactionRemoval, Store

__all__ = ["MessageRecord", "ReactionRecord", "ReactionRemoval", "Store", "open_store"]


def open_store(url: str) -> Store:
    """Build (not yet open) the store for ``url``; drivers are imported lazily."""
    from tidings.errors import ConfigError

    if url == "memory://" or url.startswith("memory:"):
        from tidings.store.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:"):
        from tidings.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        from tidings.store.postgres import PostgresStore

        return PostgresStore.from_url(url)
    raise ConfigError(
        f"TIDINGS_STORE {url!r} is not supported; use sqlite:///path, postgresql://… or memory://."
    )
