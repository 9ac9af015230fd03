"""Scheduled messages and storage writes (spec §14): accepting them into the store, and the
one loop per node that claims due schedules and hands them to their channel lanes.

::

    accept (client or server) ──▶ validate, authorise, scheduleBefore ──▶ store.add_schedules
                                                                            (group commit)
    loop: next = store.next_schedule_ms()          one index lookup
          sleep until next, a local insert due sooner, or the poll interval
          claim_schedules(now, lease)              atomic across nodes (SKIP LOCKED / IMMEDIATE)
          → Publisher.enqueue(each)                ID, subscribers, storage and events *now*
          → complete_schedules(ran)

Nothing per schedule lives in memory: the node keeps only the next due time, so pending
schedules cost their rows in the store. A claim holds its schedules for a lease; if this node
dies after claiming, another runs them once the lease ends. A scheduled message carries a
deduplication ID (its own ``deduplicationId``, else one made of the schedule ID), so running it
again within the 5-minute deduplication window delivers nothing twice. The poll interval bounds
how late a node notices a schedule another node accepted (or left behind).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from tidings.core.ids import new_ulid
from tidings.core.requests import ServerPublish
from tidings.core.schedule import check_schedule_before, parse_at
from tidings.core.storage import STORAGE_SET_EVENT, StorageWrite
from tidings.errors import UNAVAILABLE, ProtocolError
from tidings.hub._common import now_ms
from tidings.hub.connection import Connection
from tidings.hub.publishing import Publication, Publisher, PublishResult, server_publication
from tidings.hub.storage import Storage
from tidings.store.base import ScheduleRecord, Store

__all__ = ["Scheduler"]

log = logging.getLogger("tidings.hub")

MESSAGE = "message"  # ScheduleRecord.kind of a scheduled channel message
STORAGE = "storage"  # ScheduleRecord.kind of a scheduled storage write


class Scheduler:
    """Accepts scheduled messages and storage writes and runs them when due, once across the
    cluster."""

    def __init__(
        self,
        *,
        store: Store,
        publisher: Publisher,
        storage: Storage,
        poll_seconds: float = 1.0,
        lease_ms: int = 60_000,
        batch: int = 1000,
        in_flight: int = 2,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._storage = storage
        self._poll_seconds = poll_seconds  # longest sleep: how soon other nodes' work is seen
        self._lease_ms = lease_ms  # how long a claim keeps its schedules from other nodes
        self._batch = batch  # schedules claimed (and run concurrently) at once
        # claimed batches still running: the next claim need not wait for their delivery
        self._slots = asyncio.Semaphore(in_flight)
        self._running: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()  # set by an insert due before the loop's planned wake-up
        self._wake_at_ms = 0  # when the sleeping loop means to look again (Unix ms)
        self._adds: list[tuple[ScheduleRecord, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None  # group-commits pending adds
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.ran = 0  # schedules this node ran

    # Accepting

    async def schedule_client(
        self,
        conn: Connection,
        channel_sent: Any,
        event: Any,
        data: Any,
        expression: Any,
        timezone: Any,
        *,
        trigger: str,
        eager: bool = False,
    ) -> PublishResult:
        """A client message with a ``scheduleExpression``: checked like an immediate one
        (spec §8), then against ``scheduleBefore`` (request time only), then stored.

        Raises:
            ProtocolError: refused (``INVALID_SCHEDULE``, ``SCHEDULE_PERMISSION_DENIED``, or any
                refusal of an immediate message); ``.channel`` is the name as sent.
        """
        sent, pub, perms = self._publisher.client_publication(
            conn, channel_sent, event, data, trigger=trigger
        )
        try:
            due_ms = parse_at(expression, timezone)
            check_schedule_before(due_ms, perms.schedule_before(pub.channel, pub.event), now_ms())
        except ProtocolError as exc:
            exc.channel = sent
            raise
        return await self._accept(pub, due_ms, eager)

    async def schedule_server(self, request: ServerPublish) -> PublishResult:
        """A validated ``POST /publish`` message with a due time; servers need no permission.
        Its ``deduplicationId`` is claimed when it runs."""
        assert request.due_ms is not None  # the caller routes only scheduled requests here
        return await self._accept(server_publication(request), request.due_ms, request.eager)

    async def schedule_storage_client(
        self, conn: Connection, write: StorageWrite, expression: Any, timezone: Any
    ) -> PublishResult:
        """A client's validated, authorised storage write with a ``scheduleExpression``:
        checked against the key's ``scheduleBefore`` (request time only), then stored. Its TTL
        starts when it runs.

        Raises:
            ProtocolError: ``INVALID_SCHEDULE`` or ``SCHEDULE_PERMISSION_DENIED``.
        """
        due_ms = parse_at(expression, timezone)
        sub = conn.subscriptions.get(write.channel)
        perms = sub.permissions if sub is not None else conn.permissions
        check_schedule_before(
            due_ms, perms.storage_schedule_before(write.channel, write.key), now_ms()
        )
        return await self._accept_storage(write, due_ms)

    async def schedule_storage_server(
        self, write: StorageWrite, expression: Any, timezone: Any
    ) -> PublishResult:
        """A validated ``POST /publish`` storage write with a ``scheduleExpression``.

        Raises:
            ProtocolError: ``INVALID_SCHEDULE``.
        """
        return await self._accept_storage(write, parse_at(expression, timezone))

    async def cancel(self, schedule_id: str) -> bool:
        """``DELETE /schedules/{id}``: False when unknown, already run, or running."""
        return await self._store.delete_schedule(schedule_id, now_ms=now_ms())

    # The loop

    def start(self) -> None:
        """Start the loop; overdue schedules (a restart, a dead node) run at once."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tidings-scheduler")

    async def stop(self, timeout: float) -> None:
        """Stop claiming; a batch already claimed gets ``timeout`` seconds to finish (what is
        cut short runs again elsewhere when its lease ends)."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait([task], timeout=timeout)
        if not done:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        running = list(self._running)
        if running:
            _, late = await asyncio.wait(running, timeout=timeout)
            for batch in late:
                batch.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    # Private methods

    async def _accept(self, pub: Publication, due_ms: int, eager: bool) -> PublishResult:
        accepted = now_ms()
        if eager:
            pub.id = new_ulid(max(due_ms, 0))  # spec §22.34: the scheduled instant as its time
        if pub.emit_event:
            pub.request_id = new_ulid(accepted)
        record = ScheduleRecord(
            id=new_ulid(accepted),
            due_ms=due_ms,
            kind=MESSAGE,
            channel=pub.channel,
            payload=_payload(pub),
            created_ms=accepted,
        )
        await self._add(record)
        return PublishResult(pub.channel, pub.event, pub.id, schedule_id=record.id)

    async def _accept_storage(self, write: StorageWrite, due_ms: int) -> PublishResult:
        accepted = now_ms()
        record = ScheduleRecord(
            id=new_ulid(accepted),
            due_ms=due_ms,
            kind=STORAGE,
            channel=write.channel,
            payload=_storage_payload(write),
            created_ms=accepted,
        )
        await self._add(record)
        return PublishResult(write.channel, STORAGE_SET_EVENT, "", schedule_id=record.id)

    async def _add(self, record: ScheduleRecord) -> None:
        """Persist one schedule, sharing a store call with the others waiting; returns once it
        is durable, and wakes the loop if it is due before the loop meant to look."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._adds.append((record, future))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_adds())
        await future
        if record.due_ms < self._wake_at_ms:
            self._wake.set()

    async def _flush_adds(self) -> None:
        try:
            while self._adds:
                batch, self._adds = self._adds, []
                try:
                    await self._store.add_schedules([record for record, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            # in the same step that saw _adds empty, so a later add starts a new flusher
            self._flusher = None

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._step()
            except Exception as exc:
                if isinstance(exc, UNAVAILABLE):
                    log.warning("! scheduler cannot reach the store: %s", exc)
                else:
                    log.exception("! scheduler step failed")
                await self._sleep(self._poll_seconds)

    async def _step(self) -> None:
        now = now_ms()
        next_ms = await self._store.next_schedule_ms()
        if next_ms is not None and next_ms <= now:
            await self._slots.acquire()
            try:
                batch = await self._store.claim_schedules(
                    now_ms=now, limit=self._batch, lease_ms=self._lease_ms
                )
            except BaseException:
                self._slots.release()
                raise
            if batch:
                # its messages enter their lanes before the next claim runs (the task starts at
                # the loop's next await), so same-channel schedules keep their due order
                task = asyncio.get_running_loop().create_task(self._run_batch(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
                return
            self._slots.release()
            # another node holds them (its claim is still committing): look again shortly
            await self._sleep(min(self._poll_seconds, 0.05))
            return
        delay = self._poll_seconds
        if next_ms is not None:
            delay = min(delay, (next_ms - now) / 1000)
        await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        if self._stopping:
            return
        self._wake_at_ms = now_ms() + int(seconds * 1000)
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass
        finally:
            self._wake.clear()
            self._wake_at_ms = 0

    async def _run_batch(self, batch: list[ScheduleRecord]) -> None:
        try:
            await self._execute(batch)
        except Exception as exc:  # the batch stays claimed and runs again after its lease
            if isinstance(exc, UNAVAILABLE):
                log.warning("! scheduler cannot reach the store: %s", exc)
            else:
                log.exception("! running scheduled batch failed")
        finally:
            self._slots.release()

    async def _execute(self, batch: list[ScheduleRecord]) -> None:
        """Run claimed schedules concurrently (each in its channel's lane), then forget those
        that ran; a failed one stays claimed and runs again when its lease ends."""
        started: list[tuple[ScheduleRecord, asyncio.Future[PublishResult]]] = []
        for record in batch:
            if record.kind not in (MESSAGE, STORAGE):
                log.error(
                    "! schedule %s has unknown kind %r; left in place", record.id, record.kind
                )
                continue
            try:
                if record.kind == MESSAGE:
                    future = self._publisher.enqueue(_publication(record))
                else:
                    future = self._storage.write(_storage_write(record))
            except (ValueError, KeyError, TypeError, AttributeError):
                log.exception("! schedule %s has a malformed payload; dropped", record.id)
                await self._store.complete_schedules([record.id])
                continue
            started.append((record, future))
        outcomes = await asyncio.gather(*(f for _, f in started), return_exceptions=True)
        ran: list[str] = []
        for (record, _), outcome in zip(started, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning(
                    "! schedule %s on %s failed (retried after its lease): %s",
                    record.id,
                    record.channel,
                    outcome,
                )
            else:
                ran.append(record.id)
        if ran:
            await self._store.complete_schedules(ran)
            self.ran += len(ran)


# A scheduled message keeps everything its acceptance decided (meta, echo, trigger, storage,
# events, request metadata); data and meta stay the exact JSON text they were.
def _payload(pub: Publication) -> str:
    return orjson.dumps(
        {
            "event": pub.event,
            "data": pub.data_json.decode(),
            "meta": None if pub.meta_json is None else pub.meta_json.decode(),
            "uid": pub.uid,
            "umd": pub.umd_json.decode(),
            "store": pub.store_seconds,
            "exclude": pub.exclude,
            "trigger": pub.trigger,
            "connectionId": pub.connection_id,
            "sourceIp": pub.source_ip,
            "userAgent": pub.user_agent,
            "dedup": pub.dedup_id,
            "emit": pub.emit_event,
            "requestId": pub.request_id,
            "id": pub.id,
        }
    ).decode()


def _publication(record: ScheduleRecord) -> Publication:
    p = orjson.loads(record.payload)
    meta = p["meta"]
    return Publication(
        channel=record.channel,
        event=p["event"],
        data_json=p["data"].encode(),
        meta_json=None if meta is None else meta.encode(),
        uid=p["uid"],
        umd_json=p["umd"].encode(),
        store_seconds=p["store"],
        exclude=p["exclude"],
        trigger=p["trigger"],
        connection_id=p["connectionId"],
        source_ip=p["sourceIp"],
        user_agent=p["userAgent"],
        # a run repeated after a lost completion (the node died after delivering) is then a
        # duplicate, answered without a second delivery: the claim or the stored
        # deduplicationId outlives the lease
        dedup_id=p["dedup"] or f"schedule:{record.id}",
        emit_event=p["emit"],
        request_id=p["requestId"],
        id=p["id"],
    )


def _storage_payload(write: StorageWrite) -> str:
    return orjson.dumps(
        {
            "key": write.key,
            "data": None if write.data_json is None else write.data_json.decode(),
            "store": write.store_seconds,
            "uid": write.uid,
            "umd": write.umd_json.decode(),
            "emit": write.emit_event,
            "trigger": write.trigger,
            "connectionId": write.connection_id,
            "sourceIp": write.source_ip,
            "userAgent": write.user_agent,
        }
    ).decode()


def _storage_write(record: ScheduleRecord) -> StorageWrite:
    p = orjson.loads(record.payload)
    data = p["data"]
    return StorageWrite(
        channel=record.channel,
        key=p["key"],
        data_json=None if data is None else data.encode(),
        store_seconds=p["store"],
        uid=p["uid"],
        umd_json=p["umd"].encode(),
        emit_event=p["emit"],
        trigger=p["trigger"],
        connection_id=p["connectionId"],
        source_ip=p["sourceIp"],
        user_agent=p["userAgent"],
    )
