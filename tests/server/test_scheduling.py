"""Scheduled messages (spec §14) through a real node: ``POST /publish``, the Client HTTP API
and WebSocket frames with ``scheduleExpression``, ``scheduleArn``, ``DELETE /schedules/{id}``,
restarts, and the refusals of §18."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tests.conftest import API_KEY, MS, Client, Server, StartServer
from tests.server.test_backend_events import Receiver, events_server, receiver
from tests.server.test_channel_storage import (
    GAME,
    admin_storage,
    lobby,
    server_set,
    set_frame,
    updated,
)

from tidings.core.ids import is_ulid, ulid_ms
from tidings.sdk.publisher import AsyncPublisher, Publisher, PublishError

pytestmark = pytest.mark.timeout(60)

FEED = "notifications.Jim"

__all__ = ["receiver"]  # the webhook receiver fixture, shared with the backend-event tests


def at(seconds: float, zone: str | None = None) -> tuple[str, int]:
    """``at(…)`` for ``seconds`` from now (rounded up to a whole second), in ``zone``'s local
    time, and the instant it names (Unix ms)."""
    due = math.ceil(time.time() + seconds)
    local = datetime.fromtimestamp(due, UTC if zone is None else ZoneInfo(zone))
    return f"at({local.strftime('%Y-%m-%dT%H:%M:%S')})", due * 1000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def room_claims(
    *, uid: str = "Jim", schedule_before: int | None = None, echo: bool = False, **more: Any
) -> dict[str, Any]:
    message: dict[str, Any] = {"publish": True, "echo": echo, "store": 600, **more}
    if schedule_before is not None:
        message["scheduleBefore"] = schedule_before
    return {
        "uid": uid,
        "umd": {"name": uid},
        "channels": {"room": {"subscribe": True, "historyStart": 0, "messages": {"*": message}}},
    }


async def subscriber(server: Server, uid: str = "Pam") -> Client:
    client = await server.connect(room_claims(uid=uid))
    await client.subscribe("room")
    return client


async def delete(server: Server, path: str, *, key: str = API_KEY) -> tuple[int, Any]:
    async with server.http.delete(
        f"{server.base}/schedules/{path}", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        body = await resp.json(content_type=None) if resp.status != 204 else None
        return resp.status, body


def schedule_id(answer: dict[str, Any]) -> str:
    arn = answer["scheduleArn"]
    prefix, _, ulid = arn.rpartition(":")
    assert prefix == "tidings:schedule" and is_ulid(ulid), arn
    return str(ulid)


async def no_schedule_pending(server: Server) -> None:
    assert await server.hub._store.next_schedule_ms() is None


# POST /publish


async def test_server_schedule_is_delivered_and_stored_at_its_time(server: Server) -> None:
    """A scheduled server message answers 202 with a scheduleArn and no ID, reaches nobody
    before its time, then reaches the subscribers with an ID of that moment, stored with its
    TTL."""
    pam = await subscriber(server)
    expression, due = at(1.5)
    answer = await server.publish(
        {
            "channel": "room",
            "event": "news",
            "data": {"n": 1},
            "store": 60,
            "scheduleExpression": expression,
        }  # fmt: skip
    )
    assert set(answer) == {"channel", "event", "scheduleArn"}
    assert (answer["channel"], answer["event"]) == ("room", "news")
    schedule_id(answer)
    await pam.nothing(300 * MS)
    frame = await pam.expect("news", timeout=5000 * MS)
    assert now_ms() >= due
    assert frame["data"] == {"n": 1} and "meta" not in frame
    assert ulid_ms(frame["id"]) >= due
    _, history = await server.call(pam, "listMessages", {"channel": "room"}, status=200)
    [stored] = history["messages"]
    assert stored["id"] == frame["id"] and stored["meta"] == {"uid": None, "umd": None}
    record = await server.hub._store.get_message("room", frame["id"], now_ms=now_ms())
    assert record is not None and record.expires_ms == record.created_ms + 60_000
    assert record.created_ms >= due and record.trigger == "server.http"
    await no_schedule_pending(server)


async def test_server_schedule_with_eager_id_uses_the_scheduled_instant(server: Server) -> None:
    """eagerIdGeneration answers the ID now; its ULID time is the scheduled instant, and the
    delivered message carries it."""
    pam = await subscriber(server)
    expression, due = at(1)
    answer = await server.publish(
        {
            "channel": "room",
            "event": "news",
            "scheduleExpression": expression,
            "eagerIdGeneration": True,
        }  # fmt: skip
    )
    assert ulid_ms(answer["id"]) == due
    schedule_id(answer)
    frame = await pam.expect("news", timeout=5000 * MS)
    assert frame["id"] == answer["id"]


async def test_server_schedule_in_the_past_runs_at_once(server: Server) -> None:
    """A time already past is accepted and runs immediately; the zone shifts nothing here."""
    pam = await subscriber(server)
    answer = await server.publish(
        {
            "channel": "room",
            "event": "late",
            "data": 1,
            "scheduleExpression": "at(2020-01-01T00:00:00)",
            "scheduleExpressionTimezone": "Asia/Tokyo",
        }  # fmt: skip
    )
    schedule_id(answer)
    assert (await pam.expect("late"))["data"] == 1


async def test_server_schedule_reads_local_time_in_its_zone(server: Server) -> None:
    """The expression is local time in scheduleExpressionTimezone; delivery follows the
    instant it names, not the same wall-clock digits in UTC."""
    pam = await subscriber(server)
    expression, due = at(1.5, "America/St_Johns")  # UTC-03:30 or -02:30: a half-hour offset
    await server.publish(
        {
            "channel": "room",
            "event": "zoned",
            "scheduleExpression": expression,
            "scheduleExpressionTimezone": "America/St_Johns",
        }  # fmt: skip
    )
    await pam.expect("zoned", timeout=5000 * MS)
    assert now_ms() >= due


async def test_server_array_publish_schedules_each_message(server: Server) -> None:
    """Items of an array publish are scheduled (or published) one by one, in one request."""
    pam = await subscriber(server)
    expression, _ = at(1)
    answers = await server.publish(
        [
            {"channel": "room", "event": "later", "scheduleExpression": expression},
            {"channel": "room", "event": "now"},
        ]
    )
    assert "scheduleArn" in answers[0] and "scheduleArn" not in answers[1]
    assert (await pam.expect("now"))["event"] == "now"
    await pam.expect("later", timeout=5000 * MS)


async def test_schedule_goes_to_the_subscribers_of_its_moment(server: Server) -> None:
    """Who receives a scheduled message is decided when it runs: a later subscriber gets it,
    one who left does not."""
    leaver = await subscriber(server, "Leaver")
    expression, _ = at(3)
    await server.publish({"channel": "room", "event": "news", "scheduleExpression": expression})
    await leaver.send({"event": "hotsock.unsubscribe", "channel": "room"})
    await leaver.expect("hotsock.unsubscribed")
    newcomer = await subscriber(server, "Newcomer")
    await newcomer.expect("news", timeout=5000 * MS)
    await leaver.nothing(300 * MS)


# Clients


async def test_client_http_schedule_keeps_meta_and_honours_echo(server: Server) -> None:
    """publishMessage with scheduleBefore: 202 with scheduleArn; at its time the message has
    the sender's meta, reaches the others, and not the sender (echo false)."""
    jim = await server.connect(room_claims(schedule_before=int(time.time()) + 3600))
    await jim.subscribe("room")
    pam = await subscriber(server)
    expression, due = at(1)
    _, answer = await server.call(
        jim,
        "publishMessage",
        {"channel": "room", "event": "chat", "data": "hi", "scheduleExpression": expression},
        status=202,
    )
    assert set(answer) == {"channel", "event", "scheduleArn"}
    frame = await pam.expect("chat", timeout=5000 * MS)
    assert frame["meta"] == {"uid": "Jim", "umd": {"name": "Jim"}}
    assert ulid_ms(frame["id"]) >= due
    await jim.nothing(300 * MS)
    record = await server.hub._store.get_message("room", frame["id"], now_ms=now_ms())
    assert record is not None
    assert (record.trigger, record.connection_id, record.uid) == ("client.http", jim.id, "Jim")


