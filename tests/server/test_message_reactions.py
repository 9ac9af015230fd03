"""Message reactions (spec §9.4, §10.2, §12, §15) through real WebSocket and HTTP clients."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import MS, Client, Server, StartServer

from tidings.core.ids import is_ulid, ulid_ms

YEAR = 31_536_000
CHANNEL = "chat.room"


def chat(
    uid: str | None,
    *,
    echo: bool = True,
    react: Any = True,
    history_start: int | None = 0,
    umd: Any = None,
) -> dict[str, Any]:
    """Claims in the shape of Hotsock's chat example: stored chat that may be reacted to, and
    ``hotsock.messageReaction`` echo so the reactor sees its own reactions."""
    messages: dict[str, Any] = {"chat": {"publish": True, "store": YEAR, "react": react}}
    if echo:
        messages["hotsock.messageReaction"] = {"echo": True}
    directives: dict[str, Any] = {"subscribe": True, "messages": messages}
    if history_start is not None:
        directives["historyStart"] = history_start
    claims: dict[str, Any] = {"channels": {"chat.*": directives}}
    if uid is not None:
        claims["uid"] = uid
    if umd is not None:
        claims["umd"] = umd
    return claims


def react_frame(message_id: Any, reaction: Any = "👍", action: Any = "add") -> dict[str, Any]:
    return {
        "event": "hotsock.messageReaction",
        "channel": CHANNEL,
        "data": {"messageId": message_id, "reaction": reaction, "action": action},
    }


async def stored_message(server: Server, event: str = "chat", **extra: Any) -> str:
    """Publish a stored server message on CHANNEL and return its ID."""
    body = {"channel": CHANNEL, "event": event, "data": "hi", "store": -1}
    body.update(extra)
    answer = await server.publish({**body, "eagerIdGeneration": True})
    return str(answer["id"])


async def reactions_of(server: Server, client: Client, **extra: Any) -> list[dict[str, Any]]:
    _, body = await server.call(client, "listMessages", {"channel": CHANNEL, **extra}, status=200)
    return [m.get("reactions") for m in body["messages"]]


@pytest.fixture
async def sqlite_server(start_server: StartServer, tmp_path: Path) -> Server:
    return await start_server(store=f"sqlite:///{tmp_path}/t.db", sweep_interval_seconds=0.2)


async def test_chat_example_flow(sqlite_server: Server) -> None:
    """Two users chat; Jim reacts and un-reacts; both see the events, Jim through echo; the
    reloaded history shows the counts, then the expanded items, then nothing."""
    server = sqlite_server
    jim = await server.connect(chat("Jim", umd={"name": "Jim H."}))
    pam = await server.connect(chat("Pam", echo=False))
    await jim.subscribe(CHANNEL)
    await pam.subscribe(CHANNEL)
    await pam.send({"channel": CHANNEL, "event": "chat", "data": "Hello!"})
    message = await jim.expect("chat")

    await jim.send(react_frame(message["id"]))
    for client in (pam, jim):
        added = await client.expect("hotsock.messageReactionAdded")
        assert list(added) == ["id", "event", "channel", "data", "meta"]
        assert is_ulid(added["id"]) and added["id"] > message["id"]
        assert added["channel"] == CHANNEL
        assert added["data"] == {"messageId": message["id"], "reaction": "👍", "action": "add"}
        assert added["meta"] == {"uid": "Jim", "umd": {"name": "Jim H."}}
    await pam.send(react_frame(message["id"], "👍"))
    await pam.nothing()  # no echo for Pam
    assert (await jim.expect("hotsock.messageReactionAdded"))["meta"]["uid"] == "Pam"

    await jim.send(react_frame(message["id"]))  # a repeated add is a silent no-op
    await jim.nothing()
    await pam.nothing()

    assert await reactions_of(server, pam) == [{"👍": {"count": 2}}]
    assert await reactions_of(server, pam, expandReactions=True) == [
        {"👍": {"count": 2, "items": [{"uid": "Jim", "umd": {"name": "Jim H."}}, {"uid": "Pam"}]}}
    ]

    await jim.send(react_frame(message["id"], action="remove"))
    for client in (pam, jim):
        removed = await client.expect("hotsock.messageReactionRemoved")
        assert removed["data"] == {
            "messageId": message["id"],
            "reaction": "👍",
            "action": "remove",
        }
        assert removed["meta"] == {"uid": "Jim", "umd": {"name": "Jim H."}}
    await jim.send(react_frame(message["id"], action="remove"))  # a missing remove: no-op
    await pam.send(react_frame(message["id"], action="remove"))
    await jim.expect("hotsock.messageReactionRemoved")
    await jim.nothing()
    await pam.nothing()
    assert await reactions_of(server, pam) == [None]
    assert await reactions_of(server, pam, expandReactions=True) == [{}]


async def test_reaction_events_keep_their_place_in_the_channel_order(server: Server) -> None:
    """Messages and reactions published back to back arrive in ID order."""
    jim = await server.connect(chat("Jim", echo=False))
    pam = await server.connect(chat("Pam"))
    await jim.subscribe(CHANNEL)
    await pam.subscribe(CHANNEL)
    target = await stored_message(server)
    await pam.expect("chat")
    await jim.expect("chat")
    for n in range(5):
        await jim.send({"channel": CHANNEL, "event": "chat", "data": n})
        await jim.send(react_frame(target, f"r{n}"))
    frames = [await pam.recv() for _ in range(10)]
    assert [f["event"] for f in frames] == ["chat", "hotsock.messageReactionAdded"] * 5
    assert [f["data"] for f in frames[::2]] == list(range(5))
    ids = [f["id"] for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == 10


@pytest.mark.parametrize(
    "frame,code",
    [
        ({"event": "hotsock.messageReaction", "data": {}}, "INVALID_CHANNEL"),
        ({**react_frame("X"), "channel": "a b"}, "INVALID_CHANNEL"),
        ({**react_frame("X"), "data": "👍"}, "INVALID_REACTION"),
        ({**react_frame("X"), "data": None}, "INVALID_REACTION"),
        (react_frame("not-a-ulid"), "INVALID_REACTION"),
        (react_frame(None), "INVALID_REACTION"),
        (react_frame("01JA3S0TNEC2QBYMZRBMCEXGNW", ""), "INVALID_REACTION"),
        (react_frame("01JA3S0TNEC2QBYMZRBMCEXGNW", "   "), "INVALID_REACTION"),
        (react_frame("01JA3S0TNEC2QBYMZRBMCEXGNW", "x" * 101), "INVALID_REACTION"),
        (react_frame("01JA3S0TNEC2QBYMZRBMCEXGNW", "a#b"), "INVALID_REACTION"),
        (react_frame("01JA3S0TNEC2QBYMZRBMCEXGNW", 7), "INVALID_REACTION"),
        (react_frame("01JA3S0TNEC2QBYMZRBMCEXGNW", action="toggle"), "INVALID_REACTION"),
        (react_frame("01JA3S0TNEC2QBYMZRBMCEXGNW"), "MESSAGE_NOT_FOUND"),
    ],
)
async def test_websocket_reaction_bad_input(
    server: Server, frame: dict[str, Any], code: str
) -> None:
    """Malformed reactions get their error code and change nothing."""
    client = await server.connect(chat("Jim"))
    await client.subscribe(CHANNEL)
    await client.send(frame)
    error = await client.expect("hotsock.error")
    assert error["error"]["code"] == code, error
    if isinstance(frame.get("channel"), str):
        assert error["channel"] == frame["channel"]
    await client.nothing()


async def test_reaction_refusals_come_in_the_spec_order(server: Server) -> None:
    """INVALID_REACTION before SUBSCRIPTION_REQUIRED before USER_ID_REQUIRED before
    MESSAGE_NOT_FOUND before REACTION_PERMISSION_DENIED."""
    target = await stored_message(server)
    anonymous = await server.connect(chat(None, react=False))

    async def refusal(client: Client, frame: dict[str, Any]) -> str:
        await client.send(frame)
        error = await client.expect("hotsock.error")
        return str(error["error"]["code"])

    assert await refusal(anonymous, react_frame(target, "#")) == "INVALID_REACTION"
    assert await refusal(anonymous, react_frame(target)) == "SUBSCRIPTION_REQUIRED"
    await anonymous.subscribe(CHANNEL)
    assert await refusal(anonymous, react_frame(target)) == "USER_ID_REQUIRED"
    denied = await server.connect(chat("Jim", react=False))
    await denied.subscribe(CHANNEL)
    missing = "01JA3S0TNEC2QBYMZRBMCEXGNW"
    assert await refusal(denied, react_frame(missing)) == "MESSAGE_NOT_FOUND"
    assert await refusal(denied, react_frame(target)) == "REACTION_PERMISSION_DENIED"


@pytest.mark.parametrize(
    "react,allowed,denied",
    [
        (True, ["👍", "anything"], []),
        (["👍", "❤️"], ["👍", "❤️"], ["🎉"]),
        (False, [], ["👍"]),
        (None, [], ["👍"]),
    ],
)
async def test_react_directive_true_allow_list_and_false(
    server: Server, react: Any, allowed: list[str], denied: list[str]
) -> None:
    """``react: true`` allows any value, an array only its values, ``false`` or nothing none."""
    target = await stored_message(server)
    client = await server.connect(chat("Jim", react=react))
    await client.subscribe(CHANNEL)
    for value in allowed:
        await client.send(react_frame(target, value))
        assert (await client.expect("hotsock.messageReactionAdded"))["data"]["reaction"] == value
    for value in denied:
        await client.send(react_frame(target, value))
        error = await client.expect("hotsock.error")
        assert error["error"]["code"] == "REACTION_PERMISSION_DENIED"


async def test_react_resolves_against_the_target_messages_event(server: Server) -> None:
    """``react`` is looked up for the reacted-to message's event, not for the reaction event;
    an explicit ``false`` on a matching key wins over ``true``."""
    claims = {
        "uid": "Jim",
        "channels": {
            "chat.*": {
                "subscribe": True,
                "historyStart": 0,
                "messages": {
                    "chat": {"react": True},
                    "poll*": {"react": ["yes", "no"]},
                    "pollx": {"react": False},
                    "hotsock.messageReaction": {"echo": True},
                },
            }
        },
    }
    chat_id = await stored_message(server, "chat")
    poll_id = await stored_message(server, "poll")
    locked_id = await stored_message(server, "pollx")
    news_id = await stored_message(server, "news")
    client = await server.connect(claims)
    await client.subscribe(CHANNEL)
    outcomes = []
    for target, value in [
        (chat_id, "🎉"),
        (poll_id, "yes"),
        (poll_id, "🎉"),
        (locked_id, "yes"),
        (news_id, "yes"),
    ]:
        await client.send(react_frame(target, value))
        frame = await client.recv()
        outcomes.append(frame["event"] if "error" not in frame else frame["error"]["code"])
    assert outcomes == [
        "hotsock.messageReactionAdded",
        "hotsock.messageReactionAdded",
        "REACTION_PERMISSION_DENIED",
        "REACTION_PERMISSION_DENIED",
        "REACTION_PERMISSION_DENIED",
    ]


async def test_reacting_outside_the_history_window_is_not_found(server: Server) -> None:
    """Without ``historyStart`` only messages since the subscription may be reacted to."""
    old = await stored_message(server)
    await asyncio.sleep(5 * MS)
    client = await server.connect(chat("Jim", history_start=None))
    await client.subscribe(CHANNEL)
    await client.send(react_frame(old))
    assert (await client.expect("hotsock.error"))["error"]["code"] == "MESSAGE_NOT_FOUND"
    await asyncio.sleep(5 * MS)
    new = await stored_message(server)
    await client.expect("chat")
    await client.send(react_frame(new))
    await client.expect("hotsock.messageReactionAdded")
    _, body = await server.call(
        client, "listReactions", {"channel": CHANNEL, "messageId": old}, status=404
    )
    assert body["error"]["code"] == "MESSAGE_NOT_FOUND"


async def test_unstored_messages_cannot_be_reacted_to(server: Server) -> None:
    """A message that was only delivered, never stored, is not found."""
    client = await server.connect(chat("Jim"))
    await client.subscribe(CHANNEL)
    answer = await server.publish(
        {"channel": CHANNEL, "event": "chat", "data": 1, "eagerIdGeneration": True}
    )
    await client.expect("chat")
    await client.send(react_frame(answer["id"]))
    assert (await client.expect("hotsock.error"))["error"]["code"] == "MESSAGE_NOT_FOUND"


async def test_reactions_vanish_with_their_message(sqlite_server: Server) -> None:
    """Once the message expires its reactions are gone without a removal event, and it can be
    neither reacted to nor listed."""
    server = sqlite_server
    client = await server.connect(chat("Jim"))
    await client.subscribe(CHANNEL)
    target = await stored_message(server, store=1)
    await client.expect("chat")
    await client.send(react_frame(target))
    await client.expect("hotsock.messageReactionAdded")
    _, body = await server.call(
        client, "listReactions", {"channel": CHANNEL, "messageId": target}, status=200
    )
    assert body == {"reactions": [{"reaction": "👍", "uid": "Jim"}]}
    await asyncio.sleep(max(0.0, ulid_ms(target) / 1000 + 1.05 - time.time()))
    await client.send(react_frame(target, "❤️"))
    assert (await client.expect("hotsock.error"))["error"]["code"] == "MESSAGE_NOT_FOUND"
    await server.call(
        client, "listReactions", {"channel": CHANNEL, "messageId": target}, status=404
    )
    await client.nothing(wait=400 * MS)  # the sweeper runs; nobody is told


async def test_http_publish_message_reacts(server: Server) -> None:
    """``publishMessage`` with ``hotsock.messageReaction`` answers 202 and fans out like the
    WebSocket; its refusals use the §18 statuses."""
    jim = await server.connect(chat("Jim"))
    pam = await server.connect(chat("Pam"))
    await jim.subscribe(CHANNEL)
    await pam.subscribe(CHANNEL)
    target = await stored_message(server)
    await jim.expect("chat")
    await pam.expect("chat")
    body: dict[str, Any] = {
        "channel": CHANNEL,
        "event": "hotsock.messageReaction",
        "data": {"messageId": target, "reaction": "👍", "action": "add"},
    }
    _, answer = await server.call(jim, "publishMessage", body, status=202)
    assert answer == {"channel": CHANNEL, "event": "hotsock.messageReaction"}
    for client in (jim, pam):  # an HTTP reaction echoes to the same connection's socket
        added = await client.expect("hotsock.messageReactionAdded")
        assert added["meta"] == {"uid": "Jim", "umd": None}
    await server.call(jim, "publishMessage", body, status=202)  # repeated: still 202
    await pam.nothing()

    bad = {**body, "data": {**body["data"], "reaction": "#"}}
    _, error = await server.call(jim, "publishMessage", bad, status=400)
    assert error["error"]["code"] == "INVALID_REACTION"
    missing = {**body, "data": {**body["data"], "messageId": "01JA3S0TNEC2QBYMZRBMCEXGNW"}}
    _, error = await server.call(jim, "publishMessage", missing, status=404)
    assert error["error"]["code"] == "MESSAGE_NOT_FOUND"
    stranger = await server.connect(chat("Andy"))
    _, error = await server.call(stranger, "publishMessage", body, status=403)
    assert error["error"]["code"] == "SUBSCRIPTION_REQUIRED"
    anonymous = await server.connect(chat(None))
    await anonymous.subscribe(CHANNEL)
    _, error = await server.call(anonymous, "publishMessage", body, status=403)
    assert error["error"]["code"] == "USER_ID_REQUIRED"
    refused = await server.connect(chat("Kevin", react=["❤️"]))
    await refused.subscribe(CHANNEL)
    _, error = await server.call(refused, "publishMessage", body, status=403)
    assert error["error"]["code"] == "REACTION_PERMISSION_DENIED"


async def test_server_publish_reacts_as_the_given_uid(server: Server) -> None:
    """``POST /publish`` reactions need no subscription or permission; ``uid`` is required
    (400) and ``umd`` optional; the event carries them as ``meta``."""
    watcher = await server.connect(chat("Pam"))
    await watcher.subscribe(CHANNEL)
    target = await stored_message(server)
    await watcher.expect("chat")
    body: dict[str, Any] = {
        "channel": CHANNEL,
        "event": "hotsock.messageReaction",
        "data": {"messageId": target, "reaction": "🤖", "action": "add"},
        "uid": "bot",
        "umd": {"kind": "bot"},
    }
    answer = await server.publish(body)
    assert answer == {"channel": CHANNEL, "event": "hotsock.messageReaction"}
    added = await watcher.expect("hotsock.messageReactionAdded")
    assert added["meta"] == {"uid": "bot", "umd": {"kind": "bot"}}
    assert added["data"]["reaction"] == "🤖"
    await server.publish({**body, "data": {**body["data"], "action": "remove"}})
    assert (await watcher.expect("hotsock.messageReactionRemoved"))["meta"]["uid"] == "bot"

    no_uid = {k: v for k, v in body.items() if k != "uid"}
    error = await server.publish(no_uid, status=400)
    assert error["error"]["code"] == "USER_ID_REQUIRED"
    error = await server.publish({**body, "uid": ""}, status=400)
    assert error["error"]["code"] == "USER_ID_REQUIRED"
    error = await server.publish({**body, "uid": 5}, status=400)
    assert error["error"]["code"] == "INVALID_MESSAGE"
    error = await server.publish({**body, "umd": "x" * 1100}, status=400)
    assert error["error"]["code"] == "INVALID_MESSAGE"
    error = await server.publish({**body, "data": {"messageId": target}}, status=400)
    assert error["error"]["code"] == "INVALID_REACTION"
    gone = {**body, "data": {**body["data"], "messageId": "01JA3S0TNEC2QBYMZRBMCEXGNW"}}
    error = await server.publish(gone, status=404)
    assert error["error"]["code"] == "MESSAGE_NOT_FOUND"
    error = await server.publish([body], status=400)
    assert error["error"]["code"] == "INVALID_EVENT"
    await watcher.nothing()


async def test_list_reactions_in_creation_order(server: Server) -> None:
    """``listReactions`` returns ``{reaction, uid, umd?}`` items by creation; bad requests
    get their errors."""
    target = await stored_message(server)
    users = [("Jim", {"n": 1}), ("Pam", None), ("Andy", None)]
    clients = []
    for uid, umd in users:
        client = await server.connect(chat(uid, umd=umd, echo=False))
        await client.subscribe(CHANNEL)
        clients.append(client)
    for client, value in zip([*clients, clients[0]], ["❤️", "👍", "❤️", "👍"], strict=True):
        await server.call(
            client,
            "publishMessage",
            {
                "channel": CHANNEL,
                "event": "hotsock.messageReaction",
                "data": {"messageId": target, "reaction": value, "action": "add"},
            },
            status=202,
        )
    _, body = await server.call(
        clients[1], "listReactions", {"channel": CHANNEL, "messageId": target}, status=200
    )
    assert body == {
        "reactions": [
            {"reaction": "❤️", "uid": "Jim", "umd": {"n": 1}},
            {"reaction": "👍", "uid": "Pam"},
            {"reaction": "❤️", "uid": "Andy"},
            {"reaction": "👍", "uid": "Jim", "umd": {"n": 1}},
        ]
    }
    assert await reactions_of(server, clients[1]) == [{"❤️": {"count": 2}, "👍": {"count": 2}}]
    plain = await stored_message(server)
    _, body = await server.call(
        clients[1], "listReactions", {"channel": CHANNEL, "messageId": plain}, status=200
    )
    assert body == {"reactions": []}
    for request, status, code in [
        ({"channel": CHANNEL}, 400, "INVALID_MESSAGE"),
        ({"channel": CHANNEL, "messageId": "nope"}, 400, "INVALID_MESSAGE"),
        ({"messageId": target}, 400, "INVALID_CHANNEL"),
        ({"channel": "chat.other", "messageId": target}, 403, "SUBSCRIPTION_REQUIRED"),
        ({"channel": CHANNEL, "messageId": "01JA3S0TNEC2QBYMZRBMCEXGNW"}, 404, "MESSAGE_NOT_FOUND"),
    ]:
        _, body = await server.call(clients[1], "listReactions", request, status=status)
        assert body["error"]["code"] == code


async def test_list_messages_reactions_on_every_record_that_has_them(server: Server) -> None:
    """``reactions`` appears only on records with reactions, or on all with
    ``expandReactions``; a non-boolean ``expandReactions`` is refused."""
    client = await server.connect(chat("Jim", echo=False))
    await client.subscribe(CHANNEL)
    ids = [await stored_message(server) for _ in range(3)]
    await client.send(react_frame(ids[1], "👀"))
    await asyncio.sleep(50 * MS)
    assert await reactions_of(server, client) == [None, {"👀": {"count": 1}}, None]
    assert await reactions_of(server, client, reverse=True) == [None, {"👀": {"count": 1}}, None]
    assert await reactions_of(server, client, expandReactions=True) == [
        {},
        {"👀": {"count": 1, "items": [{"uid": "Jim"}]}},
        {},
    ]
    assert await reactions_of(server, client, expandReactions=False) == [
        None,
        {"👀": {"count": 1}},
        None,
    ]
    for value in ("yes", 1, [True]):
        _, body = await server.call(
            client, "listMessages", {"channel": CHANNEL, "expandReactions": value}, status=400
        )
        assert body["error"]["code"] == "INVALID_MESSAGE"


async def test_reactions_survive_a_restart(start_server: StartServer, tmp_path: Path) -> None:
    """A SQLite node restarted on the same file still shows the reactions."""
    url = f"sqlite:///{tmp_path}/t.db"
    first = await start_server(store=url)
    client = await first.connect(chat("Jim"))
    await client.subscribe(CHANNEL)
    target = await stored_message(first)
    await client.expect("chat")
    await client.send(react_frame(target))
    await client.expect("hotsock.messageReactionAdded")
    await client.close()
    await first.node.stop()
    second = await start_server(store=url)
    reader = await second.connect(chat("Pam"))
    await reader.subscribe(CHANNEL)
    assert await reactions_of(second, reader, expandReactions=True) == [
        {"👍": {"count": 1, "items": [{"uid": "Jim"}]}}
    ]


class CountingStore:
    """Wraps the real store and counts the read calls ``listMessages`` makes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name in ("list_messages", "reaction_counts", "list_reactions", "get_message"):

            async def counted(*args: Any, **kwargs: Any) -> Any:
                self.reads.append(name)
                return await attribute(*args, **kwargs)

            return counted
        return attribute


