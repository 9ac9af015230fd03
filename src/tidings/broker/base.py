"""The ``Broker`` interface: moves channel messages between nodes and holds cluster-wide
"first use wins" claims (spec §20). The hub does the local fan-out; a broker never touches
connections.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Broker", "Delivery", "DeliverFn", "Minter"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One channel message as it travels between nodes."""

    payload: bytes  # the complete JSON text of the frame subscribers receive
    exclude: str | None = None  # connection ID that must not receive it (sender without echo)


DeliverFn = Callable[[str, Sequence[Delivery]], None]
"""Called by the broker on every node with a channel and its messages, in channel order."""

Minter = Callable[[int], str]
"""Returns the channel's next message ID (a ULID) for a clock reading in Unix milliseconds."""


class Broker(Protocol):
    """At-most-once delivery to every interested node, preserving per-channel order."""

    async def start(self, deliver: DeliverFn) -> None:
        """Begin delivering to ``deliver``. Call once, before any other method."""
        ...

    async def subscribe(self, channel: str) -> None:
        """Declare that this node has local subscribers on ``channel``. Idempotent."""
        ...

    async def unsubscribe(self, channel: str) -> None:
        """Declare that this node has no more local subscribers on ``channel``. Idempotent."""
        ...

    def ordering(self, channel: str) -> AbstractAsyncContextManager[Minter]:
        """Hold ``channel``'s publishing turn: inside the block this node alone mints the
        channel's IDs (strictly above every ID minted before, on any node) and publishes them,
        so ID order is delivery order everywhere. Callers keep the block short: mint, store,
        ``publish``."""
        ...

    async def publish(self, channel: str, deliveries: Sequence[Delivery]) -> None:
        """Hand ``deliveries`` to every node subscribed to ``channel`` (this one included), in
        order. Two calls for the same channel from one node are delivered in call order."""
        ...

    async def claim_once(self, key: str, value: str, ttl_ms: int) -> str | None:
        """Record ``key`` → ``value`` for ``ttl_ms`` unless ``key`` is already held.

        Returns None when this call claimed the key, else the value stored by the first claim.
        Used for ``singleUse`` token IDs and publish ``deduplicationId``s, cluster-wide.
        """
        ...

    async def release(self, key: str, value: str) -> None:
        """Drop the claim on ``key`` if it still holds ``value`` (the claimed work failed, so a
        retry must be able to claim it again). Idempotent."""
        ...

    async def aclose(self) -> None:
        """Stop delivering and release resources. Idempotent."""
        ...
