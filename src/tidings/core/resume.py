"""Resume on subscribe (a tidings extension, spec §24.1): which ``resumeFrom`` may be honoured,
and the filter that hands a resumed subscription over from replayed to live messages.

The hand-over problem: a subscriber's node starts buffering the channel's live frames, then
reads the stored messages after ``resumeFrom``. A message stored before that read but delivered
by the broker after it shows up twice, once replayed and once live. Because the broker delivers
each channel in ID order, such copies are exactly the live frames whose ID was replayed, and
once a live frame reaches the newest replayed ID no later one can be a copy.
"""

from __future__ import annotations

from collections.abc import Iterable

from tidings.core.ids import is_ulid, ulid_ms

__all__ = ["CLOCK_SKEW_MS", "HandOver", "frame_id", "resume_point", "resume_window_ms"]

# How far ahead of this node's clock a message ID may be: IDs are minted on whichever node
# publishes, and node clocks disagree a little. Beyond this, the ID cannot be a real message.
CLOCK_SKEW_MS = 5_000

_ID_PREFIX = b'{"id":"'
_ID_END = len(_ID_PREFIX) + 26


def resume_window_ms(*, history_start: int | None, resume_seconds: int, subscribed_ms: int) -> int:
    """The oldest instant (Unix ms) a ``resumeFrom`` may name: ``historyStart`` (Unix seconds)
    when set, else ``resume_seconds`` before the subscription started."""
    if history_start is not None:
        return history_start * 1000
    return subscribed_ms - resume_seconds * 1000


def resume_point(value: object, *, window_start_ms: int, now_ms: int) -> str | None:
    """``value`` when it is a message ID the window allows resuming from, else None (not a
    ULID, older than the window, or from the future). Whether it names a message of the
    channel is for the store to say."""
    if not isinstance(value, str) or not is_ulid(value):
        return None
    minted = ulid_ms(value)
    if minted < window_start_ms or minted > now_ms + CLOCK_SKEW_MS:
        return None
    return value


def frame_id(payload: bytes) -> str | None:
    """The ID of a channel message frame (``message_frame`` puts it first), else None."""
    if payload.startswith(_ID_PREFIX) and len(payload) > _ID_END:
        return payload[len(_ID_PREFIX) : _ID_END].decode()
    return None


class HandOver:
    """Filters the live frames of a resumed subscription: drops the copies of replayed
    messages until the live stream has passed the newest replayed ID."""

    __slots__ = ("_last", "_replayed", "caught_up")

    def __init__(self, replayed_ids: Iterable[str]) -> None:
        self._replayed = frozenset(replayed_ids)
        self._last = max(self._replayed, default="")
        self.caught_up = not self._replayed  # True once no later live frame can be a copy

    def admit(self, payload: bytes) -> bool:
        """Whether a live frame is to be delivered; updates :attr:`caught_up`."""
        if self.caught_up:
            return True
        message_id = frame_id(payload)
        if message_id is None:  # not a channel message (presence events and the like)
            return True
        if message_id >= self._last:
            self.caught_up = True
        return message_id not in self._replayed
