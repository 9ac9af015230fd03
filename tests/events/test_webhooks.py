"""Backend events end to end: ``EventBus.emit`` → outbox → ``WebhookDispatcher`` → a real
aiohttp receiver on 127.0.0.1 that verifies every signature with the SDK.

Back-off schedules are injected in milliseconds, so retries, outages and drops run fast. The
PostgreSQL test follows the rules of ``test_outbox.py`` (skipped when unreachable unless
``TIDINGS_REQUIRE_SERVICES=1``; own schema, dropped afterwards).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from tests.services import POSTGRES_URL, postgres_schema

import tidings
from tidings.core.ids import is_ulid
from tidings.errors import ConfigError, StoreUnavailable
from tidings.events import (
    EventBus,
    MemoryOutbox,
    PendingDelivery,
    SqliteOutbox,
    WebhookDispatcher,
    WebhookEndpoint,
    build_event_bus,
)
from tidings.sdk import webhooks as sdk

MS = 0.001 * float(os.environ.get("TIDINGS_TESTS_TIMEOUT_FACTOR", "1"))
SECRET = "whsec_" + base64.b64encode(b"tidings-test-webhook-key-0123").decode()
OLD_SECRET = "plain-old-secret"
# Seconds; about 2 s from the first failure to the drop, far longer than any outage below.
FAST = (0.01, 0.02, 0.05, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2)


# A real webhook receiver


class Receiver:
    """An aiohttp server that verifies, records and deduplicates webhooks by ``webhook-id``.

    Behaviour knobs: ``fail_first`` answers that many requests with ``fail_status``; ``hang``
    keeps every request open until ``release`` is set; ``redirect`` answers 307.
    """

    def __init__(self, secrets: Sequence[str] = (SECRET,), *, port: int = 0) -> None:
        self.secrets = list(secrets)
        self.port = port
        self.received: dict[str, dict[str, Any]] = {}  # webhook-id -> verified envelope
        self.attempts: Counter[str] = Counter()  # webhook-id -> requests seen
        self.requests: list[tuple[dict[str, str], bytes]] = []  # raw headers, raw body
        self.rejected = 0
        self.fail_first = 0
        self.fail_status = 500
        self.hang = False
        self.redirect = False
        self.release = asyncio.Event()
        self.hanging = 0  # requests being held open now
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        app.router.add_post("/elsewhere", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening (later connections are refused); a later ``start`` reuses the port."""
        self.release.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.release = asyncio.Event()

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 5000 * MS) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out: {len(self.received)} received, {sum(self.attempts.values())} "
                    f"attempts, {self.rejected} rejected"
                )
            await asyncio.sleep(5 * MS)

    async def wait_received(self, count: int, timeout: float = 5000 * MS) -> None:
        await self.wait_for(lambda: len(self.received) >= count, timeout)

    def sequence_numbers(self) -> list[int]:
        return sorted(int(env["data"]["n"]) for env in self.received.values())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = dict(request.headers)
        self.requests.append((headers, body))
        try:
            envelope = sdk.verify(request.headers, body, self.secrets)
        except sdk.WebhookVerificationError:
            self.rejected += 1
            return web.Response(status=400)
        msg_id = headers["webhook-id"]
        self.attempts[msg_id] += 1
        if self.redirect:
            raise web.HTTPTemporaryRedirect("/elsewhere")
        if self.hang:
            self.hanging += 1
            try:
                await self.release.wait()
            finally:
                self.hanging -= 1
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=self.fail_status)
        self.received.setdefault(msg_id, envelope)
        return web.Response(status=204)


@pytest_asyncio.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    """Factory: ``await receivers(secrets…)`` starts a receiver; all stop afterwards."""
    started: list[Receiver] = []

    async def start(*secrets: str) -> Receiver:
        receiver = Receiver(secrets or (SECRET,))
        await receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.stop()