async def test_client_websocket_schedule_echoes_when_allowed(server: Server) -> None:
    """A WebSocket message with scheduleExpression is scheduled silently; with echo the sender
    gets its copy at the scheduled time, eager IDs are not part of WebSocket publishing."""
    jim = await server.connect(room_claims(schedule_before=int(time.time()) + 3600, echo=True))
    await jim.subscribe("room")
    expression, due = at(1)
    await jim.send(
        {"channel": "room", "event": "chat", "data": 2, "scheduleExpression": expression}
    )
    await jim.nothing(300 * MS)
    frame = await jim.expect("chat", timeout=5000 * MS)
    assert frame["data"] == 2 and frame["meta"]["uid"] == "Jim"
    assert now_ms() >= due


async def test_scheduled_message_emits_its_event_when_delivered(
    start_server: StartServer, receiver: Receiver
) -> None:
    """hotsock.messagePublished of a scheduled message is emitted when it runs, with the
    accepting request's trigger and connection."""
    server = await events_server(start_server, receiver)
    jim = await server.connect(
        room_claims(schedule_before=int(time.time()) + 3600, emitPubSubEvent=True)
    )
    await jim.subscribe("room")
    expression, due = at(1.5)
    await server.call(
        jim,
        "publishMessage",
        {"channel": "room", "event": "chat", "data": "x", "scheduleExpression": expression},
        status=202,
    )
    await asyncio.sleep(300 * MS)
    assert receiver.of("hotsock.messagePublished") == []
    [event] = await receiver.wait_for("hotsock.messagePublished", timeout=5000 * MS)
    assert now_ms() >= due
    assert event["metadata"]["trigger"] == "client.http"
    assert event["metadata"]["connectionId"] == jim.id
    assert event["data"]["meta"] == {"uid": "Jim", "umd": {"name": "Jim"}}
    assert ulid_ms(event["data"]["id"]) >= due


