"""Live messages published at the end of the loop turn (issue 14): one write per subscriber per
turn, per-channel order across the immediate and the task path, each message once in many
channels, and the bounded backlog behind the fan-out."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.hub.conftest import HubHarness, RecordingOutlet

from tidings.core.ids import is_ulid
from tidings.core.requests import parse_server_publish
from tidings.hub.outbound import ws_text_frame

ROOMS: dict[str, Any] = {
    "uid": "u",
    "channels": {
        "room.*": {
            "subscribe": True,
            "messages": {
                "chat": {"publish": True, "echo": True},
                "kept": {"publish": True, "echo": True, "store": 60},
            },
        }
    },
}


BROADCAST: dict[str, Any] = {"channels": {"room.*": {"messages": {"chat": {"broadcast": True}}}}}


async def _wait(outlet: RecordingOutlet, count: int) -> None:
    for _ in range(500):
        if len(outlet.frames) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(outlet.frames)} of {count} frames arrived")


def _chat(channel: str, data: Any, event: str = "chat") -> dict[str, Any]:
    return {"event": event, "channel": channel, "data": data}


async def test_one_turn_of_a_channel_is_one_write_of_the_exact_frames(
    harness: HubHarness,
) -> None:
    """Live messages sent in one loop turn leave in one write per subscriber, and the bytes are
    exactly the RFC 6455 frames of the message JSON."""
    (sender, _), (_, inbox) = await harness.subscribed("room.1", ROOMS, ROOMS)
    for n in range(30):
        await harness.send(sender, _chat("room.1", {"n": n}))
    await _wait(inbox, 30)
    assert len(inbox.writes) == 1
    expected = b"".join(
        ws_text_frame(
            b'{"id":"%s","event":"chat","channel":"room.1","data":{"n":%d},'
            b'"meta":{"uid":"u","umd":null}}' % (f["id"].encode(), n)
        )
        for n, f in enumerate(inbox.frames)
    )
    assert inbox.writes[0] == expected


async def test_live_and_stored_messages_keep_send_order(harness: HubHarness) -> None:
    """A stored message (published by the lane's task) between live ones (published at the end
    of the turn) does not overtake or fall behind them: send order is delivery order, and IDs
    strictly increase."""
    (sender, _), (_, inbox) = await harness.subscribed("room.1", ROOMS, ROOMS)
    events = ["chat", "chat", "kept", "chat", "kept", "kept", "chat", "chat"] * 3
    for n, event in enumerate(events):
        await harness.send(sender, _chat("room.1", n, event))
        if n % 5 == 4:
            await asyncio.sleep(0)  # a few loop turns, so both paths overlap
    await _wait(inbox, len(events))
    got = inbox.take()
    assert [f["data"] for f in got] == list(range(len(events)))
    assert [f["event"] for f in got] == events
    ids = [f["id"] for f in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_subscribers_of_many_channels_get_each_message_once_in_order(
    harness: HubHarness,
) -> None:
    """Messages to 20 channels, interleaved in the same turns, reach a connection subscribed to
    all of them once each and in each channel's order; one subscribed to some gets only
    those."""
    channels = [f"room.{i}" for i in range(20)]
    sender, _ = await harness.connect(BROADCAST)  # publishes without subscribing
    every, every_out = await harness.connect(ROOMS)
    some, some_out = await harness.connect(ROOMS)
    for ch in channels:
        await harness.send(every, {"event": "hotsock.subscribe", "channel": ch})
    for ch in channels[::4]:
        await harness.send(some, {"event": "hotsock.subscribe", "channel": ch})
    every_out.take()
    some_out.take()
    for round_ in range(5):
        for ch in channels:
            await harness.send(sender, _chat(ch, [ch, round_]))
        await asyncio.sleep(0)
    await _wait(every_out, 100)
    await _wait(some_out, 25)
    await asyncio.sleep(0.05)  # nothing more comes
    for out, subscribed in ((every_out, channels), (some_out, channels[::4])):
        got = out.take()
        assert sorted(tuple(f["data"]) for f in got) == sorted(
            (ch, r) for ch in subscribed for r in range(5)
        )
        for ch in subscribed:
            mine = [f for f in got if f["channel"] == ch]
            assert [f["data"][1] for f in mine] == list(range(5))
            assert [f["id"] for f in mine] == sorted(f["id"] for f in mine)


async def test_a_stuck_subscriber_is_evicted_past_its_bound_and_others_get_everything(
    harness: HubHarness,
) -> None:
    """Behind the end-of-turn fan-out the backlog is still bounded in bytes: a paused
    subscriber stays while its backlog is under the bound and is closed 1013 once past it, and
    a healthy one in the same channel receives every message in order."""
    harness.limit_backlog(64 * 1024)  # each frame is about 130 bytes
    (sender, _), (_, stuck), (_, healthy) = await harness.subscribed("room.1", ROOMS, ROOMS, ROOMS)
    stuck.paused = True
    for n in range(300):  # about 40 KB
        await harness.send(sender, _chat("room.1", n))
        if n % 10 == 9:
            await asyncio.sleep(0)
    await _wait(healthy, 300)
    assert stuck.closed is None and stuck.frames == []
    for n in range(300, 1000):  # about 130 KB in all
        await harness.send(sender, _chat("room.1", n))
        if n % 10 == 9:
            await asyncio.sleep(0)
    await _wait(healthy, 1000)
    assert stuck.closed == (1013, "slow consumer")
    assert [f["data"] for f in healthy.take()] == list(range(1000))


async def test_drain_publishes_what_waits_for_the_end_of_the_turn(harness: HubHarness) -> None:
    """A graceful stop finishes a live publication still waiting for the end of the turn."""
    future = harness.hub.publish_server(parse_server_publish({"channel": "room.1", "event": "e"}))
    assert not future.done()
    await harness.hub.drain()
    assert future.done() and is_ulid(future.result().id)


async def _in_channels(harness: HubHarness, *channels: str) -> tuple[Any, RecordingOutlet]:
    conn, out = await harness.connect(ROOMS)
    for ch in channels:
        await harness.send(conn, {"event": "hotsock.subscribe", "channel": ch})
    out.take()
    return conn, out


async def test_a_turn_of_several_channels_is_one_write_to_a_member_of_them(
    harness: HubHarness,
) -> None:
    """Frames several channels send one connection in one turn leave in one write, each
    channel's in its order; a connection in one of the channels gets its batch alone."""
    sender, _ = await harness.connect(BROADCAST)
    _, both = await _in_channels(harness, "room.1", "room.2")
    _, one = await _in_channels(harness, "room.2")
    for n, ch in enumerate(["room.1", "room.2", "room.1", "room.2", "room.1"]):
        await harness.send(sender, _chat(ch, n))
    await _wait(both, 5)
    await _wait(one, 2)
    assert len(both.writes) == 1 and len(one.writes) == 1
    got = both.take()
    assert [f["data"] for f in got if f["channel"] == "room.1"] == [0, 2, 4]
    assert [f["data"] for f in got if f["channel"] == "room.2"] == [1, 3]
    assert [f["data"] for f in one.take()] == [1, 3]


async def test_held_frames_count_against_the_backlog_bound(harness: HubHarness) -> None:
    """A stuck connection in several channels is closed 1013 once its backlog passes the byte
    bound although its frames were held for one write per turn; a healthy one in the same
    channels gets all."""
    harness.limit_backlog(64 * 1024)
    sender, _ = await harness.connect(BROADCAST)
    _, stuck = await _in_channels(harness, "room.1", "room.2")
    _, healthy = await _in_channels(harness, "room.1", "room.2")
    stuck.paused = True
    for n in range(300):
        await harness.send(sender, _chat(f"room.{1 + n % 2}", n))
        if n % 10 == 9:
            await asyncio.sleep(0)
    await _wait(healthy, 300)
    assert stuck.closed is None
    for n in range(300, 1002):
        await harness.send(sender, _chat(f"room.{1 + n % 2}", n))
        if n % 10 == 9:
            await asyncio.sleep(0)
    await _wait(healthy, 1002)
    assert stuck.closed == (1013, "slow consumer")
    got = healthy.take()
    for ch in ("room.1", "room.2"):
        mine = [f["data"] for f in got if f["channel"] == ch]
        assert mine == sorted(mine) and len(mine) == 501
