"""``EventBus``: where the hub reports backend events (spec §17).

Shape:

* ``emit`` is synchronous and never waits: it encodes the §17.1 envelope once and appends one
  ``PendingDelivery`` per endpoint that accepts the type to an in-memory buffer.
* A background *flush task* moves the buffer into the outbox, everything buffered in one
  ``Outbox.add`` (so a burst of emits costs one durable write), then wakes the dispatcher.
* The buffer is bounded: past ``max_buffer`` deliveries (the outbox is down, or far slower than
  the hub) the oldest are dropped, counted and logged; the hub is never slowed down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson

from tidings import HOTSOCK_PROTOCOL_VERSION, __version__
from tidings.core.ids import new_ulid
from tidings.events.outbox import Outbox, PendingDelivery
from tidings.events.webhooks import WebhookDispatcher, WebhookEndpoint

__all__ = ["DEFAULT_MAX_BUFFER", "EventBus"]

logger = logging.getLogger(__name__)

#: Deliveries buffered before the oldest are dropped.
DEFAULT_MAX_BUFFER: Final = 100_000
# Deliveries per Outbox.add call: bounds one transaction while a large backlog is written.
_MAX_BATCH: Final = 5_000
# Seconds between drop warnings, so a long outage logs a line now and then, not per event.
_DROP_LOG_INTERVAL: Final = 10.0


class EventBus:
    """Turns hub events into webhook deliveries.

    Call ``await start()`` before events should flow (events emitted earlier are kept in the
    buffer) and ``await aclose()`` at shutdown, after the hub has emitted its last events. When
    no endpoint is configured, ``enabled`` is false and every method does nothing.

    Attributes:
        dispatcher: the dispatcher sending the outbox's deliveries (None when disabled).
        dropped: deliveries lost before reaching the outbox (buffer overflow, an envelope that
            cannot be encoded, emits after ``aclose``).
    """

    def __init__(
        self,
        *,
        endpoints: Sequence[WebhookEndpoint],
        outbox: Outbox | None,
        dispatcher: WebhookDispatcher | None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        retry_delay: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Assemble a bus; ``build_event_bus`` is the usual way to get one.

        Args:
            endpoints: where events go; empty disables the bus.
            outbox: where deliveries are stored, not yet open (``start`` opens and ``aclose``
                closes it); required when there are endpoints.
            dispatcher: sends the outbox's deliveries; required when there are endpoints.
            max_buffer: deliveries held in memory before the oldest are dropped.
            retry_delay: seconds between attempts to write the buffer while the outbox fails.
            clock: Unix time in seconds; replaced in tests.
        """
        self._endpoints = tuple(endpoints)
        if self._endpoints and (outbox is None or dispatcher is None):
            raise ValueError("an EventBus with endpoints needs an outbox and a dispatcher")
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        self._outbox = outbox
        self.dispatcher = dispatcher
        self._max_buffer = max_buffer
        self._retry_delay = retry_delay
        self._clock = clock
        self._buffer: deque[PendingDelivery] = deque()  # emitted, not yet in the outbox
        self._wakeup = asyncio.Event()  # set when the buffer gains deliveries or closing begins
        self._flush_task: asyncio.Task[None] | None = None
        self._state = "new"  # new -> started -> closing -> closed
        self._base_metadata = {
            "hotsockVersion": HOTSOCK_PROTOCOL_VERSION,
            "tidingsVersion": __version__,
        }
        self._last_drop_log = float("-inf")
        self.dropped = 0

    # Public methods

    @property
    def enabled(self) -> bool:
        """Whether any endpoint is configured; when false the hub may skip building events."""
        return bool(self._endpoints)

    @property
    def buffered(self) -> int:
        """Deliveries emitted but not yet written to the outbox."""
        return len(self._buffer)

    def counters(self) -> dict[str, int]:
        """Webhook delivery counters for ``/metrics``; empty when no endpoint is configured."""
        if self.dispatcher is None:
            return {}
        return {
            "webhooks_delivered": self.dispatcher.delivered,
            "webhook_attempts_failed": self.dispatcher.failed_attempts,
            "webhooks_dropped": self.dropped + self.dispatcher.dropped,
        }

    def wants(self, event_type: str) -> bool:
        """Whether some endpoint receives ``event_type``; when false, ``emit`` would do nothing."""
        return any(endpoint.accepts(event_type) for endpoint in self._endpoints)

    def emit(
        self,
        type: str,
        data_type: str,
        data: dict[str, Any],
        metadata: Mapping[str, str | None] | None = None,
    ) -> None:
        """Queue one event for every endpoint that receives its type. Never blocks or raises.

        Must be called on the event loop's thread. Delivery is at-least-once and unordered.

        Args:
            type: the envelope's ``type``, e.g. ``"hotsock.subscribed"``.
            data_type: the envelope's ``dataType``, e.g. ``"subscription"``.
            data: the envelope's ``data``; encoded now, so later changes to it are not seen.
            metadata: entries added to ``metadata`` after ``hotsockVersion`` and
                ``tidingsVersion`` (which they cannot replace); None values are left out, so
                optional fields such as ``connectionId`` may be passed as None.
        """
        urls = [endpoint.url for endpoint in self._endpoints if endpoint.accepts(type)]
        if not urls:
            return
        if self._state in ("closing", "closed"):
            self._count_dropped(len(urls), "the event bus is closed")
            return
        meta = dict(self._base_metadata)
        if metadata:
            for key, value in metadata.items():
                if value is not None and key not in self._base_metadata:
                    meta[key] = value
        envelope = {
            "source": "hotsock.v1",
            "type": type,
            "metadata": meta,
            "data": data,
            "dataType": data_type,
        }
        try:
            body = orjson.dumps(envelope)
        except orjson.JSONEncodeError:
            logger.exception("! %s event cannot be encoded as JSON; dropped", type)
            self.dropped += len(urls)
            return
        now_ms = int(self._clock() * 1000)
        for url in urls:
            self._buffer.append(PendingDelivery(new_ulid(now_ms), url, type, body, 0, now_ms))
        overflow = len(self._buffer) - self._max_buffer
        if overflow > 0:
            for _ in range(overflow):
                self._buffer.popleft()
            self._count_dropped(overflow, f"more than {self._max_buffer} are waiting")
        self._wakeup.set()

    async def start(self) -> None:
        """Open the outbox and start writing to it and sending from it. Idempotent.

        Raises:
            StoreError: the outbox could not be opened (nothing was started).
        """
        if self._state != "new" or not self._endpoints:
            return
        assert self._outbox is not None and self.dispatcher is not None  # checked in __init__
        await self._outbox.open()
        self._state = "started"
        self._flush_task = asyncio.create_task(self._flush_loop(), name="tidings-event-flush")
        self._flush_task.add_done_callback(_log_crash)
        await self.dispatcher.start()

    async def aclose(self) -> None:
        """Write the buffer to the outbox, stop the dispatcher and close the outbox.

        Pending deliveries stay in the outbox for the next start. Events emitted from now on
        are dropped. Idempotent.
        """
        if self._state in ("closing", "closed"):
            return
        started = self._state == "started"
        self._state = "closing"
        if started:
            assert self._outbox is not None and self.dispatcher is not None
            self._wakeup.set()
            try:
                if self._flush_task is not None:
                    await asyncio.gather(self._flush_task, return_exceptions=True)
                await self.dispatcher.aclose()
            finally:
                await self._outbox.aclose()
        elif self._buffer:
            self._count_dropped(len(self._buffer), "the event bus was never started")
            self._buffer.clear()
        self._state = "closed"

    # Private methods

    async def _flush_loop(self) -> None:
        outbox, dispatcher = self._outbox, self.dispatcher
        assert outbox is not None and dispatcher is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            closing = self._state != "started"
            while self._buffer:
                take = min(len(self._buffer), _MAX_BATCH)
                batch = [self._buffer.popleft() for _ in range(take)]
                try:
                    await outbox.add(batch)
                except Exception as exc:
                    if closing:
                        self._count_dropped(len(batch) + len(self._buffer), f"outbox: {exc}")
                        self._buffer.clear()
                        return
                    logger.warning("! webhook outbox unavailable, %d events wait: %s", take, exc)
                    # Back in front, in order; the cap still applies to what arrived meanwhile.
                    self._buffer.extendleft(reversed(batch))
                    overflow = len(self._buffer) - self._max_buffer
                    for _ in range(max(0, overflow)):
                        self._buffer.popleft()
                    if overflow > 0:
                        self._count_dropped(overflow, f"more than {self._max_buffer} are waiting")
                    await asyncio.sleep(self._retry_delay)
                    closing = self._state != "started"
                    continue
                dispatcher.wake({delivery.url for delivery in batch})
            if closing or self._state != "started":
                return

    def _count_dropped(self, count: int, why: str) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
            self._last_drop_log = now
            logger.warning(
                "! webhook events dropped: %s (%d dropped since start)", why, self.dropped
            )


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.critical(
            "! the event bus flush task crashed; events stay in memory",
            exc_info=task.exception(),
        )
