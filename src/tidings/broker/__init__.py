"""Brokers, chosen by URL: ``memory://`` (one node) or ``redis://…`` (several nodes)."""

from __future__ import annotations

from tidings.broker.base import Broker, Delivery

__all__ = ["Broker", "Delivery", "open_broker"]


def open_broker(url: str) -> Broker:
    """Build the broker for ``url``; drivers are imported lazily."""
    from tidings.errors import ConfigError

    if url == "memory://" or url.startswith("memory:"):
        from tidings.broker.memory import MemoryBroker

        return MemoryBroker()
    raise ConfigError(f"TIDINGS_BROKER {url!r} is not supported; use memory:// for one node.")
