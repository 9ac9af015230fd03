"""Local fan-out: which of this node's connections subscribe to a channel, and handing them
what the broker delivers (spec §8)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from tidings.broker.base import Delivery
from tidings.core.ids import ulid_time_ms
from tidings.hub.connection import Subscription
from tidings.hub.metrics import NodeMetrics
from tidings.hub.outbound import Batch, Frame

__all__ = ["Fanout", "Receiver"]


class Receiver(Protocol):
    """What the fan-out hands frames to: a ``Connection``, or what stands in for one while its
    subscription resumes (``hub/recovery.py``)."""

    id: str
    last_activity: float

    @property
    def subscriptions(self) -> dict[str, Subscription]: ...

    def send_many(self, frames: Sequence[Frame]) -> None: ...


class Fanout:
    """Channel → local subscribers. Only the hub's subscription code changes it."""

    def __init__(self, metrics: NodeMetrics | None = None) -> None:
        self._channels: dict[str, dict[str, Receiver]] = {}  # channel -> conn ID -> receiver
        self._corked: dict[Receiver, list[Frame]] | None = None
        self._metrics = metrics if metrics is not None else NodeMetrics("local")
        self.subscriptions = 0  # local (channel, connection) pairs, for the gauge

    @property
    def channels(self) -> int:
        """Channels with at least one local subscriber."""
        return len(self._channels)

    def add(self, channel: str, conn: Receiver) -> None:
        local = self._channels.setdefault(channel, {})
        if conn.id not in local:
            self.subscriptions += 1
        local[conn.id] = conn

    def holds(self, channel: str, receiver: Receiver) -> bool:
        local = self._channels.get(channel)
        return local is not None and local.get(receiver.id) is receiver

    def replace(self, channel: str, old: Receiver, new: Receiver) -> bool:
        """Put ``new`` in ``old``'s place, unless ``old`` was removed meanwhile."""
        local = self._channels.get(channel)
        if local is None or local.get(old.id) is not old:
            return False
        local[old.id] = new
        return True

    def remove(self, channel: str, conn: Receiver) -> bool:
        """Stop delivering ``channel`` to ``conn``; True when no local subscriber is left."""
        local = self._channels.get(channel)
        if local is None:
            return False
        if local.pop(conn.id, None) is not None:
            self.subscriptions -= 1
        if local:
            return False
        del self._channels[channel]
        return True

    def has_subscribers(self, channel: str) -> bool:
        return channel in self._channels

    def cork(self) -> None:
        """Until ``uncork``, hold the frames of connections subscribed to several channels, so
        that what several channels send one of them in this turn leaves in one write. A
        connection in one channel gets at most one batch per turn (its lane's), so it is
        written at once and pays nothing."""
        if self._corked is None:
            self._corked = {}

    def uncork(self) -> None:
        """Write what ``cork`` held, each connection's frames in the order they came."""
        corked, self._corked = self._corked, None
        if corked:
            for conn, frames in corked.items():
                conn.send_many(frames)

    def deliver(self, channel: str, deliveries: Sequence[Delivery]) -> None:
        """Called by the broker in channel order. Never blocks."""
        local = self._channels.get(channel)
        if not local:
            return
        frames = Batch([Frame(d.payload, d.exclude) for d in deliveries])
        # only an excluded sender that subscribes here needs a list of its own; a publisher that
        # is not subscribed (the usual chat client posting to a room) changes nothing
        skip = {f.exclude for f in frames if f.exclude is not None and f.exclude in local}
        now = time.monotonic()  # outbound frames count as activity for the idle timeout
        messages = self._time(deliveries)
        if any(d.observe_key is not None for d in deliveries):
            self._deliver_observed(channel, local, deliveries, frames, now)
            return
        corked = self._corked
        if not skip and corked is None:
            for conn in local.values():
                conn.last_activity = now
                conn.send_many(frames)
        else:
            for conn in list(local.values()):
                conn.last_activity = now
                mine = [f for f in frames if f.exclude != conn.id] if conn.id in skip else frames
                if corked is None or len(conn.subscriptions) < 2:
                    conn.send_many(mine)
                elif (held := corked.get(conn)) is None:
                    corked[conn] = mine  # the shared batch, copied only if more comes
                elif isinstance(held, Batch):
                    corked[conn] = [*held, *mine]
                else:
                    held.extend(mine)
        metrics = self._metrics
        if messages:
            metrics.delivered_messages.inc(messages * len(local))
        if messages < len(frames):
            metrics.delivered_events.inc((len(frames) - messages) * len(local))

    def _time(self, deliveries: Sequence[Delivery]) -> int:
        """Observe each message's publish → socket latency; returns how many messages there are.

        Message frames start with their ULID (``{"id":"…``), whose time is when the publishing
        turn minted it: that gives the latency without carrying a timestamp between nodes."""
        now = time.time() * 1000
        observe = self._metrics.publish_delivery.observe
        messages = 0
        for d in deliveries:
            if d.payload.startswith(b'{"id":"'):
                messages += 1
                observe(max(0.0, now - ulid_time_ms(d.payload[7:17])) / 1000)
        return messages

    def _deliver_observed(
        self,
        channel: str,
        local: dict[str, Receiver],
        deliveries: Sequence[Delivery],
        frames: list[Frame],
        now: float,
    ) -> None:
        """A batch holding storage updates: each goes only to subscribers allowed to observe
        its key (spec §11), the rest as usual. Counted per frame actually sent."""
        sent = messages = 0
        for conn in list(local.values()):
            sub = conn.subscriptions.get(channel)
            if sub is None:
                continue
            perms = sub.permissions
            mine = [
                frame
                for frame, delivery in zip(frames, deliveries, strict=True)
                if frame.exclude != conn.id
                and (
                    delivery.observe_key is None or perms.can_observe(channel, delivery.observe_key)
                )
            ]
            if mine:
                conn.last_activity = now
                conn.send_many(mine)
                sent += len(mine)
                messages += sum(1 for f in mine if f.payload.startswith(b'{"id":"'))
        if messages:
            self._metrics.delivered_messages.inc(messages)
        if sent > messages:
            self._metrics.delivered_events.inc(sent - messages)