@pytest_asyncio.fixture
async def buses() -> AsyncIterator[Callable[..., Awaitable[EventBus]]]:
    """Factory: ``await buses(endpoints, store_url, **options)`` builds and starts a bus with
    the fast back-off; every bus is closed afterwards."""
    built: list[EventBus] = []

    async def build(
        endpoints: Sequence[WebhookEndpoint], store_url: str = "memory://", **options: Any
    ) -> EventBus:
        options.setdefault("backoff", FAST)
        options.setdefault("poll_interval", 0.05)
        bus = build_event_bus(endpoints=endpoints, store_url=store_url, **options)
        built.append(bus)
        await bus.start()
        return bus

    yield build
    for bus in built:
        await bus.aclose()


def free_port() -> int:
    """A port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def endpoint(url: str, *secrets: str, types: Sequence[str] | None = None) -> WebhookEndpoint:
    return WebhookEndpoint(
        url, tuple(secrets or (SECRET,)), None if types is None else frozenset(types)
    )


def emit_numbered(bus: EventBus, start: int, stop: int, type: str = "hotsock.connected") -> None:
    for n in range(start, stop):
        bus.emit(type, "connection", {"n": n})


# Envelope and headers


async def test_bus_emit_posts_envelope_with_signed_headers(
    receivers: Callable[..., Awaitable[Receiver]],
    buses: Callable[..., Awaitable[EventBus]],
) -> None:
    """One event is one POST whose body is the §17.1 envelope and whose headers follow §17.3."""
    receiver = await receivers(SECRET)
    bus = await buses([endpoint(receiver.url, SECRET)])
    data = {"channel": "my-channel", "connectionId": "IDnAdd9kIAMCEsQ=", "uid": "1", "umd": None}
    before = int(time.time())
    bus.emit(
        "hotsock.subscribed",
        "subscription",
        data,
        {"channel": "my-channel", "connectionId": None, "hotsockVersion": "spoofed"},
    )
    await receiver.wait_received(1)
    headers, body = receiver.requests[0]
    assert body == orjson.dumps(
        {
            "source": "hotsock.v1",
            "type": "hotsock.subscribed",
            "metadata": {
                "hotsockVersion": tidings.HOTSOCK_PROTOCOL_VERSION,
                "tidingsVersion": tidings.__version__,
                "channel": "my-channel",
            },
            "data": data,
            "dataType": "subscription",
        }
    )
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"tidings/{tidings.__version__}"
    assert headers["tidings-event-type"] == "hotsock.subscribed"
    assert is_ulid(headers["webhook-id"])
    assert before <= int(headers["webhook-timestamp"]) <= time.time() + 1
    # The signature is plain Standard Webhooks HMAC over "{id}.{timestamp}.{body}", with the
    # whsec_ secret Base64-decoded.
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{digest}"
    assert receiver.rejected == 0


async def test_dispatcher_signs_with_both_rotation_secrets(
    receivers: Callable[..., Awaitable[Receiver]],
    buses: Callable[..., Awaitable[EventBus]],
) -> None:
    """During a rotation each delivery carries two signatures; either secret verifies it."""
    receiver = await receivers(OLD_SECRET)  # a receiver still on the old secret
    bus = await buses([endpoint(receiver.url, SECRET, OLD_SECRET)])
    bus.emit("hotsock.connected", "connection", {"n": 0})
    await receiver.wait_received(1)
    headers, body = receiver.requests[0]
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (SECRET, OLD_SECRET):
        assert sdk.verify(headers, body, secret)["data"] == {"n": 0}
    with pytest.raises(sdk.WebhookVerificationError):
        sdk.verify(headers, body, "some-other-secret")


async def test_bus_type_filter_sends_only_accepted_types(
    receivers: Callable[..., Awaitable[Receiver]],
    buses: Callable[..., Awaitable[EventBus]],
) -> None:
    """An endpoint with ``types`` gets only those events; one without gets every event."""
    picky, greedy = await receivers(), await receivers()
    bus = await buses(
        [endpoint(picky.url, types=["hotsock.connected"]), endpoint(greedy.url)],
    )
    assert bus.wants("hotsock.subscribed") and bus.wants("hotsock.connected")
    bus.emit("hotsock.subscribed", "subscription", {"n": 1})
    bus.emit("hotsock.connected", "connection", {"n": 2})
    await greedy.wait_received(2)
    await picky.wait_received(1)
    await asyncio.sleep(100 * MS)
    assert [env["type"] for env in picky.received.values()] == ["hotsock.connected"]
    assert sum(picky.attempts.values()) == 1

    only = build_event_bus(endpoints=[endpoint(picky.url, types=["x"])], store_url="memory://")
    assert only.enabled and not only.wants("hotsock.connected")


# Retries, outages and isolation


async def test_dispatcher_retries_after_http_500_with_stable_id(
    receivers: Callable[..., Awaitable[Receiver]],
    buses: Callable[..., Awaitable[EventBus]],
) -> None:
    """A 5xx is retried after the back-off; every attempt carries the same ``webhook-id``."""
    receiver = await receivers()
    receiver.fail_first = 2
    bus = await buses([endpoint(receiver.url)])
    bus.emit("hotsock.connected", "connection", {"n": 0})
    await receiver.wait_received(1)
    ids = {headers["webhook-id"] for headers, _ in receiver.requests}
    assert len(ids) == 1 and receiver.attempts[ids.pop()] == 3
    assert bus.dispatcher is not None
    assert (bus.dispatcher.failed_attempts, bus.dispatcher.delivered) == (2, 1)


async def test_dispatcher_treats_a_redirect_as_a_failure(
    receivers: Callable[..., Awaitable[Receiver]],
    buses: Callable[..., Awaitable[EventBus]],
) -> None:
    """A 3xx is not followed (events never go elsewhere) and counts as a failed attempt."""
    receiver = await receivers()
    receiver.redirect = True
    bus = await buses([endpoint(receiver.url)])
    bus.emit("hotsock.connected", "connection", {"n": 0})
    await receiver.wait_for(lambda: sum(receiver.attempts.values()) >= 2)
    assert all(headers.get("Host") for headers, _ in receiver.requests)
    assert receiver.received == {}  # /elsewhere would have accepted it
    receiver.redirect = False
    await receiver.wait_received(1)


async def test_dispatcher_retries_after_connection_refused(
    buses: Callable[..., Awaitable[EventBus]],
) -> None:
    """A refused connection is retried; the event arrives once a receiver listens."""
    receiver = Receiver(port=free_port())
    bus = await buses([endpoint(receiver.url)])
    emit_numbered(bus, 0, 3)
    assert bus.dispatcher is not None
    dispatcher = bus.dispatcher
    await receiver.wait_for(lambda: dispatcher.failed_attempts >= 3)
    await receiver.start()
    try:
        await receiver.wait_received(3)
        assert receiver.sequence_numbers() == [0, 1, 2]
    finally:
        await receiver.stop()


async def test_dispatcher_hanging_endpoint_does_not_delay_another(
    receivers: Callable[..., Awaitable[Receiver]],
    buses: Callable[..., Awaitable[EventBus]],
) -> None:
    """While one endpoint holds every request open, another still gets all its events at once."""
    stuck, healthy = await receivers(), await receivers()
    stuck.hang = True
    bus = await buses(
        [endpoint(stuck.url), endpoint(healthy.url)],
        concurrency=2,
        timeout=30.0,  # the stuck requests stay stuck for the whole test
        lease_ms=60_000,
        drain_timeout=0.0,
    )
    emit_numbered(bus, 0, 5)
    await stuck.wait_for(lambda: stuck.hanging == 2)
    emit_numbered(bus, 5, 40)
    started = time.monotonic()
    await healthy.wait_received(40, timeout=2000 * MS)
    assert time.monotonic() - started < 2.0
    assert healthy.sequence_numbers() == list(range(40))
    assert stuck.hanging == 2  # its lane is full; nothing else was sent to it


async def test_dispatcher_delivers_everything_when_receiver_dies_mid_stream(
    tmp_path: Path, buses: Callable[..., Awaitable[EventBus]]
) -> None:
    """Kill the receiver while events flow, keep emitting, restart it on the same port: every
    event arrives (at least once; the receiver deduplicates by ``webhook-id``)."""
    receiver = Receiver()
    await receiver.start()
    try:
        bus = await buses([endpoint(receiver.url)], f"sqlite:///{tmp_path}/t.db")
        for n in range(0, 100, 10):
            emit_numbered(bus, n, n + 10)
            await asyncio.sleep(2 * MS)
        await receiver.wait_received(20)
        await receiver.stop()
        for n in range(100, 200, 10):
            emit_numbered(bus, n, n + 10)
            await asyncio.sleep(5 * MS)
        await asyncio.sleep(50 * MS)  # retries pile up against the closed port
        await receiver.start()
        await receiver.wait_received(200)
        assert receiver.sequence_numbers() == list(range(200))
        assert receiver.rejected == 0
        assert bus.dispatcher is not None and bus.dispatcher.dropped == 0
        assert bus.dispatcher.failed_attempts > 0  # the outage was real
    finally:
        await receiver.stop()


async def test_dispatcher_drops_delivery_after_last_retry(
    receivers: Callable[..., Awaitable[Receiver]],
    buses: Callable[..., Awaitable[EventBus]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After the last back-off step a failing delivery is dropped, logged and forgotten."""
    receiver = await receivers()
    receiver.fail_first = 1_000_000
    db = tmp_path / "t.db"
    bus = await buses([endpoint(receiver.url)], f"sqlite:///{db}", backoff=(0.01, 0.01))
    with caplog.at_level(logging.WARNING, logger="tidings.events"):
        bus.emit("hotsock.connected", "connection", {"n": 0})
        assert bus.dispatcher is not None
        dispatcher = bus.dispatcher
        await receiver.wait_for(lambda: dispatcher.dropped == 1)
    assert list(receiver.attempts.values()) == [3]  # first try + two retries
    assert "dropped after 3 attempts" in caplog.text
    await bus.aclose()
    outbox = SqliteOutbox(db)
    await outbox.open()
    try:
        assert await outbox.count() == 0
    finally:
        await outbox.aclose()


