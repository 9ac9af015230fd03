"""Backend events (spec §17), delivered as signed webhooks through a persistent outbox.

Data flow::

    hub ──emit()──▶ EventBus ──add() (batched)──▶ Outbox ──due()──▶ WebhookDispatcher ──POST──▶
    (sync, never     (buffer, encodes once)        (memory, SQLite     (one lane per endpoint,
     blocks)                                        or PostgreSQL)      retries with back-off)

Typical use::

    bus = build_event_bus(endpoints=[WebhookEndpoint(url, (secret,))], store_url=settings_store)
    await bus.start()
    if bus.enabled:
        bus.emit("hotsock.subscribed", "subscription", data, {"channel": channel})
    await bus.aclose()
"""

from __future__ import annotations

from collections.abc import Sequence

from tidings.events.bus import DEFAULT_MAX_BUFFER, EventBus
from tidings.events.outbox import (
    DEFAULT_LEASE_MS,
    MemoryOutbox,
    Outbox,
    PendingDelivery,
    PostgresOutbox,
    SqliteOutbox,
    open_outbox,
)
from tidings.events.webhooks import (
    DEFAULT_BACKOFF,
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT,
    WebhookDispatcher,
    WebhookEndpoint,
)

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_LEASE_MS",
    "DEFAULT_MAX_BUFFER",
    "DEFAULT_TIMEOUT",
    "EventBus",
    "MemoryOutbox",
    "Outbox",
    "PendingDelivery",
    "PostgresOutbox",
    "SqliteOutbox",
    "WebhookDispatcher",
    "WebhookEndpoint",
    "build_event_bus",
    "open_outbox",
]


def build_event_bus(
    *,
    endpoints: Sequence[WebhookEndpoint],
    store_url: str,
    backoff: Sequence[float] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    concurrency: int = DEFAULT_CONCURRENCY,
    poll_interval: float = 1.0,
    lease_ms: int = DEFAULT_LEASE_MS,
    drain_timeout: float = 5.0,
    max_buffer: int = DEFAULT_MAX_BUFFER,
) -> EventBus:
    """Build (not yet start) the event bus for ``endpoints``, with its outbox next to the store.

    Args:
        endpoints: the configured webhook endpoints; empty gives a disabled bus that opens
            nothing and whose ``emit`` returns at once.
        store_url: ``TIDINGS_STORE``; the outbox shares its SQLite file or PostgreSQL schema
            (``memory://`` keeps it in memory: pending deliveries die with the process).
        backoff: seconds before each retry; None is the spec's 5 s … 4 h schedule.
        timeout: seconds one POST may take.
        concurrency: POSTs in flight at once per endpoint.
        poll_interval: seconds between looks at the outbox when nothing else woke a lane.
        lease_ms: how long a claimed delivery stays claimed; must exceed ``timeout``.
        drain_timeout: seconds ``aclose`` waits for POSTs in flight.
        max_buffer: deliveries held in memory before the oldest are dropped.

    Raises:
        ConfigError: the store URL or an option is invalid.
    """
    from tidings.errors import ConfigError

    if not endpoints:
        return EventBus(endpoints=(), outbox=None, dispatcher=None, max_buffer=max_buffer)
    if lease_ms <= timeout * 1000:
        raise ConfigError("The webhook outbox lease must be longer than the request timeout.")
    outbox = open_outbox(store_url, lease_ms=lease_ms)
    dispatcher = WebhookDispatcher(
        outbox,
        endpoints,
        backoff=DEFAULT_BACKOFF if backoff is None else backoff,
        timeout=timeout,
        concurrency=concurrency,
        poll_interval=poll_interval,
        drain_timeout=drain_timeout,
    )
    return EventBus(
        endpoints=endpoints, outbox=outbox, dispatcher=dispatcher, max_buffer=max_buffer
    )