# Refusals


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"scheduleExpression": "rate(5 minutes)"}, "recurring"),
        ({"scheduleExpression": "cron(0 12 * * ? *)"}, "recurring"),
        ({"scheduleExpression": "at(2030-02-30T00:00:00)"}, "no real date"),
        ({"scheduleExpression": "at(2030-01-01T00:00)"}, "is not at("),
        ({"scheduleExpression": 5}, "must be a string"),
        (
            {"scheduleExpression": "at(2030-01-01T00:00:00)", "scheduleExpressionTimezone": "X/Y"},
            "unknown time zone",
        ),
    ],
)
async def test_server_bad_schedule_is_refused(
    server: Server, fields: dict[str, Any], reason: str
) -> None:
    """Each bad expression or zone is 400 INVALID_SCHEDULE; nothing is scheduled or sent."""
    pam = await subscriber(server)
    answer = await server.publish({"channel": "room", "event": "e", **fields}, status=400)
    assert answer["error"]["code"] == "INVALID_SCHEDULE"
    assert reason in answer["error"]["message"]
    await no_schedule_pending(server)
    await pam.nothing(200 * MS)


async def test_server_zone_without_expression_is_ignored(server: Server) -> None:
    """A zone (even an unknown one) without an expression publishes at once."""
    pam = await subscriber(server)
    answer = await server.publish(
        {"channel": "room", "event": "now", "scheduleExpressionTimezone": "Nowhere/Land"}
    )
    assert "scheduleArn" not in answer
    await pam.expect("now")
    await no_schedule_pending(server)


async def test_server_reaction_cannot_be_scheduled(server: Server) -> None:
    """A reaction with a scheduleExpression is refused rather than applied at once."""
    answer = await server.publish(
        {
            "channel": "room",
            "event": "hotsock.messageReaction",
            "uid": "Jim",
            "data": {"messageId": "01JA3S0P7FB7WVYS67X316M32S", "reaction": "x", "action": "add"},
            "scheduleExpression": "at(2030-01-01T00:00:00)",
        },  # fmt: skip
        status=400,
    )
    assert answer["error"]["code"] == "INVALID_SCHEDULE"


@pytest.mark.parametrize(
    ("schedule_before", "seconds"),
    [(None, 5), (0, 5), (-60, 5), (3, 60)],
    ids=["absent", "zero", "past", "beyond"],
)
async def test_client_schedule_needs_schedule_before(
    server: Server, schedule_before: int | None, seconds: int
) -> None:
    """Without scheduleBefore, with one in the past, or scheduling past it: 403
    SCHEDULE_PERMISSION_DENIED over HTTP and WebSocket; nothing is scheduled."""
    # relative seconds from now, except 0, which is the directive's "not allowed" value
    limit = schedule_before and int(time.time()) + schedule_before
    jim = await server.connect(room_claims(schedule_before=limit))
    await jim.subscribe("room")
    pam = await subscriber(server)
    expression, _ = at(seconds)
    body = {"channel": "room", "event": "chat", "scheduleExpression": expression}
    _, answer = await server.call(jim, "publishMessage", body, status=403)
    assert answer["error"]["code"] == "SCHEDULE_PERMISSION_DENIED"
    await jim.send(body)
    error = await jim.expect("hotsock.error")
    assert error["channel"] == "room"
    assert error["error"]["code"] == "SCHEDULE_PERMISSION_DENIED"
    await no_schedule_pending(server)
    await pam.nothing(200 * MS)