# Restarts and leases


async def test_bus_restart_delivers_events_stored_before_close(
    tmp_path: Path, buses: Callable[..., Awaitable[EventBus]]
) -> None:
    """Events emitted while the receiver is down survive closing the bus: a new bus on the same
    SQLite file delivers all of them."""
    port = free_port()
    url = f"sqlite:///{tmp_path}/tidings.db"
    first = build_event_bus(
        endpoints=[endpoint(f"http://127.0.0.1:{port}/hook")], store_url=url, backoff=FAST
    )
    await first.start()
    emit_numbered(first, 0, 50)
    await first.aclose()  # the receiver never answered
    outbox = SqliteOutbox(tmp_path / "tidings.db")
    await outbox.open()
    try:
        assert await outbox.count() == 50
    finally:
        await outbox.aclose()

    receiver = Receiver(port=port)
    await receiver.start()
    try:
        await buses([endpoint(receiver.url)], url)
        await receiver.wait_received(50)
        assert receiver.sequence_numbers() == list(range(50))
    finally:
        await receiver.stop()


async def test_dispatcher_resends_after_claimer_died_and_lease_expired(
    receivers: Callable[..., Awaitable[Receiver]],
    buses: Callable[..., Awaitable[EventBus]],
    tmp_path: Path,
) -> None:
    """A delivery claimed by a node that died before settling it is sent once its lease ends."""
    receiver = await receivers()
    db = tmp_path / "t.db"
    lease_ms = 400
    dead = SqliteOutbox(db, lease_ms=lease_ms)
    await dead.open()
    delivery = PendingDelivery(
        "01HZAD885RZ308CJM4YK825G65", receiver.url, "hotsock.connected", b'{"data":{"n":7}}'
    )
    await dead.add([delivery])
    claimed_at = time.monotonic()
    now_ms = int(time.time() * 1000)
    (claimed,) = await dead.due(now_ms, 10)
    assert (claimed.id, claimed.next_attempt_ms) == (delivery.id, now_ms + lease_ms)
    await dead.aclose()  # "crashed" without settling

    await buses([endpoint(receiver.url)], f"sqlite:///{db}", lease_ms=lease_ms, timeout=0.2)
    await receiver.wait_received(1)
    assert time.monotonic() - claimed_at >= (lease_ms - 50) / 1000
    assert list(receiver.received) == [delivery.id]


