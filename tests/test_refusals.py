"""The rate-limited refusal log (issue 9: refusals visible to operators)."""

from __future__ import annotations

import logging

import pytest

from tidings._refusals import RefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_refusal_log_writes_code_channel_and_event(caplog: pytest.LogCaptureFixture) -> None:
    """Each refusal is one INFO line naming where, the code, channel, event and reason."""
    log = RefusalLog(clock=Clock())
    with caplog.at_level(logging.INFO, logger="tidings.refused"):
        log.refused("websocket", "INVALID_REACTION", "chat.1", "hotsock.messageReaction", "bad")
        log.refused("publish", "INVALID_CHANNEL", None, None, "channel is required")
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]
    first = caplog.records[0].getMessage()
    assert "INVALID_REACTION" in first and "websocket" in first
    assert "'chat.1'" in first and "'hotsock.messageReaction'" in first
    assert "channel=None event=None" in caplog.records[1].getMessage()


def test_refusal_log_is_rate_limited_and_reports_what_it_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the burst, lines are dropped and counted; the next line after a refill says how
    many were not logged."""
    clock = Clock()
    log = RefusalLog(per_second=2, burst=3, clock=clock)
    with caplog.at_level(logging.INFO, logger="tidings.refused"):
        for _ in range(10):
            log.refused("websocket", "INVALID_EVENT", "c", "e", "r")
        assert len(caplog.records) == 3 and log.suppressed == 7
        clock.now += 0.5  # one token back
        log.refused("websocket", "INVALID_EVENT", "c", "e", "r")
    assert len(caplog.records) == 4
    assert "(7 more refusals not logged)" in caplog.records[-1].getMessage()
    assert log.suppressed == 0


def test_refusal_log_cuts_long_names_and_stays_quiet_above_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Long client-sent names are shortened; with the level above INFO nothing is logged."""
    log = RefusalLog(clock=Clock())
    with caplog.at_level(logging.INFO, logger="tidings.refused"):
        log.refused("websocket", "INVALID_EVENT", "c" * 1000, None, "r")
    assert len(caplog.records[0].getMessage()) < 500
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tidings.refused"):
        log.refused("websocket", "INVALID_EVENT", "c", None, "r")
    assert caplog.records == []
