"""Resume on subscribe (a tidings extension, spec §24.1): replaying the stored messages a
reconnecting subscriber missed, then handing it over to live delivery with no gap and no
duplicate.

The hand-over happens in the channel's delivery lane on the subscriber's node (the broker hands
each channel's frames to the fan-out in ID order, on every node)::

    hold()       a holding stands in for the connection in the fan-out and buffers live frames
    (subscriptions.py: node interest, presence join)
    replay()     read the stored messages after resumeFrom (at most the cap + 1)
    (subscriptions.py: hotsock.subscribed {resumed, replayed})
    hand_over()  replayed frames, then the buffered ones, then live ones, minus the copies of
                 replayed messages; once live delivery passes the newest replayed ID the
                 connection takes its own place in the fan-out again

Nothing published after the interest was taken can be missed (it reaches the buffer), and
nothing published before can be missed either: it was stored before it was handed to the broker,
so the read after the interest sees it. Unstored messages are never replayed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from tidings.core import protocol
from tidings.core.resume import HandOver, resume_point, resume_window_ms
from tidings.errors import CloseCode
from tidings.hub._common import now_ms
from tidings.hub.connection import Connection, Subscription
from tidings.hub.fanout import Fanout
from tidings.hub.outbound import Batch, Frame
from tidings.store.base import MessageRecord, Store

__all__ = ["Holding", "Recovery", "Replay", "replay_frame"]

log = logging.getLogger("tidings.hub")


@dataclass(frozen=True, slots=True)
class Replay:
    """What a resume could do: ``resumed`` is the promise of continuity; ``frames`` are the
    replayed messages as sent (shared by every subscriber resuming from the same read)."""

    resumed: bool
    records: Sequence[MessageRecord] = field(default_factory=tuple)
    frames: Sequence[Frame] = field(default_factory=tuple)


_NOT_RESUMED = Replay(False)


class _Read:
    """One store read of a channel after a resume point, which later resumers may share."""

    __slots__ = ("started", "task")

    def __init__(self, started: int, task: asyncio.Task[Replay]) -> None:
        self.started = started  # tick of the recovery clock when it was started
        self.task = task


class Recovery:
    """Resumes subscriptions from the store."""

    def __init__(self, *, store: Store, fanout: Fanout, max_messages: int, max_frames: int) -> None:
        self._store = store
        self._fanout = fanout
        self._max_messages = max_messages  # the cap: a longer gap is not replayed at all
        self._max_frames = max_frames  # live frames buffered during a replay before 1013
        # Orders holds and reads: a resumer may share a read only if the read started after
        # its hold, so the read sees everything its buffer did not (a herd reconnecting after a
        # restart resumes from the same ID: one read and one set of frames serve many)
        self._clock = itertools.count()
        self._reads: dict[tuple[str, str], _Read] = {}

    # Public methods

    def hold(self, conn: Connection, channel: str) -> Holding:
        """Put a buffering stand-in for ``conn`` in the fan-out of ``channel``; call before
        taking the node's interest in the channel."""
        holding = Holding(conn, channel, self._fanout, self._max_frames, next(self._clock))
        self._fanout.add(channel, holding)
        return holding

    async def replay(self, sub: Subscription, resume_from: object, holding: Holding) -> Replay:
        """Read what ``sub`` missed after ``resume_from``; never raises. Call once the node's
        interest in the channel is held and ``sub.subscribed_ms`` is set."""
        now = now_ms()
        window = resume_window_ms(
            history_start=sub.permissions.history_start(sub.channel),
            resume_seconds=sub.permissions.resume_seconds(sub.channel),
            subscribed_ms=sub.subscribed_ms,
        )
        point = resume_point(resume_from, window_start_ms=window, now_ms=now)
        if point is None:
            return _NOT_RESUMED
        # one turn of the loop first, so resumes handled in the same turn (a herd's frames
        # arrive together) hold before the read starts and can all share it
        await asyncio.sleep(0)
        key = (sub.channel, point)
        read = self._reads.get(key)
        if read is None or read.started < holding.since:
            task = asyncio.get_running_loop().create_task(self._read(sub.channel, point))
            read = self._reads[key] = _Read(next(self._clock), task)
            task.add_done_callback(lambda _: self._forget(key, task))
        return await asyncio.shield(read.task)

    # Private methods

    async def _read(self, channel: str, point: str) -> Replay:
        try:
            # inclusive of the point itself, which proves it is a message of this channel
            records = await self._store.list_messages(
                channel, now_ms=now_ms(), min_id=point, limit=self._max_messages + 2
            )
        except Exception as exc:  # the subscription stands; it just cannot promise continuity
            log.warning("! resuming %s from %s failed: %s", channel, point, exc)
            return _NOT_RESUMED
        if not records or records[0].id != point:
            return _NOT_RESUMED
        missed = records[1:]
        if len(missed) > self._max_messages:
            return _NOT_RESUMED
        return Replay(True, missed, Batch([replay_frame(rec) for rec in missed]))

    def _forget(self, key: tuple[str, str], task: asyncio.Task[Replay]) -> None:
        read = self._reads.get(key)
        if read is not None and read.task is task:
            del self._reads[key]


def replay_frame(rec: MessageRecord) -> Frame:
    """A stored message as it was delivered live: server messages carry no ``meta``."""
    meta = (
        protocol.meta_json(rec.uid, rec.umd.encode()) if rec.trigger.startswith("client") else None
    )
    return Frame(protocol.message_frame(rec.id, rec.event, rec.channel, rec.data.encode(), meta))


class Holding:
    """Stands in for a resuming connection in a channel's fan-out: buffers live frames until
    the replay is sent, then filters out the copies of replayed messages."""

    __slots__ = ("_buffer", "_channel", "_conn", "_fanout", "_handover", "_limit", "id", "since")

    def __init__(
        self, conn: Connection, channel: str, fanout: Fanout, limit: int, since: int
    ) -> None:
        self.id = conn.id  # the fan-out keys receivers by connection ID (and excludes by it)
        self.since = since  # tick of the recovery clock when it took its place
        self._conn = conn
        self._channel = channel
        self._fanout = fanout
        self._limit = limit
        self._buffer: list[Frame] | None = []  # None once handed over
        self._handover = HandOver(())

    @property
    def last_activity(self) -> float:
        return self._conn.last_activity

    @last_activity.setter
    def last_activity(self, value: float) -> None:
        self._conn.last_activity = value

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        return self._conn.subscriptions

    # Public methods

    def send_many(self, frames: Sequence[Frame]) -> None:
        if self._buffer is None:
            self._forward(frames)
            return
        self._buffer.extend(frames)
        if len(self._buffer) > self._limit:
            self._buffer.clear()
            self._conn.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def hand_over(self, replay: Replay) -> None:
        """Send the replayed messages, then what arrived meanwhile; call right after the
        subscription's confirmation, without awaiting in between."""
        if not self._fanout.holds(self._channel, self):  # unsubscribed or closed meanwhile
            return
        buffered, self._buffer = self._buffer or [], None
        self._handover = HandOver(rec.id for rec in replay.records)
        self._conn.send_many(replay.frames)
        self._forward(buffered)

    # Private methods

    def _forward(self, frames: Sequence[Frame]) -> None:
        self._conn.send_many([f for f in frames if self._handover.admit(f.payload)])
        if self._handover.caught_up:  # no later frame can be a copy: stop filtering
            self._fanout.replace(self._channel, self, self._conn)
