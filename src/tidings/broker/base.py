"""The ``Broker`` interface: moves channel messages between nodes and holds the state the nodes
share: "first use wins" claims, presence members and subscription counts (spec §6.4, §7, §20).
The hub does the local fan-out; a broker never touches connections.

One backend object covers both roles because both live in the same place (one process, or one
Redis): splitting them would only add a second URL and a second connection pool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from tidings.core.presence import Change

__all__ = [
    "BrokerStats",
    "Broker",
    "ControlFn",
    "DeliverFn",
    "Delivery",
    "MAX_CLAIM_TTL_MS",
    "Minter",
    "PresenceUpdate",
    "ReapedFn",
    "ServeFn",
]


MAX_CLAIM_TTL_MS = 10_000 * 365 * 86_400_000
"""The longest ``claim_once`` lifetime (10,000 years, in ms): longer than any valid token's, and
far inside what Redis's ``PX`` accepts (a signed 64-bit millisecond instant)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One channel message as it travels between nodes."""

    payload: bytes  # the complete JSON text of the frame subscribers receive
    exclude: str | None = None  # connection ID that must not receive it (sender without echo)
    # a storage update goes only to subscribers allowed to observe this key (spec §11)
    observe_key: str | None = None


@dataclass(slots=True)
class BrokerStats:
    """Figures a broker may expose as ``stats`` for ``/metrics`` (read at scrape time)."""

    round_trips: int = 0  # commands sent to the broker's server
    round_trip_seconds: float = 0.0  # total time spent waiting for them
    reconnects: int = 0  # times the subscriber connection was re-established


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    """What a presence join or leave changed (spec §7)."""

    change: Change
    member: dict[str, Any] | None  # the member added, updated or removed (None for NONE)
    members: list[dict[str, Any]]  # the channel's members after the change, in join order


DeliverFn = Callable[[str, Sequence[Delivery]], None]
"""Called by the broker on every node with a channel and its messages, in channel order."""

ServeFn = Callable[[bytes], Awaitable[bytes]]
"""Answers a request another node forwarded for a connection this node holds."""

ControlFn = Callable[[bytes], Awaitable[bytes]]
"""Runs a cluster-wide command (``Broker.broadcast``) on this node and returns its answer."""

ReapedFn = Callable[[str, "PresenceUpdate | None", "int | None"], Awaitable[None]]
"""Told, per channel, what removing a dead node changed: (channel, presence update or None,
new subscription count or None), so the hub can announce it."""

Minter = Callable[[int], str]
"""Returns the channel's next message ID (a ULID) for a clock reading in Unix milliseconds."""


class Broker(Protocol):
    """At-most-once delivery to every interested node, preserving per-channel order."""

    node_id: str
    """This node's name in the cluster (shown by the moderation API)."""

    async def start(
        self,
        deliver: DeliverFn,
        *,
        serve: ServeFn | None = None,
        reaped: ReapedFn | None = None,
        control: ControlFn | None = None,
    ) -> None:
        """Begin delivering to ``deliver``; answer forwarded requests with ``serve`` and
        broadcast commands with ``control``; report dead nodes' removed state to ``reaped``.
        Call once, before any other method."""
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

    def publish_now(self, channel: str, build: Callable[[Minter], Sequence[Delivery]]) -> bool:
        """Take ``channel``'s publishing turn, mint with ``build`` and deliver what it returns,
        all without waiting, when this broker can (one node: nobody else mints the channel's
        IDs); return True then. Return False, without calling ``build``, when the turn needs
        ``ordering``. The answer is the same for every call, so a False may be remembered.
        Callers use it only while nothing of theirs is in ``ordering`` for ``channel``."""
        ...

    async def claim_once(self, key: str, value: str, ttl_ms: int) -> str | None:
        """Record ``key`` → ``value`` for ``ttl_ms`` unless ``key`` is already held.
        ``ttl_ms`` is clamped to 1 … ``MAX_CLAIM_TTL_MS``.

        Returns None when this call claimed the key, else the value stored by the first claim.
        Used for ``singleUse`` token IDs and publish ``deduplicationId``s, cluster-wide.
        """
        ...

    async def release(self, key: str, value: str) -> None:
        """Drop the claim on ``key`` if it still holds ``value`` (the claimed work failed, so a
        retry must be able to claim it again). Idempotent."""
        ...

    async def presence_join(
        self, channel: str, holder: str, uid: str, umd: Any, *, max_bytes: int
    ) -> PresenceUpdate:
        """Add subscription ``holder`` (a connection ID) of ``uid`` to a presence channel.

        Raises:
            ProtocolError: ``PRESENCE_CHANNEL_CAPACITY_REACHED`` when a new member or a changed
                umd would push the members' serialized size over ``max_bytes``; nothing changed.
        """
        ...

    async def presence_leave(self, channel: str, holder: str, uid: str) -> PresenceUpdate:
        """Remove subscription ``holder``; REMOVED when it was the uid's last one. Idempotent."""
        ...

    async def presence_members(self, channel: str) -> list[dict[str, Any]]:
        """The channel's members in join order (``[]`` when none)."""
        ...

    async def count_add(self, channel: str, delta: int) -> int:
        """Change the channel's ``subscriptionsCount`` by ``delta``; return the new count."""
        ...

    async def count(self, channel: str) -> int:
        """The channel's ``subscriptionsCount`` across all nodes."""
        ...

    async def claim_user_connection(self, uid: str, limit: int) -> bool:
        """Count one more live connection of ``uid`` if fewer than ``limit`` are live across
        all nodes; False (nothing counted) at the limit. Atomic across nodes. A dead node's
        connections stop counting once it is reaped.

        Raises:
            BrokerUnavailable: the broker cannot be reached.
        """
        ...

    async def release_user_connection(self, uid: str) -> None:
        """Undo one successful ``claim_user_connection`` of ``uid``."""
        ...

    async def register_connection(self, connection_id: str) -> None:
        """Record that this node holds ``connection_id`` (for requests reaching other nodes)."""
        ...

    async def forget_connection(self, connection_id: str) -> None:
        """The connection is gone. Idempotent."""
        ...

    async def forward(self, connection_id: str, request: bytes) -> bytes | None:
        """Have the node holding ``connection_id`` answer ``request`` (through its ``serve``).
        None when no live node holds it; raises when the holder does not answer in time."""
        ...

    async def broadcast(self, command: bytes) -> list[bytes]:
        """Have every live node, this one included, run ``command`` through its ``control``
        and return their answers, one per node that has a ``control``, in no set order.

        Raises:
            BrokerUnavailable: the broker is unreachable, or a live node did not answer in
                time (it may still run the command: commands must be idempotent).
        """
        ...

    async def aclose(self) -> None:
        """Stop delivering and release resources. Idempotent."""
        ...