async def test_dispatcher_close_releases_leases_of_requests_in_flight(
    receivers: Callable[..., Awaitable[Receiver]], tmp_path: Path
) -> None:
    """Closing while a request hangs returns promptly and makes that delivery due at once."""
    receiver = await receivers()
    receiver.hang = True
    db = tmp_path / "t.db"
    bus = build_event_bus(
        endpoints=[endpoint(receiver.url)],
        store_url=f"sqlite:///{db}",
        backoff=FAST,
        drain_timeout=0.05,
    )
    await bus.start()
    bus.emit("hotsock.connected", "connection", {"n": 0})
    await receiver.wait_for(lambda: receiver.hanging == 1)
    started = time.monotonic()
    await bus.aclose()
    assert time.monotonic() - started < 1.0
    outbox = SqliteOutbox(db)
    await outbox.open()
    try:
        (released,) = await outbox.due(int(time.time() * 1000), 10)  # not leased for 60 s
        assert released.attempts == 0
    finally:
        await outbox.aclose()


# The bus itself


class CountingOutbox(MemoryOutbox):
    """A memory outbox that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.adds: list[int] = []

    async def add(self, deliveries: Sequence[PendingDelivery]) -> None:
        self.adds.append(len(deliveries))
        await super().add(deliveries)


def counting_bus(url: str, **options: Any) -> tuple[EventBus, CountingOutbox]:
    outbox = CountingOutbox()
    endpoints = [endpoint(url)]
    dispatcher = WebhookDispatcher(outbox, endpoints, backoff=FAST, poll_interval=0.05)
    return EventBus(endpoints=endpoints, outbox=outbox, dispatcher=dispatcher, **options), outbox


async def test_bus_burst_of_emits_is_one_outbox_write(
    receivers: Callable[..., Awaitable[Receiver]],
) -> None:
    """Emits made between two turns of the loop reach the outbox in a single write."""
    receiver = await receivers()
    bus, outbox = counting_bus(receiver.url)
    await bus.start()
    try:
        emit_numbered(bus, 0, 1000)
        assert bus.buffered == 1000  # emit itself never waits for anything
        await receiver.wait_received(1000, timeout=20_000 * MS)
        assert outbox.adds == [1000]
    finally:
        await bus.aclose()


class FlakyOutbox(MemoryOutbox):
    """A memory outbox whose first ``failures`` writes fail like a database outage."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def add(self, deliveries: Sequence[PendingDelivery]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("database is locked")
        await super().add(deliveries)


