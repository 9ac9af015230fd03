"""Brokers, chosen by URL: ``memory://`` (one node) or ``redis://…`` (several nodes)."""

from __future__ import annotations

from tidings.broker.base import Broker, Delivery

__all__ = ["Broker", "Delivery", "open_broker"]


def open_broker(url: str) -> Broker:
    """Build the broker for ``url``; drivers are imported lazily.

    ``memory://`` is the one-node broker. ``redis://host:port/db`` (or ``rediss://`` for TLS)
    shares messages, publishing turns and claims between nodes through Redis; ``?prefix=…``
    sets the key prefix (default ``tidings:``), other query options go to redis-py.

    Raises:
        ConfigError: the URL names no supported broker, or is invalid.
    """
    from tidings.errors import ConfigError

    if url == "memory://" or url.startswith("memory:"):
        from tidings.broker.memory import MemoryBroker

        return MemoryBroker()
    if url.startswith(("redis://", "rediss://")):
        from tidings.broker.redis import RedisBroker

        return RedisBroker.from_url(url)
    scheme = url.split(":", 1)[0] if ":" in url else url  # never echo credentials
    raise ConfigError(
        f"TIDINGS_BROKER scheme {scheme!r} is not supported; use memory:// for one node or "
        "redis://host:port/db for several."
    )
