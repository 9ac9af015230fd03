"""Tests for tidings.core.resume: the resume window, ``resumeFrom`` checks and the hand-over
filter (spec §24.1)."""

from __future__ import annotations

from typing import Any

import pytest

from tidings.core import protocol
from tidings.core.ids import new_ulid, ulid_floor
from tidings.core.resume import (
    CLOCK_SKEW_MS,
    HandOver,
    frame_id,
    resume_point,
    resume_window_ms,
)

NOW = 1_800_000_000_000


def message(message_id: str) -> bytes:
    return protocol.message_frame(message_id, "e", "c", b"1", None)


def test_resume_window_history_start_governs() -> None:
    """With historyStart the window is the §9.3 one, whatever resume says."""
    assert resume_window_ms(history_start=10, resume_seconds=99, subscribed_ms=NOW) == 10_000


def test_resume_window_resume_reaches_back_from_the_subscription() -> None:
    """Without historyStart, resume seconds before the subscription; 0 allows nothing older."""
    assert resume_window_ms(history_start=None, resume_seconds=60, subscribed_ms=NOW) == (
        NOW - 60_000
    )
    assert resume_window_ms(history_start=None, resume_seconds=0, subscribed_ms=NOW) == NOW


@pytest.mark.parametrize(
    "value",
    [
        None,
        7,
        ["01J0000000000000000000000A"],
        "not-a-ulid",
        new_ulid(NOW).lower(),
        new_ulid(NOW - 60_001),  # older than the window
        new_ulid(NOW + CLOCK_SKEW_MS + 1),  # from the future
    ],
)
def test_resume_point_refuses_what_cannot_be_honoured(value: Any) -> None:
    """Malformed, too old or future IDs give None (the subscription says resumed: false)."""
    assert resume_point(value, window_start_ms=NOW - 60_000, now_ms=NOW) is None


def test_resume_point_accepts_an_id_in_the_window() -> None:
    """IDs from the window start up to a little clock skew ahead are resume points."""
    for ms in (NOW - 60_000, NOW, NOW + CLOCK_SKEW_MS):
        value = new_ulid(ms)
        assert resume_point(value, window_start_ms=NOW - 60_000, now_ms=NOW) == value


def test_frame_id_reads_message_frames_only() -> None:
    """Channel messages start with their ID; other frames have none."""
    value = new_ulid(NOW)
    assert frame_id(message(value)) == value
    assert frame_id(b'{"event":"hotsock.memberAdded","channel":"c"}') is None
    assert frame_id(b'{"id":"short"}') is None


def test_handover_drops_copies_until_caught_up() -> None:
    """Live copies of replayed messages are dropped; other frames pass; once the live stream
    reaches the newest replayed ID, everything passes."""
    ids = [ulid_floor(NOW + i) for i in range(5)]
    handover = HandOver(ids[1:3])
    assert not handover.caught_up
    assert handover.admit(message(ids[0]))  # older, unstored: never replayed, so delivered
    assert not handover.admit(message(ids[1]))
    assert handover.admit(b'{"event":"hotsock.memberAdded"}')
    assert not handover.caught_up
    assert not handover.admit(message(ids[2]))
    assert handover.caught_up
    assert handover.admit(message(ids[2]))  # filtering is over
    assert handover.admit(message(ids[3]))


def test_handover_nothing_replayed_is_caught_up() -> None:
    """With nothing replayed there is nothing to filter."""
    handover = HandOver(())
    assert handover.caught_up and handover.admit(message(ulid_floor(NOW)))


def test_handover_newer_live_message_ends_filtering() -> None:
    """A live message newer than every replayed one (the newest replayed was delivered live
    before the hold) ends the filtering too."""
    ids = [ulid_floor(NOW + i) for i in range(3)]
    handover = HandOver(ids[:2])
    assert handover.admit(message(ids[2]))
    assert handover.caught_up
