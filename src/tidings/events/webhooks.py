"""Webhook endpoints and the dispatcher that POSTs outbox deliveries to them (spec §17.3).

Shape:

* One **lane** per endpoint. A lane claims only its own endpoint's due deliveries
  (``Outbox.due(url=…)``) and has its own bound on requests in flight, so a slow or dead endpoint
  fills only its own lane: other endpoints' deliveries never wait behind it.
* A lane claims no more deliveries than it has free slots, so everything it claims is being sent
  right away and finishes well within the outbox lease.
* Outcomes: any 2xx settles the delivery (``done``, batched across lanes: one write per burst);
  anything else — another status, a redirect (never followed), a refused connection, no answer
  within ``timeout`` — reschedules it after the next back-off step, and past the last step it is
  dropped and logged.
* The lanes wake when the bus adds deliveries, when a slot frees, when a retry they scheduled
  comes due, and every ``poll_interval`` (deliveries added by other nodes, expired leases).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp

from tidings import __version__
from tidings.errors import ConfigError
from tidings.events.outbox import Outbox, PendingDelivery
from tidings.sdk.webhooks import sign, signature_header

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_TIMEOUT",
    "WebhookDispatcher",
    "WebhookEndpoint",
]

logger = logging.getLogger(__name__)

#: Seconds to wait before each retry (spec §17.3); after the last one a delivery is dropped, so a
#: delivery is attempted ``len(DEFAULT_BACKOFF) + 1`` times.
DEFAULT_BACKOFF: Final = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)
#: Seconds an endpoint has to answer one POST (spec §17.3).
DEFAULT_TIMEOUT: Final = 10.0
#: Requests in flight at once, per endpoint.
DEFAULT_CONCURRENCY: Final = 16

_USER_AGENT: Final = f"tidings/{__version__}"


@dataclass(frozen=True)
class WebhookEndpoint:
    """Where backend events go, and how they are signed.

    Attributes:
        url: an ``http://`` or ``https://`` URL; each event is POSTed to it.
        secrets: one signing secret, or two during a rotation (each delivery then carries both
            signatures). ``whsec_<base64>`` secrets are Base64-decoded; others are used as UTF-8.
        types: the event ``type``s this endpoint receives; None receives every type.

    Raises:
        ConfigError: the URL, a secret or the type list is invalid.
    """

    url: str
    secrets: tuple[str, ...] = field(repr=False)
    types: frozenset[str] | None = None

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"Webhook URL {self.url!r} must be an http:// or https:// URL.")
        if isinstance(self.secrets, str):
            raise ConfigError("Webhook secrets must be a tuple of one or two strings.")
        object.__setattr__(self, "secrets", tuple(self.secrets))
        if not 1 <= len(self.secrets) <= 2:
            raise ConfigError(
                f"Webhook {_redact(self.url)} needs one signing secret, or two during a rotation."
            )
        for secret in self.secrets:
            sign(secret, "check", 0, b"")  # raises ConfigError for an empty or bad whsec_ secret
        if self.types is not None:
            if isinstance(self.types, str):
                raise ConfigError("Webhook types must be a set of event type names.")
            object.__setattr__(self, "types", frozenset(self.types))
            if not self.types:
                raise ConfigError(
                    f"Webhook {_redact(self.url)} accepts no event type; leave types unset to "
                    "receive them all."
                )

    def accepts(self, event_type: str) -> bool:
        """Whether events of ``event_type`` go to this endpoint."""
        return self.types is None or event_type in self.types


@dataclass(eq=False)
class _Lane:
    """One endpoint's share of the dispatcher."""

    endpoint: WebhookEndpoint
    label: str  # the URL without query or credentials, for logs
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # Deliveries being sent: id -> (task, delivery).
    inflight: dict[str, tuple[asyncio.Task[None], PendingDelivery]] = field(default_factory=dict)
    # Retry times (Unix ms) this lane scheduled, so it wakes for them without polling.
    retry_at: list[int] = field(default_factory=list)
    # Deliveries whose send was cancelled at shutdown: their leases are released.
    interrupted: list[PendingDelivery] = field(default_factory=list)
    outbox_failing: bool = False  # the last claim failed (logged once per outage)


