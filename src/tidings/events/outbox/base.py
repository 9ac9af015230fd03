"""The webhook outbox: deliveries waiting to be sent, kept where they survive a restart (§17.3).

Shape:

* ``EventBus`` adds deliveries (one per event and matching endpoint) in batches; ``add`` returns
  once they are durable. ``WebhookDispatcher`` *claims* the due ones with ``due``, sends them, and
  settles each with ``done`` (delivered), ``retry`` (failed, try again later) or ``drop`` (gave up).
* **Leases.** Claiming a delivery moves its ``next_attempt_ms`` to ``now_ms + lease_ms``: it is
  not handed out again while in flight, and if its claimer dies before settling it (crash, kill,
  lost connection) it simply becomes due again when the lease runs out. One column holds both the
  retry time and the lease, so claiming is one indexed range scan and one update.
* Backends, chosen by the store URL (the outbox lives next to the message store):
  ``MemoryOutbox`` (``memory://``: lost on exit), ``SqliteOutbox`` (a ``webhook_outbox`` table in
  the store's SQLite file) and ``PostgresOutbox`` (a ``<prefix>webhook_outbox`` table in the
  store's schema, claimed with ``FOR UPDATE SKIP LOCKED`` so several nodes share it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from tidings.errors import ConfigError

__all__ = [
    "DEFAULT_LEASE_MS",
    "FIELDS",
    "Outbox",
    "PendingDelivery",
    "check_lease",
    "open_outbox",
    "row_of",
]

#: How long a claimed delivery stays invisible to other claimers. It must exceed the time from
#: claim to settlement: the 10 s request timeout plus a margin for a slow database.
DEFAULT_LEASE_MS: Final = 60_000

FIELDS = "id, url, event_type, body, attempts, next_attempt_ms"


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """One event on its way to one endpoint.

    Attributes:
        id: a ULID, sent as ``webhook-id``: the same on every attempt, so receivers deduplicate.
        url: the endpoint URL.
        event_type: the envelope's ``type`` (sent as ``tidings-event-type``).
        body: the encoded envelope, sent byte for byte and signed as is.
        attempts: failed attempts so far.
        next_attempt_ms: Unix milliseconds from which it may be claimed. For a delivery returned
            by ``Outbox.due`` this is the end of its lease.
    """

    id: str
    url: str
    event_type: str
    body: bytes
    attempts: int = 0
    next_attempt_ms: int = 0


class Outbox(Protocol):
    """Stores pending deliveries. At-least-once: a delivery leaves only through ``done`` or
    ``drop``, and every method may be called from several tasks (or nodes) at once."""

    async def open(self) -> None:
        """Connect and create the table if missing. Idempotent; call before anything else.

        Raises:
            StoreUnavailable: the database cannot be reached or opened.
        """
        ...

    async def add(self, deliveries: Sequence[PendingDelivery]) -> None:
        """Store ``deliveries``; they are durable when this returns.

        An ID already stored is ignored, so repeating a call whose outcome is unknown is safe.

        Raises:
            StoreError: nothing was stored (StoreUnavailable: try again later).
        """
        ...

    async def due(
        self, now_ms: int, limit: int, *, url: str | None = None
    ) -> list[PendingDelivery]:
        """Claim up to ``limit`` deliveries whose ``next_attempt_ms <= now_ms``, oldest first.

        Args:
            now_ms: the current Unix time in milliseconds.
            limit: at most this many are returned.
            url: only deliveries to this endpoint; None claims for any.

        Returns:
            The claimed deliveries. Each is leased: no other ``due`` call returns it before
            ``now_ms + lease_ms``, unless it is settled (``done``, ``retry``, ``drop``) first.
        """
        ...

    async def done(self, ids: Sequence[str]) -> None:
        """Forget delivered deliveries. Unknown IDs are ignored."""
        ...

    async def retry(self, id: str, next_attempt_ms: int, attempts: int) -> None:
        """Make a claimed delivery due again at ``next_attempt_ms``, having failed ``attempts``
        times so far. Also releases a lease early (same ``attempts``, ``next_attempt_ms`` now).
        Unknown IDs are ignored."""
        ...

    async def drop(self, id: str) -> None:
        """Forget a delivery that will never be sent. Unknown IDs are ignored."""
        ...

    async def count(self) -> int:
        """Deliveries stored: due, leased or waiting for a retry."""
        ...

    async def aclose(self) -> None:
        """Release connections. Idempotent. Stored deliveries stay for the next ``open``."""
        ...


def open_outbox(store_url: str, *, lease_ms: int = DEFAULT_LEASE_MS) -> Outbox:
    """Build (not yet open) the outbox that lives with the store at ``store_url``.

    URLs are read exactly as ``tidings.store.open_store`` reads them, so the outbox shares the
    store's SQLite file or PostgreSQL schema. Drivers are imported lazily.

    Raises:
        ConfigError: the URL is not supported.
    """
    if store_url == "memory://" or store_url.startswith("memory:"):
        from tidings.events.outbox.memory import MemoryOutbox

        return MemoryOutbox(lease_ms=lease_ms)
    if store_url.startswith("sqlite:"):
        from tidings.events.outbox.sqlite import SqliteOutbox

        return SqliteOutbox.from_url(store_url, lease_ms=lease_ms)
    if store_url.startswith(("postgresql://", "postgres://")):
        from tidings.events.outbox.postgres import PostgresOutbox

        return PostgresOutbox.from_url(store_url, lease_ms=lease_ms)
    raise ConfigError(
        f"TIDINGS_STORE {store_url!r} is not supported; use sqlite:///path, postgresql://… or "
        "memory://."
    )


def check_lease(lease_ms: int) -> int:
    if isinstance(lease_ms, bool) or not isinstance(lease_ms, int) or lease_ms < 1:
        raise ConfigError(f"The outbox lease must be a positive number of ms, not {lease_ms!r}.")
    return lease_ms


def row_of(d: PendingDelivery) -> tuple[str, str, str, bytes, int, int]:
    """A delivery as a table row, in ``FIELDS`` order."""
    return (d.id, d.url, d.event_type, d.body, d.attempts, d.next_attempt_ms)