async def test_client_bad_schedule_is_refused_after_permissions(server: Server) -> None:
    """A bad expression from a client is INVALID_SCHEDULE; a client that may not publish at
    all hears PUBLISH_PERMISSION_DENIED first (spec §8 order)."""
    jim = await server.connect(room_claims(schedule_before=int(time.time()) + 3600))
    await jim.subscribe("room")
    body = {"channel": "room", "event": "chat", "scheduleExpression": "rate(1 hour)"}
    _, answer = await server.call(jim, "publishMessage", body, status=400)
    assert answer["error"]["code"] == "INVALID_SCHEDULE"
    await jim.send({**body, "scheduleExpressionTimezone": "Nope/Nope"})
    assert (await jim.expect("hotsock.error"))["error"]["code"] == "INVALID_SCHEDULE"
    mute = await server.connect({"channels": {"room": {"subscribe": True}}})
    await mute.subscribe("room")
    _, answer = await server.call(mute, "publishMessage", body, status=403)
    assert answer["error"]["code"] == "PUBLISH_PERMISSION_DENIED"
    await no_schedule_pending(server)


# DELETE /schedules/{id}


async def test_delete_cancels_a_pending_schedule_once(server: Server) -> None:
    """DELETE answers 204 and the message never runs; a second DELETE is 404."""
    pam = await subscriber(server)
    expression, due = at(3)  # a margin for a loaded machine: the DELETE must come first
    answer = await server.publish(
        {"channel": "room", "event": "never", "scheduleExpression": expression}
    )
    ulid = schedule_id(answer)
    assert await delete(server, ulid) == (204, None)
    status, body = await delete(server, ulid)
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    await no_schedule_pending(server)
    await pam.nothing(max(0, due - now_ms()) / 1000 + 0.5)


async def test_delete_accepts_the_whole_arn(server: Server) -> None:
    """The scheduleArn itself names the schedule too."""
    expression, _ = at(30)
    answer = await server.publish(
        {"channel": "room", "event": "e", "scheduleExpression": expression}
    )
    assert (await delete(server, answer["scheduleArn"]))[0] == 204


async def test_delete_refuses_unknown_run_and_unauthorised(server: Server) -> None:
    """Unknown or malformed IDs and schedules that already ran are 404; without the API key
    401; none of them changes anything."""
    pam = await subscriber(server)
    status, body = await delete(server, "01JA3S0P7FB7WVYS67X316M32S")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    assert (await delete(server, "not-a-ulid"))[0] == 404
    answer = await server.publish(
        {"channel": "room", "event": "ran", "scheduleExpression": "at(2020-01-01T00:00:00)"}
    )
    await pam.expect("ran")
    for _ in range(100):  # the run is forgotten right after its delivery
        if await server.hub._store.next_schedule_ms() is None:
            break
        await asyncio.sleep(10 * MS)
    assert (await delete(server, schedule_id(answer)))[0] == 404
    expression, _ = at(30)
    pending = await server.publish(
        {"channel": "room", "event": "e", "scheduleExpression": expression}
    )
    status, body = await delete(server, schedule_id(pending), key="wrong")
    assert (status, body["error"]["code"]) == (401, "UNAUTHORIZED")
    assert await server.hub._store.next_schedule_ms() is not None


# Restarts


