"""The webhook outbox (spec §17.3): one module per backend, chosen by the store URL."""

from tidings.events.outbox.base import DEFAULT_LEASE_MS, Outbox, PendingDelivery, open_outbox
from tidings.events.outbox.memory import MemoryOutbox
from tidings.events.outbox.postgres import PostgresOutbox
from tidings.events.outbox.sqlite import SqliteOutbox

__all__ = [
    "DEFAULT_LEASE_MS",
    "MemoryOutbox",
    "Outbox",
    "PendingDelivery",
    "PostgresOutbox",
    "SqliteOutbox",
    "open_outbox",
]