async def test_bus_keeps_events_while_outbox_writes_fail(
    receivers: Callable[..., Awaitable[Receiver]],
) -> None:
    """Events emitted while the outbox cannot be written wait in the buffer, then all go out."""
    receiver = await receivers()
    outbox = FlakyOutbox(failures=3)
    endpoints = [endpoint(receiver.url)]
    dispatcher = WebhookDispatcher(outbox, endpoints, backoff=FAST, poll_interval=0.05)
    bus = EventBus(endpoints=endpoints, outbox=outbox, dispatcher=dispatcher, retry_delay=0.01)
    await bus.start()
    try:
        emit_numbered(bus, 0, 5)
        await asyncio.sleep(0)
        emit_numbered(bus, 5, 10)
        await receiver.wait_received(10)
        assert receiver.sequence_numbers() == list(range(10))
        assert outbox.failures == 0 and bus.dropped == 0
    finally:
        await bus.aclose()


async def test_bus_full_buffer_drops_oldest(
    receivers: Callable[..., Awaitable[Receiver]],
) -> None:
    """Past ``max_buffer`` the oldest deliveries are dropped and counted; the rest go out."""
    receiver = await receivers()
    bus, _ = counting_bus(receiver.url, max_buffer=3)
    emit_numbered(bus, 0, 5)  # before start: buffered
    assert (bus.buffered, bus.dropped) == (3, 2)
    await bus.start()
    try:
        await receiver.wait_received(3)
        assert receiver.sequence_numbers() == [2, 3, 4]
    finally:
        await bus.aclose()