async def test_pending_schedule_survives_a_restart(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A schedule accepted before a restart is delivered by the restarted node at its time."""
    store = f"sqlite:///{tmp_path}/t.db"
    first = await start_server(store=store)
    expression, due = at(4)  # later than the restart takes, so the new subscriber sees it live
    await first.publish(
        {"channel": "room", "event": "after", "store": 60, "scheduleExpression": expression}
    )
    await first.aclose()
    second = await start_server(store=store)
    pam = await subscriber(second)
    frame = await pam.expect("after", timeout=8000 * MS)
    assert ulid_ms(frame["id"]) >= due


async def test_overdue_schedule_runs_at_start_up(start_server: StartServer, tmp_path: Path) -> None:
    """A schedule that fell due while no node ran is run when one starts."""
    store = f"sqlite:///{tmp_path}/t.db"
    first = await start_server(store=store)
    expression, due = at(1)
    await first.publish(
        {"channel": "room", "event": "overdue", "store": 60, "scheduleExpression": expression}
    )
    await first.aclose()
    while now_ms() < due + 200:
        await asyncio.sleep(50 * MS)
    started = now_ms()
    second = await start_server(store=store)
    for _ in range(200):
        if await second.hub._store.next_schedule_ms() is None:
            break
        await asyncio.sleep(10 * MS)
    reader = await subscriber(second)
    _, history = await second.call(reader, "listMessages", {"channel": "room"}, status=200)
    [message] = history["messages"]
    assert message["event"] == "overdue" and ulid_ms(message["id"]) >= started


# Hotsock's notification feed


async def test_notification_feed_receives_scheduled_notifications_in_order(
    server: Server,
) -> None:
    """Hotsock's notification-feed flow: the user's feed channel is auto-subscribed under an
    alias; the backend schedules three notifications 2, 4 and 6 s ahead; they arrive in order,
    each at its time, on the real channel name."""
    claims = {
        "uid": "Jim",
        "channels": {FEED: {"subscribe": True, "autoSubscribe": True, "alias": "notifications"}},
    }
    jim = await server.connect(claims)
    subscribed = await jim.expect("hotsock.subscribed")
    assert subscribed["channel"] == FEED
    assert subscribed["meta"]["channelAlias"] == "notifications"
    assert subscribed["data"] == {"autoSubscribed": True}
    schedules = [at(seconds) for seconds in (2, 4, 6)]
    for n, (expression, _) in enumerate(schedules):
        answer = await server.publish(
            {
                "channel": FEED,
                "event": "notification",
                "data": {"title": f"n{n}"},
                "scheduleExpression": expression,
            }  # fmt: skip
        )
        schedule_id(answer)
    arrivals = []
    for _ in schedules:
        frame = await jim.expect("notification", timeout=8000 * MS)
        arrivals.append((frame["data"]["title"], frame["channel"], now_ms()))
    assert [title for title, _, _ in arrivals] == ["n0", "n1", "n2"]
    assert {channel for _, channel, _ in arrivals} == {FEED}
    assert all(
        arrived >= due for (_, _, arrived), (_, due) in zip(arrivals, schedules, strict=True)
    )


# Scheduled storage writes (spec §11, §14)


def storage_claims(uid: str = "host", schedule_before: int | None = None) -> dict[str, Any]:
    claims = lobby(uid, set_=True, store=60)
    if schedule_before is not None:
        claims["channels"]["game.*"]["storage"]["*"]["scheduleBefore"] = schedule_before
    return claims


async def storage_keys(server: Server) -> list[str]:
    return [item["key"] for item in (await admin_storage(server))["items"]]


async def test_client_storage_write_runs_at_its_time(server: Server) -> None:
    """A WebSocket storage set with scheduleExpression and scheduleBefore changes nothing
    until its time; then observers (the writer too) get the update with the writer's meta, and
    the entry's TTL runs from then."""
    host = await server.connect(storage_claims(schedule_before=int(time.time()) + 3600))
    await host.subscribe(GAME)
    guest = await server.connect(lobby("guest"))
    await guest.subscribe(GAME)
    expression, due = at(1)
    await host.send(set_frame("round", 2, scheduleExpression=expression))
    await guest.nothing(300 * MS)
    assert await storage_keys(server) == []
    for client in (guest, host):
        assert await client.recv(timeout=5000 * MS) == updated("round", 2)
    assert now_ms() >= due
    entry = await server.hub._store.get_storage(GAME, "round", now_ms=now_ms())
    assert entry is not None and entry.expires_ms is not None
    assert entry.expires_ms >= due + 60_000


async def test_http_and_server_storage_writes_answer_a_schedule_arn(server: Server) -> None:
    """channelStorageSet and a POST /publish storage write with scheduleExpression answer 202
    with a scheduleArn; a scheduled delete (null) clears the entry at its time."""
    host = await server.connect(storage_claims(schedule_before=int(time.time()) + 3600))
    await host.subscribe(GAME)
    expression, _ = at(1)
    _, answer = await server.call(
        host,
        "channelStorageSet",
        {"channel": GAME, "key": "a", "data": 1, "scheduleExpression": expression},
        status=202,
    )
    assert answer["event"] == "hotsock.channelStorageSet" and answer["channel"] == GAME
    schedule_id(answer)
    answer = await server_set(server, "b", "x", scheduleExpression=expression)
    assert answer["event"] == "hotsock.channelStorageSet"
    schedule_id(answer)
    updates = [await host.recv(timeout=5000 * MS) for _ in range(2)]
    assert sorted(u["key"] for u in updates) == ["a", "b"]
    later, _ = at(1)
    await server_set(server, "b", None, scheduleExpression=later)
    assert await host.recv(timeout=5000 * MS) == updated("b", None, uid=None)
    assert await storage_keys(server) == ["a"]


async def test_scheduled_storage_write_can_be_cancelled(server: Server) -> None:
    """DELETE /schedules/{id} cancels a pending storage write: it never applies."""
    host = await server.connect(storage_claims())
    await host.subscribe(GAME)
    expression, due = at(3)
    answer = await server_set(server, "k", 1, scheduleExpression=expression)
    assert (await delete(server, schedule_id(answer)))[0] == 204
    await host.nothing(max(0, due - now_ms()) / 1000 + 0.5)
    assert await storage_keys(server) == []


@pytest.mark.parametrize(
    ("schedule_before", "fields", "code"),
    [
        (None, {}, "SCHEDULE_PERMISSION_DENIED"),
        (-10, {}, "SCHEDULE_PERMISSION_DENIED"),
        (2, {"later": 60}, "SCHEDULE_PERMISSION_DENIED"),
        (3600, {"scheduleExpression": "cron(0 * * * ? *)"}, "INVALID_SCHEDULE"),
        (3600, {"scheduleExpressionTimezone": "Atlantis/Capital"}, "INVALID_SCHEDULE"),
    ],
    ids=["no-scheduleBefore", "past-scheduleBefore", "beyond", "recurring", "zone"],
)
async def test_client_storage_schedule_refusals_change_nothing(
    server: Server, schedule_before: int | None, fields: dict[str, Any], code: str
) -> None:
    """A client's scheduled storage write needs the key's scheduleBefore and a valid
    expression, over the WebSocket and HTTP; a refusal schedules nothing."""
    limit = None if schedule_before is None else int(time.time()) + schedule_before
    host = await server.connect(storage_claims(schedule_before=limit))
    expression, _ = at(fields.pop("later", 5))
    body = {"channel": GAME, "key": "k", "data": 1, "scheduleExpression": expression, **fields}
    status, answer = await server.call(host, "channelStorageSet", body)
    assert answer["error"]["code"] == code and status in (400, 403)
    await host.send(set_frame("k", 1, **{k: v for k, v in body.items() if k.startswith("sch")}))
    error = await host.expect("hotsock.error")
    assert (error["error"]["code"], error["channel"]) == (code, GAME)
    await no_schedule_pending(server)
    answer = await server_set(server, "k", 1, status=400, scheduleExpression="rate(1 day)")
    assert answer["error"]["code"] == "INVALID_SCHEDULE"
    await no_schedule_pending(server)


# The backend SDK


async def test_sdk_publishers_schedule_and_cancel(server: Server) -> None:
    """Publisher and AsyncPublisher return the scheduleArn and cancel with it: True while
    pending, False once there is nothing to cancel; a wrong key raises."""
    expression, _ = at(60)
    sync = Publisher(server.base, API_KEY, backoff=0.0)
    result = await asyncio.to_thread(
        sync.publish_message, "room", "e", 1, schedule_expression=expression
    )
    assert result.schedule_arn is not None
    assert await asyncio.to_thread(sync.cancel_schedule, result.schedule_arn) is True
    assert await asyncio.to_thread(sync.cancel_schedule, result.schedule_arn) is False
    async with AsyncPublisher(server.base, API_KEY, backoff=0.0) as publisher:
        result = await publisher.publish_message("room", "e", 2, schedule_expression=expression)
        assert result.schedule_arn is not None
        assert await publisher.cancel_schedule(result.schedule_arn.rpartition(":")[2]) is True
        assert await publisher.cancel_schedule(result.schedule_arn) is False
        with pytest.raises(ValueError, match="schedule_arn"):
            await publisher.cancel_schedule("")
    async with AsyncPublisher(server.base, "wrong-key", backoff=0.0) as publisher:
        with pytest.raises(PublishError) as info:
            await publisher.cancel_schedule("01JA3S0P7FB7WVYS67X316M32S")
        assert info.value.code == "UNAUTHORIZED"
    await no_schedule_pending(server)