class WebhookDispatcher:
    """Sends the outbox's due deliveries to their endpoints until closed.

    Call ``await start()`` once the outbox is open, ``wake()`` after adding deliveries, and
    ``await aclose()`` before closing the outbox. Deliveries for URLs that are not among
    ``endpoints`` stay in the outbox untouched (another node, or a later configuration, may own
    them). Every node sharing an outbox must configure the same endpoints and secrets.

    Attributes:
        delivered: deliveries answered with a 2xx.
        failed_attempts: attempts that failed (each rescheduled or dropped).
        dropped: deliveries given up after the last back-off step.
    """

    def __init__(
        self,
        outbox: Outbox,
        endpoints: Sequence[WebhookEndpoint],
        *,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        timeout: float = DEFAULT_TIMEOUT,
        concurrency: int = DEFAULT_CONCURRENCY,
        poll_interval: float = 1.0,
        drain_timeout: float = 5.0,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Configure (do not start) a dispatcher.

        Args:
            outbox: where deliveries are claimed and settled; opened by the caller.
            endpoints: the configured endpoints; their URLs must be distinct.
            backoff: seconds before each retry; the delivery is dropped after the last.
            timeout: seconds one POST may take, connecting included.
            concurrency: POSTs in flight at once per endpoint.
            poll_interval: seconds between looks at the outbox when nothing woke a lane.
            drain_timeout: seconds ``aclose()`` lets POSTs in flight finish before cancelling
                them (their deliveries become due again at once).
            session: an ``aiohttp`` session to use (the caller closes it); None makes one.
            clock: Unix time in seconds; replaced in tests.

        Raises:
            ConfigError: two endpoints share a URL, or a number is out of range.
        """
        urls = [endpoint.url for endpoint in endpoints]
        if len(set(urls)) != len(urls):
            raise ConfigError("Two webhook endpoints have the same URL; merge them into one.")
        if any(not delay >= 0 for delay in backoff):
            raise ConfigError("Webhook back-off delays must be non-negative seconds.")
        if not timeout > 0 or concurrency < 1 or not poll_interval > 0 or drain_timeout < 0:
            raise ConfigError(
                "WebhookDispatcher needs timeout > 0, concurrency >= 1, poll_interval > 0 and "
                "drain_timeout >= 0."
            )
        self._outbox = outbox
        self._lanes = [_Lane(endpoint, _redact(endpoint.url)) for endpoint in endpoints]
        self._lanes_by_url = {lane.endpoint.url: lane for lane in self._lanes}
        self._backoff_ms = tuple(round(delay * 1000) for delay in backoff)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_s = timeout
        self._concurrency = concurrency
        # Claim only once this many slots are free: one claim (a database write) per handful of
        # completed requests rather than one per request when a backlog drains.
        self._claim_threshold = max(1, concurrency // 2)
        self._poll_interval = poll_interval
        self._drain_timeout = drain_timeout
        self._clock = clock
        self._session = session
        self._own_session = session is None
        self._settled: list[str] = []  # delivered IDs waiting for one batched done()
        self._settle_wakeup = asyncio.Event()
        self._lanes_finished = False  # the settler's cue to flush one last time and stop
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed_attempts = 0
        # told the duration of every delivery attempt (seconds), for the latency histogram
        self.observe_attempt: Callable[[float], None] | None = None
        self.dropped = 0

    # Public methods

    async def start(self) -> None:
        """Start sending. Idempotent; does nothing without endpoints."""
        if self._task is not None or self._closing or not self._lanes:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # Lanes bound concurrency per endpoint; a shared connector limit would let one
                # endpoint's stuck requests hold connections another endpoint needs.
                connector=aiohttp.TCPConnector(limit=0),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": _USER_AGENT},
            )
        self._task = asyncio.create_task(self._run(), name="tidings-webhook-dispatcher")
        self._task.add_done_callback(_log_crash)

    def wake(self, urls: Iterable[str] | None = None) -> None:
        """Tell the lanes of ``urls`` (None: all) that deliveries were added. Never blocks."""
        if urls is None:
            for lane in self._lanes:
                lane.wakeup.set()
            return
        for url in urls:
            found = self._lanes_by_url.get(url)
            if found is not None:
                found.wakeup.set()

    async def aclose(self) -> None:
        """Stop claiming, give POSTs in flight ``drain_timeout`` to finish, settle what
        finished, release the leases of the rest, and close the HTTP session. Idempotent.

        Undelivered deliveries stay in the outbox for the next start.
        """
        self._closing = True
        self.wake()
        try:
            if self._task is not None:
                await asyncio.gather(self._task, return_exceptions=True)  # a crash was logged
        finally:
            if self._own_session and self._session is not None:
                session, self._session = self._session, None
                await session.close()

    # Private methods

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._settle_loop(), name="tidings-webhook-settle")
            try:
                async with asyncio.TaskGroup() as lanes:
                    for lane in self._lanes:
                        lanes.create_task(
                            self._lane_loop(lane), name=f"tidings-webhook {lane.label}"
                        )
            finally:
                self._lanes_finished = True
                self._settle_wakeup.set()

    async def _lane_loop(self, lane: _Lane) -> None:
        url = lane.endpoint.url
        async with asyncio.TaskGroup() as sends:
            while not self._closing:
                # Cleared before looking: a wake-up that arrives while we look is kept.
                lane.wakeup.clear()
                free = self._concurrency - len(lane.inflight)
                if free >= self._claim_threshold:
                    now_ms = self._now_ms()
                    try:
                        batch = await self._outbox.due(now_ms, free, url=url)
                    except Exception as exc:
                        if not lane.outbox_failing:  # once per outage, not once per poll
                            logger.warning("! webhook outbox unavailable: %s", exc)
                        lane.outbox_failing = True
                        batch = []
                    else:
                        if lane.outbox_failing:
                            logger.info("= webhook outbox available again")
                        lane.outbox_failing = False
                    for delivery in batch:
                        task = sends.create_task(self._send(lane, delivery))
                        lane.inflight[delivery.id] = (task, delivery)
                    if len(batch) == free:
                        continue  # more may be due: claim again as soon as slots free up
                await self._sleep(lane)
            await self._drain(lane)
        # Interrupted sends may or may not have reached the endpoint: make them due now, so the
        # next start (here or on another node) sends them again without waiting for the lease.
        for delivery in lane.interrupted:
            try:
                await self._outbox.retry(delivery.id, self._now_ms(), delivery.attempts)
            except Exception as exc:
                logger.warning("! webhook %s keeps its lease: %s", delivery.id, exc)
        lane.interrupted.clear()

    async def _sleep(self, lane: _Lane) -> None:
        now_ms = self._now_ms()
        # Retries already due wait for the next claim, which a freed slot triggers; keeping them
        # would make a full lane spin here.
        while lane.retry_at and lane.retry_at[0] <= now_ms:
            heapq.heappop(lane.retry_at)
        delay = self._poll_interval
        if lane.retry_at:
            delay = min(delay, (lane.retry_at[0] - now_ms) / 1000)
        try:
            await asyncio.wait_for(lane.wakeup.wait(), delay)
        except TimeoutError:
            pass

    async def _drain(self, lane: _Lane) -> None:
        tasks = [task for task, _ in lane.inflight.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._drain_timeout)
        for task in pending:
            task.cancel()

    async def _send(self, lane: _Lane, delivery: PendingDelivery) -> None:
        started = time.perf_counter()
        try:
            failure = await self._post(lane.endpoint, delivery)
            if self.observe_attempt is not None:
                self.observe_attempt(time.perf_counter() - started)
        except asyncio.CancelledError:
            lane.inflight.pop(delivery.id, None)
            lane.interrupted.append(delivery)
            raise
        lane.inflight.pop(delivery.id, None)
        lane.wakeup.set()  # a slot is free
        if failure is None:
            self.delivered += 1
            self._settled.append(delivery.id)
            self._settle_wakeup.set()
            return
        self.failed_attempts += 1
        attempts = delivery.attempts + 1
        try:
            if attempts > len(self._backoff_ms):
                self.dropped += 1
                logger.warning(
                    "x webhook %s (%s) to %s dropped after %d attempts; last: %s",
                    delivery.id,
                    delivery.event_type,
                    lane.label,
                    attempts,
                    failure,
                )
                await self._outbox.drop(delivery.id)
                return
            delay_ms = self._backoff_ms[attempts - 1]
            logger.info(
                "! webhook %s to %s failed (attempt %d): %s; retrying in %.3g s",
                delivery.id,
                lane.label,
                attempts,
                failure,
                delay_ms / 1000,
            )
            retry_ms = self._now_ms() + delay_ms
            await self._outbox.retry(delivery.id, retry_ms, attempts)
            heapq.heappush(lane.retry_at, retry_ms)
        except Exception as exc:
            # The lease still holds it: it comes back when the lease ends.
            logger.warning("! webhook %s could not be rescheduled: %s", delivery.id, exc)

    async def _post(self, endpoint: WebhookEndpoint, delivery: PendingDelivery) -> str | None:
        """POST one delivery; None on a 2xx, else why it failed."""
        session = self._session
        if session is None:  # closed under us
            return "dispatcher closed"
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(
                endpoint.secrets, delivery.id, timestamp, delivery.body
            ),
            "tidings-event-type": delivery.event_type,
        }
        try:
            async with session.post(
                endpoint.url,
                data=delivery.body,
                headers=headers,
                allow_redirects=False,  # a redirect is a failure: never resend events elsewhere
                timeout=self._timeout,
            ) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except TimeoutError:
            return f"no answer within {self._timeout_s:g} s"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # e.g. a URL aiohttp cannot handle: fail this attempt only
            logger.exception("! webhook %s could not be sent", delivery.id)
            return f"{type(exc).__name__}: {exc}"

    async def _settle_loop(self) -> None:
        """Forget delivered deliveries, one ``done()`` per batch, until the lanes have stopped."""
        while True:
            await self._settle_wakeup.wait()
            self._settle_wakeup.clear()
            last = self._lanes_finished
            ids, self._settled = self._settled, []
            if ids:
                try:
                    await self._outbox.done(ids)
                except Exception as exc:
                    if last:
                        # Their leases end and they are sent again: at-least-once holds.
                        logger.warning(
                            "! %d delivered webhooks stay in the outbox: %s", len(ids), exc
                        )
                        return
                    logger.warning("! webhook outbox unavailable for settling: %s", exc)
                    self._settled[:0] = ids
                    await asyncio.sleep(self._poll_interval)
                    self._settle_wakeup.set()
                    continue
            if last and not self._settled:
                return

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _redact(url: str) -> str:
    """``scheme://host[:port]/path`` of a URL: query strings and user info may hold secrets."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.critical(
            "! the webhook dispatcher crashed; no more webhooks are sent",
            exc_info=task.exception(),
        )