async def test_bus_emit_unencodable_data_is_dropped_not_raised(
    receivers: Callable[..., Awaitable[Receiver]],
    buses: Callable[..., Awaitable[EventBus]],
) -> None:
    """A payload orjson cannot encode is logged and counted; it never raises into the hub."""
    receiver = await receivers()
    bus = await buses([endpoint(receiver.url)])
    bus.emit("hotsock.connected", "connection", {"bad": object()})
    bus.emit("hotsock.connected", "connection", {"n": 1})
    await receiver.wait_received(1)
    assert bus.dropped == 1
    assert receiver.sequence_numbers() == [1]


async def test_bus_without_endpoints_is_a_no_op(tmp_path: Path) -> None:
    """No endpoint: disabled, nothing opened (no file created), emit returns at once."""
    bus = build_event_bus(endpoints=[], store_url=f"sqlite:///{tmp_path}/never.db")
    assert not bus.enabled and not bus.wants("hotsock.connected")
    await bus.start()
    bus.emit("hotsock.connected", "connection", {"n": 0})
    assert bus.buffered == 0
    await bus.aclose()
    assert not (tmp_path / "never.db").exists()


async def test_bus_emit_after_close_is_dropped(
    receivers: Callable[..., Awaitable[Receiver]],
) -> None:
    """Events emitted after ``aclose`` are counted as dropped, not kept or raised."""
    receiver = await receivers()
    bus, _ = counting_bus(receiver.url)
    await bus.start()
    await bus.aclose()
    bus.emit("hotsock.connected", "connection", {"n": 0})
    assert bus.dropped == 1 and bus.buffered == 0
    await bus.aclose()  # idempotent


# Configuration


def test_webhook_endpoint_validates_its_settings() -> None:
    """Bad URLs, secret counts and secrets are refused with ``ConfigError``; repr hides
    secrets."""
    good = WebhookEndpoint("https://example.com/h", (SECRET,))
    assert SECRET not in repr(good) and good.accepts("anything")
    with pytest.raises(ConfigError, match="http"):
        WebhookEndpoint("ftp://example.com/h", (SECRET,))
    with pytest.raises(ConfigError, match="secret"):
        WebhookEndpoint("https://example.com/h", ())
    with pytest.raises(ConfigError, match="secret"):
        WebhookEndpoint("https://example.com/h", ("a", "b", "c"))
    with pytest.raises(ConfigError):
        WebhookEndpoint("https://example.com/h", ("whsec_***",))
    with pytest.raises(ConfigError, match="types"):
        WebhookEndpoint("https://example.com/h", (SECRET,), frozenset())
    with pytest.raises(ConfigError, match="same URL"):
        build_event_bus(
            endpoints=[good, WebhookEndpoint("https://example.com/h", (OLD_SECRET,))],
            store_url="memory://",
        )
    with pytest.raises(ConfigError, match="lease"):
        build_event_bus(endpoints=[good], store_url="memory://", lease_ms=5000)


# PostgreSQL: several nodes share one outbox


@pytest_asyncio.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A unique schema (created by the outbox), dropped afterwards."""
    async with postgres_schema("webhooks_") as name:
        yield name


@pytest.mark.integration
async def test_postgres_nodes_share_one_outbox_and_send_each_event_once(
    pg_schema: str,
    receivers: Callable[..., Awaitable[Receiver]],
    buses: Callable[..., Awaitable[EventBus]],
) -> None:
    """Two nodes on one PostgreSQL outbox deliver every event of both, each exactly once
    (``FOR UPDATE SKIP LOCKED``), including retries after failures."""
    receiver = await receivers()
    receiver.fail_first = 10
    url = f"{POSTGRES_URL}?schema={pg_schema}"
    nodes = [await buses([endpoint(receiver.url)], url) for _ in range(2)]
    emit_numbered(nodes[0], 0, 60)
    emit_numbered(nodes[1], 60, 120)
    await receiver.wait_received(120, timeout=10_000 * MS)
    assert receiver.sequence_numbers() == list(range(120))
    assert sum(receiver.attempts.values()) == 120 + 10  # no delivery was sent twice at once
