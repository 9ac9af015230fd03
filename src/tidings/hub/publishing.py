"""Publishing (spec §8, §9, §15): each channel's ordered lane, where IDs are minted, duplicates
caught, reactions and storage writes applied, stored messages committed and everything handed
to the broker.

::

    send_client / publish_client / publish_server / reactions / storage ──▶ channel lane
        live-only messages, broker able to publish without waiting (one node):
            at the end of the loop turn, every ready lane in one callback:
            broker.publish_now(channel, mint IDs → frames)
        otherwise one task drains the lane:
            async with broker.ordering(channel) as mint:     the channel's publishing turn
                mint IDs → dedup claims → store.apply_reactions → observers' storage reads
                → store.apply_storage → store.append (group commit) → broker.publish

Either way a lane's messages of one loop turn leave as one batch (one write per subscriber), and
a lane is never in both paths at once, so per-channel order holds.

A stored message's ``deduplicationId`` is recorded by ``store.append`` in the transaction that
stores the message, so it is exactly as durable: a retry after a crash, a restart or a lost
reply is answered with the original ID and stores nothing. An unstored message exists only in
flight, and its ``deduplicationId`` is a broker claim (cluster-wide, released when the message
fails).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from tidings.broker.base import Broker, Delivery, Minter
from tidings.core import protocol
from tidings.core.ids import new_ulid
from tidings.core.json import dumps
from tidings.core.names import validate_data, validate_event
from tidings.core.permissions import Permissions
from tidings.core.requests import ServerPublish
from tidings.errors import UNAVAILABLE, ErrorCode, ProtocolError, StoreError, wire_error
from tidings.hub._common import now_ms, resolve_sent
from tidings.hub.connection import Connection
from tidings.hub.emitter import Emitter
from tidings.hub.fanout import Fanout
from tidings.hub.metrics import NodeMetrics
from tidings.hub.outbound import Frame
from tidings.store.base import DEDUP_WINDOW_MS, MessageRecord, Store

if TYPE_CHECKING:
    from tidings.hub.reactions import ReactionIntent
    from tidings.hub.storage import Storage, StorageIntent

__all__ = [
    "DEDUP_WINDOW_MS",
    "Publication",
    "PublishResult",
    "Publisher",
    "failure_reporter",
    "report_failure",
    "server_publication",
]

log = logging.getLogger("tidings.hub")


@dataclass(slots=True)
class Publication:
    """A message on its way through a channel lane."""

    channel: str
    event: str
    data_json: bytes  # compact JSON of ``data``
    meta_json: bytes | None  # ``meta`` on the socket; None for server messages (spec §5.2)
    uid: str | None
    umd_json: bytes
    store_seconds: int  # 0 not stored, -1 forever
    exclude: str | None  # sender's connection ID when it must not get its own copy
    trigger: str
    connection_id: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    dedup_id: str | None = None  # the server publish's deduplicationId
    emit_event: bool = False  # emit hotsock.messagePublished once delivered
    request_id: str = ""  # ULID of the accepting request (event metadata)
    id: str = ""  # minted when its lane processes it, in the channel's publishing turn, unless
    # set before (a scheduled message's eager ID, spec §14)
    created_ms: int = 0
    reaction: ReactionIntent | None = None  # set on reaction events (spec §12)
    storage: StorageIntent | None = None  # set on storage writes and reads (spec §11)
    # called instead of failing a future when nobody awaits the outcome (WebSocket messages)
    on_failure: Callable[[BaseException], None] | None = None

    @property
    def claims_in_broker(self) -> bool:
        """Whether its ``deduplicationId`` is a broker claim: the store records a stored one."""
        return self.dedup_id is not None and self.store_seconds == 0

    @property
    def live_only(self) -> bool:
        """Nothing to store, claim or apply: only an ID and a delivery."""
        return (
            self.store_seconds == 0
            and self.dedup_id is None
            and self.reaction is None
            and self.storage is None
        )

    @property
    def durable(self) -> bool:
        """Whether the store holds what this publication did once its batch is committed."""
        return self.store_seconds != 0 or self.reaction is not None or self.storage is not None

    def record(self) -> MessageRecord:
        expires = None if self.store_seconds < 0 else self.created_ms + self.store_seconds * 1000
        return MessageRecord(
            id=self.id,
            channel=self.channel,
            event=self.event,
            data=self.data_json.decode(),
            uid=self.uid,
            umd=self.umd_json.decode(),
            created_ms=self.created_ms,
            expires_ms=expires,
            trigger=self.trigger,
            connection_id=self.connection_id,
            source_ip=self.source_ip,
            user_agent=self.user_agent,
            dedup_id=self.dedup_id,
        )


@dataclass(frozen=True, slots=True)
class PublishResult:
    channel: str
    event: str
    id: str  # the message ID (the original one for a deduplicated publish); "" when scheduled
    # without an eager ID
    duplicate: bool = False
    schedule_id: str | None = None  # set when the message was scheduled (spec §14)


# the future is None when nobody awaits the outcome (``Publication.on_failure`` reports it)
Pending = tuple[Publication, "asyncio.Future[PublishResult] | None"]


class _Lane:
    """One channel's FIFO of publications: waiting for the end-of-turn flush (``ready``) or
    drained by one task, never both."""

    __slots__ = ("pending", "ready", "task")

    def __init__(self) -> None:
        self.pending: deque[Pending] = deque()
        self.ready = False
        self.task: asyncio.Task[None] | None = None


class Publisher:
    """Validates, authorises and orders this node's publications."""

    def __init__(
        self,
        *,
        store: Store,
        broker: Broker,
        emitter: Emitter,
        metrics: NodeMetrics | None = None,
        fanout: Fanout | None = None,
    ) -> None:
        self._store = store
        self._broker = broker
        self._emitter = emitter
        self._metrics = metrics if metrics is not None else NodeMetrics("local")
        self._fanout = fanout  # corked during the end-of-turn flush
        self._lanes: dict[str, _Lane] = {}
        self._ready: list[tuple[str, _Lane]] = []  # lanes the end-of-turn flush publishes
        self._flush: asyncio.Handle | None = None
        self._publish_now = True  # False once the broker said it cannot (it never will)
        self.storage: Storage | None = None  # set by the hub; runs storage steps in the lane

    # Public methods

    def publish_client(
        self,
        conn: Connection,
        channel_sent: Any,
        event: Any,
        data: Any,
        *,
        trigger: str = "client.http",
    ) -> asyncio.Future[PublishResult]:
        """Spec §8: validate and authorise a client message, then queue it in its lane.

        Raises ``ProtocolError`` for refusals. The returned future resolves once the message is
        stored (when stored) and handed to the broker.
        """
        _, pub, _ = self.client_publication(conn, channel_sent, event, data, trigger=trigger)
        future = asyncio.get_running_loop().create_future()
        self._enqueue(pub, future)
        return future

    def send_client(self, conn: Connection, channel_sent: Any, event: Any, data: Any) -> None:
        """A client message over the WebSocket: like ``publish_client``, but nobody waits for
        the outcome, so a failure in its lane is reported to the sender as ``hotsock.error``."""
        sent, pub, _ = self.client_publication(
            conn, channel_sent, event, data, trigger="client.websocket"
        )
        pub.on_failure = partial(report_failure, conn, sent)
        self._enqueue(pub, None)

    def publish_server(
        self, request: ServerPublish, *, trigger: str = "server.http"
    ) -> asyncio.Future[PublishResult]:
        """Queue a validated ``POST /publish`` message; no permission applies (spec §15)."""
        return self.enqueue(server_publication(request, trigger=trigger))

    def enqueue(self, pub: Publication) -> asyncio.Future[PublishResult]:
        """Queue a publication in its channel lane; its ID is minted when the lane processes
        it, unless it already has one (an eager ID given when it was scheduled)."""
        future = asyncio.get_running_loop().create_future()
        self._enqueue(pub, future)
        return future

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for the queued publications to finish."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush_ready()
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def client_publication(
        self, conn: Connection, channel_sent: Any, event: Any, data: Any, *, trigger: str
    ) -> tuple[str, Publication, Permissions]:
        """Validate and authorise a client message (spec §8 steps 1-2) without queueing it:
        the channel as sent, the publication, and the permissions that allowed it.

        Raises:
            ProtocolError: the message is refused; ``.channel`` is the name as sent.
        """
        sent, channel = resolve_sent(conn, channel_sent)
        try:
            event = validate_event(event)
            data_json = validate_data(data)
        except ProtocolError as exc:
            exc.channel = sent
            raise
        sub = conn.subscriptions.get(channel)
        perms = sub.permissions if sub is not None else conn.permissions
        policy = perms.publish_policy(channel, event, subscribed=sub is not None)
        if not policy.allowed:
            raise ProtocolError(
                ErrorCode.PUBLISH_PERMISSION_DENIED,
                f"publish of event {event!r} not permitted for channel",
                channel=sent,
            )
        uid, umd_json = (sub.uid, sub.umd_json) if sub is not None else (conn.uid, dumps(conn.umd))
        pub = Publication(
            channel=channel,
            event=event,
            data_json=data_json,
            meta_json=protocol.meta_json(uid, umd_json),
            uid=uid,
            umd_json=umd_json,
            store_seconds=policy.store_seconds,
            exclude=None if policy.echo else conn.id,
            trigger=trigger,
            connection_id=conn.id,
            source_ip=conn.source_ip,
            user_agent=conn.user_agent,
            emit_event=policy.emit_event,
        )
        return sent, pub, perms

    # Private methods

    def _enqueue(self, pub: Publication, future: asyncio.Future[PublishResult] | None) -> None:
        pub.created_ms = now_ms()
        self._metrics.message_in(pub.trigger)
        if pub.emit_event and not pub.request_id:
            pub.request_id = new_ulid(pub.created_ms)
        lane = self._lanes.get(pub.channel)
        if lane is None:
            lane = self._lanes[pub.channel] = _Lane()
        lane.pending.append((pub, future))
        if lane.task is not None or lane.ready:
            return
        if self._publish_now and pub.live_only:
            # no task, no turn: the lane waits for the flush at the end of this loop turn, which
            # publishes every ready lane, so a busy channel's messages still leave as one batch
            lane.ready = True
            self._ready.append((pub.channel, lane))
            if self._flush is None:
                self._flush = asyncio.get_running_loop().call_soon(self._flush_ready)
        else:
            lane.task = asyncio.get_running_loop().create_task(self._run_lane(pub.channel, lane))

    def _flush_ready(self) -> None:
        """Publish each ready lane's live-only head now; the rest (a message to store, say)
        goes on in the lane's task, after it."""
        self._flush = None
        ready, self._ready = self._ready, []
        if self._fanout is not None and len(ready) > 1:
            self._fanout.cork()
        try:
            self._flush_lanes(ready)
        finally:
            if self._fanout is not None:
                self._fanout.uncork()

    def _flush_lanes(self, ready: list[tuple[str, _Lane]]) -> None:
        for channel, lane in ready:
            lane.ready = False
            batch: list[Pending] = []
            pending = lane.pending
            while pending and pending[0][0].live_only:
                batch.append(pending.popleft())
            if batch and not self._publish_batch_now(channel, batch):
                pending.extendleft(reversed(batch))
            if pending:
                lane.task = asyncio.get_running_loop().create_task(self._run_lane(channel, lane))
            elif self._lanes.get(channel) is lane:
                del self._lanes[channel]

    def _publish_batch_now(self, channel: str, batch: list[Pending]) -> bool:
        """Mint, frame and deliver ``batch`` without awaiting; False when the broker cannot."""

        def build(mint: Minter) -> Sequence[Delivery]:
            stamp = now_ms()
            deliveries = []
            for pub, _ in batch:
                pub.id = pub.id or mint(stamp)
                deliveries.append(
                    Delivery(
                        protocol.message_frame(
                            pub.id, pub.event, channel, pub.data_json, pub.meta_json
                        ),
                        pub.exclude,
                    )
                )
            return deliveries

        try:
            if not self._broker.publish_now(channel, build):
                self._publish_now = False
                return False
        except Exception as exc:
            log.exception("! publishing on %s failed; live delivery lost", channel)
            for pub, future in batch:
                _fail(pub, future, exc)
            return True
        self._delivered(batch)
        return True

    def _delivered(self, live: list[Pending]) -> None:
        for pub, future in live:
            if future is not None and not future.done():
                future.set_result(PublishResult(pub.channel, pub.event, pub.id))
            if pub.emit_event and self._emitter.enabled:
                if pub.storage is not None and self.storage is not None:
                    self.storage.announce(pub)
                elif pub.reaction is not None and pub.reaction.stored is not None:
                    self._emitter.reaction(pub.event, pub.reaction.stored)
                else:
                    self._emitter.published(pub)

    async def _run_lane(self, channel: str, lane: _Lane) -> None:
        try:
            while lane.pending:
                batch = list(lane.pending)
                lane.pending.clear()
                await self._process_batch(channel, batch)
        finally:
            lane.task = None
            if not lane.pending and self._lanes.get(channel) is lane:
                del self._lanes[channel]

    async def _process_batch(self, channel: str, batch: list[Pending]) -> None:
        try:
            async with self._broker.ordering(channel) as mint:
                await self._publish_batch(channel, batch, mint)
        except Exception as exc:  # the turn itself failed (broker unreachable)
            if isinstance(exc, UNAVAILABLE):
                log.warning("! publishing on %s refused: %s", channel, exc)
            else:
                log.exception("! publishing turn failed on %s", channel)
            await self._fail_all([(p, f) for p, f in batch if f is None or not f.done()], exc)

    async def _publish_batch(self, channel: str, batch: list[Pending], mint: Minter) -> None:
        live = await self._claim_dedup(batch, mint)
        live = await self._apply_reactions(channel, live)
        live = await self._apply_storage(channel, live)
        live = await self._store_batch(channel, live)
        if not live:
            return
        deliveries = [self._delivery(p) for p, _ in live]
        try:
            await self._broker.publish(channel, deliveries)
        except Exception as exc:
            # a stored message (or an applied reaction) is durable and listable, so it is
            # acknowledged even though its live delivery was lost; an unstored one existed only
            # in flight, so it fails (503)
            if isinstance(exc, UNAVAILABLE):
                log.warning("! live delivery on %s lost: %s", channel, exc)
            else:
                log.exception("! broker publish failed on %s; live delivery lost", channel)
            await self._fail_all([(p, f) for p, f in live if not p.durable], exc)
            live = [(p, f) for p, f in live if p.durable]
        self._delivered(live)

    async def _claim_dedup(self, batch: list[Pending], mint: Minter) -> list[Pending]:
        """Mint each ID and claim each ``deduplicationId``; a repeat is answered with the
        original message's ID and goes no further."""
        live: list[Pending] = []
        for pub, future in batch:
            pub.id = pub.id or mint(now_ms())
            if pub.claims_in_broker:
                try:
                    original = await self._broker.claim_once(
                        f"dedup:{pub.dedup_id}", pub.id, DEDUP_WINDOW_MS
                    )
                except Exception as exc:
                    _fail(pub, future, exc)
                    continue
                if original is not None:
                    _resolve(
                        future, PublishResult(pub.channel, pub.event, original, duplicate=True)
                    )
                    continue
            live.append((pub, future))
        return live

    async def _apply_reactions(self, channel: str, live: list[Pending]) -> list[Pending]:
        """Apply the batch's reactions in one store call; a repeated add or a missing remove
        succeeds without being announced (spec §12)."""
        reacting = [(p, f) for p, f in live if p.reaction is not None]
        if not reacting:
            return live
        changes = [p.reaction.change(p) for p, _ in reacting if p.reaction is not None]
        try:
            outcomes = await self._store.apply_reactions(changes, now_ms=now_ms())
        except Exception as exc:
            if isinstance(exc, UNAVAILABLE):
                log.warning("! storing reactions on %s failed: %s", channel, exc)
            elif not isinstance(exc, StoreError):
                log.exception("! applying reactions failed on %s", channel)
            await self._fail_all(reacting, exc)
            return [(p, f) for p, f in live if p.reaction is None]
        kept: list[Pending] = []
        outcome_of = {id(p): o for (p, _), o in zip(reacting, outcomes, strict=True)}
        for pub, future in live:
            if pub.reaction is None:
                kept.append((pub, future))
                continue
            pub.reaction.stored = outcome_of[id(pub)]
            if pub.reaction.stored is None:
                _resolve(future, PublishResult(pub.channel, pub.event, pub.id, duplicate=True))
            else:
                kept.append((pub, future))
        return kept

    async def _apply_storage(self, channel: str, live: list[Pending]) -> list[Pending]:
        """Send new observers their entries, then apply the batch's storage writes in one
        store call; an unchanged value succeeds without being delivered (spec §11)."""
        storage = self.storage
        if storage is None or all(p.storage is None for p, _ in live):
            return live
        # read before this batch's writes: each of them then reaches the observer after
        for pub, future in live:
            if pub.storage is not None and pub.storage.observer is not None:
                try:
                    await storage.snapshot(pub.storage)
                except Exception as exc:
                    _fail(pub, future, exc)
                _resolve(future, PublishResult(pub.channel, pub.event, pub.id))
        rest = [(p, f) for p, f in live if p.storage is None]
        writing = [(p, f) for p, f in live if p.storage is not None and p.storage.write is not None]
        if not writing:
            return rest
        now = now_ms()
        changes = [p.storage.change(now) for p, _ in writing if p.storage is not None]
        try:
            outcomes = await self._store.apply_storage(changes, now_ms=now)
        except Exception as exc:
            if isinstance(exc, UNAVAILABLE):
                log.warning("! storage writes on %s failed: %s", channel, exc)
            elif not isinstance(exc, StoreError):
                log.exception("! applying storage writes failed on %s", channel)
            await self._fail_all(writing, exc)
            return rest
        changed: set[int] = set()
        for (pub, future), outcome in zip(writing, outcomes, strict=True):
            assert pub.storage is not None
            pub.storage.outcome = outcome
            if outcome.expired is not None:
                storage.announce_expired(outcome.expired)
            if outcome.changed:
                changed.add(id(pub))
            else:
                _resolve(future, PublishResult(pub.channel, pub.event, pub.id, duplicate=True))
        return [(p, f) for p, f in live if p.storage is None or id(p) in changed]

    def _delivery(self, pub: Publication) -> Delivery:
        if pub.storage is not None and pub.storage.write is not None and self.storage is not None:
            frame = self.storage.delivery_frame(pub)
            return Delivery(frame, None, pub.storage.write.key)
        return Delivery(
            protocol.message_frame(pub.id, pub.event, pub.channel, pub.data_json, pub.meta_json),
            pub.exclude,
        )

    async def _store_batch(self, channel: str, live: list[Pending]) -> list[Pending]:
        """Commit the stored messages in one append; returns what may go on to the broker. A
        stored message whose ``deduplicationId`` the store already holds is answered with the
        original ID and goes no further."""
        records = [pub.record() for pub, _ in live if pub.store_seconds != 0]
        if not records:
            return live
        try:
            started = time.perf_counter()
            stored = iter(await self._store.append(records))
            self._metrics.store_commit.observe(time.perf_counter() - started)
            self._metrics.store_batch.observe(len(records))
        except Exception as exc:
            if isinstance(exc, UNAVAILABLE):
                log.warning("! storing on %s failed: %s", channel, exc)
            elif not isinstance(exc, StoreError):
                log.exception("! store append failed on %s", channel)
            await self._fail_all([(p, f) for p, f in live if p.store_seconds != 0], exc)
            return [(p, f) for p, f in live if p.store_seconds == 0]
        kept: list[Pending] = []
        for pub, future in live:
            original = next(stored) if pub.store_seconds != 0 else pub.id
            if original == pub.id:
                kept.append((pub, future))
            else:
                _resolve(future, PublishResult(pub.channel, pub.event, original, duplicate=True))
        return kept

    async def _fail_all(self, items: list[Pending], exc: BaseException) -> None:
        """Fail publications that were not delivered, releasing their deduplication claims so a
        retry with the same ``deduplicationId`` is not mistaken for a duplicate."""
        for pub, future in items:
            _fail(pub, future, exc)
            if pub.claims_in_broker:
                try:
                    await self._broker.release(f"dedup:{pub.dedup_id}", pub.id)
                except Exception:
                    log.exception("! could not release deduplication claim")