@pytest.mark.parametrize("expand", [False, True])
async def test_a_full_page_with_reactions_is_two_queries(
    start_server: StartServer, tmp_path: Path, expand: bool
) -> None:
    """A 100-message page where every message has reactions costs one query for the messages
    and one for all their reactions."""
    counting: list[CountingStore] = []

    def wrap(store: Any) -> Any:
        counting.append(CountingStore(store))
        return counting[0]

    server = await start_server(store=f"sqlite:///{tmp_path}/t.db", wrap_store=wrap)
    answers = await server.publish(
        [
            {"channel": CHANNEL, "event": "chat", "data": n, "store": -1, "eagerIdGeneration": True}
            for n in range(100)
        ]
    )
    await asyncio.gather(
        *(
            server.publish(
                {
                    "channel": CHANNEL,
                    "event": "hotsock.messageReaction",
                    "data": {"messageId": answer["id"], "reaction": value, "action": "add"},
                    "uid": uid,
                }
            )
            for answer in answers
            for uid, value in (("a", "👍"), ("b", "👍"), ("c", "🎉"))
        )
    )
    client = await server.connect(chat("Jim"))
    await client.subscribe(CHANNEL)
    counting[0].reads.clear()
    _, body = await server.call(
        client, "listMessages", {"channel": CHANNEL, "expandReactions": expand}, status=200
    )
    assert len(body["messages"]) == 100
    assert counting[0].reads == ["list_messages", "list_reactions" if expand else "reaction_counts"]
    for message in body["messages"]:
        reactions = message["reactions"]
        assert {value: r["count"] for value, r in reactions.items()} == {"👍": 2, "🎉": 1}
        if expand:  # the three reactions were made concurrently: any creation order
            uids = sorted(item["uid"] for r in reactions.values() for item in r["items"])
            assert uids == ["a", "b", "c"]