def server_publication(request: ServerPublish, *, trigger: str = "server.http") -> Publication:
    """The publication of a validated ``POST /publish`` message."""
    dedup = request.deduplication_id
    return Publication(
        channel=request.channel,
        event=request.event,
        data_json=request.data_json,
        meta_json=None,
        uid=None,
        umd_json=b"null",
        store_seconds=request.store_seconds,
        exclude=None,
        trigger=trigger,
        dedup_id=dedup or None,
        emit_event=request.emit_event,
    )


def report_failure(
    conn: Connection, channel: str, exc: BaseException, *, what: str = "message"
) -> None:
    """Tell a WebSocket client that a publication it was not waiting for failed in its lane."""
    code, reason = wire_error(exc)
    conn.send(
        Frame(protocol.error_frame(code, f"{what} could not be published: {reason}", channel))
    )


def failure_reporter(
    conn: Connection, channel: str, what: str
) -> Callable[[asyncio.Future[PublishResult]], None]:
    """A done-callback for a publication's future that nobody awaits: reports its failure."""

    def report(done: asyncio.Future[PublishResult]) -> None:
        exc = None if done.cancelled() else done.exception()
        if exc is not None:
            report_failure(conn, channel, exc, what=what)

    return report


def _resolve(future: asyncio.Future[PublishResult] | None, result: PublishResult) -> None:
    if future is not None and not future.done():
        future.set_result(result)


def _fail(
    pub: Publication, future: asyncio.Future[PublishResult] | None, exc: BaseException
) -> None:
    if future is None:
        if pub.on_failure is not None:
            pub.on_failure(exc)
    elif not future.done():
        future.set_exception(exc)
