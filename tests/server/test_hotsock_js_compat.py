"""Wire compatibility with the official JS client @hotsock/hotsock-js 1.4.0 (spec §4-§6, §8, §18).

The tests replay, byte for byte, what that client writes on the socket and check that every reply
has the shape its message handler relies on. What the client does, as read from its source:

Connecting
  * Socket URL = the configured URL + ``?token=`` + token, by plain string concatenation (no
    escaping, no subprotocol), so ``ws://host:port?token=…`` (no path) and ``…/v1?token=…`` occur.
    Browsers and the ``ws`` package offer permessage-deflate and send an ``Origin``.
  * The token function's result is checked locally first: three dot-separated base64url segments,
    and an ``exp`` in the past is refused; the call is retried (2 attempts by default).
  * On open it starts a 5 s timer: no ``hotsock.connected`` by then → it closes and reconnects.
    It also starts a loop (every 250 ms) that subscribes bound channels, so plain subscribes can
    go out *before* ``hotsock.connected`` has arrived. Only a subscribe that needs a subscribe
    token waits for the connection ID, because the token function gets ``{channel, connectionId}``.
  * Each received frame goes through ``JSON.parse`` as text; one object per frame.
  * ``hotsock.connected``: reads ``meta.uid``, ``meta.umd``, ``data.connectionSecret``,
    ``data.connectionExpiresAt`` (fed to ``new Date``) and ``data.connectionId`` (which unblocks
    token subscribes). ``data`` and ``meta`` must therefore be objects.

What it sends (exact text)
  * Subscribe: ``{"event":"hotsock.subscribe","channel":C}``; with a token function
    ``{"event":"hotsock.subscribe","channel":C,"data":{"token":T}}``. The object is stringified
    with ``data`` undefined when there is no token, so the key is simply absent.
  * Unsubscribe: ``{"event":"hotsock.unsubscribe","channel":C}``, sent once a channel it holds as
    pending/confirmed has no bindings left (counting bindings under its alias) and was not
    auto-subscribed. C is the key of its channel table: the *real* name for aliased channels.
  * ``sendMessage(event, {channel, data})`` stringifies ``{channel, event, data}``: key order
    channel, event, data; undefined keys vanish (``{"event":"e"}``, ``{"channel":"c","event":"e"}``)
    while ``null`` stays. ``sendMessage("hotsock.ping")`` thus yields ``{"event":"hotsock.ping"}``.
  * Reply to a server ``hotsock.ping``: the literal ``{"event":"hotsock.pong"}``.
  * Heartbeat (option ``heartbeatIntervalSeconds``, 5–600): the literal
    ``{"event":"hotsock.heartbeat"}``, first one 0.9–1.0 × interval after open, then again after
    each send; other traffic does not reset it. Heartbeat and pong are written to the socket as
    these literals — not passed through ``sendMessage``/``JSON.stringify`` a second time, so there
    is no double encoding and no ``channel``/``data`` key.

What it does with server frames
  * ``hotsock.subscribed``: needs ``channel``, object ``data`` and object ``meta``. It stores
    uid = ``meta.uid`` or else the connection's uid (JS ``||``; same for umd), members =
    ``data.members`` or ``[]``, auto = (``data.autoSubscribed === true``), state confirmed. With
    ``meta.channelAlias`` it records alias ↔ real (``channel``) and drops the entry kept under
    the alias, so later frames are routed to bindings made under either name.
  * ``hotsock.unsubscribed``: entry ``channel`` → unsubscribe-confirmed, uid/umd/members cleared.
  * ``hotsock.memberAdded`` / ``hotsock.memberRemoved``: members = ``data.members`` (no fallback:
    must be an array). ``hotsock.memberUpdated`` gets no special handling.
  * ``hotsock.error``: switches on ``error.code`` and updates the entry named by ``channel``:
    ``NOT_SUBSCRIBED`` → unsubscribe-confirmed; ``ALREADY_SUBSCRIBED`` → confirmed;
    ``SUBSCRIBE_PERMISSION_DENIED`` / ``INVALID_SUBSCRIBE_TOKEN`` → failed (retried only when the
    app binds again). Other codes change nothing: a pending subscribe stays pending, no retry.
  * Every frame is then handed to client-wide bindings matching ``event`` and to the channel
    bindings under ``channel`` and under the alias mapped to it.
  * The loop subscribes channels whose state is none, unsubscribe-confirmed or unsubscribe-pending.
    An unbind + quick re-bind therefore sends subscribe while the unsubscribe is in flight; the
    late ``hotsock.unsubscribed`` resets the state and the next tick subscribes once more, which
    must come back as ``ALREADY_SUBSCRIBED`` (treated as success).
  * On close it forgets all channel state and aliases, reconnects with back-off (1 s, ×1.5 plus up
    to 1 s jitter, capped at 20 s) and a fresh token, then subscribes everything again.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import websockets
from tests.conftest import MS, Server, StartServer, make_token

UNDEFINED: Any = object()  # a JS ``undefined`` field: JSON.stringify leaves the key out

PONG_FROM_CLIENT = '{"event":"hotsock.pong"}'
HEARTBEAT = '{"event":"hotsock.heartbeat"}'
PING = '{"event":"hotsock.ping"}'

# The connect-token shape of the client's own test-suite: every channel may be subscribed.
ANY = {"uid": "james", "channels": {"*": {"subscribe": True}}}
CHAT = {
    "uid": "jim",
    "channels": {"room": {"subscribe": True, "messages": {"*": {"publish": True}}}},
}


def stringify(fields: dict[str, Any]) -> str:
    """JSON.stringify of a plain object: compact, insertion order, non-ASCII kept, undefined
    members dropped."""
    return json.dumps(
        {k: v for k, v in fields.items() if v is not UNDEFINED},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def subscribe_frame(channel: str, token: str | None = None) -> str:
    data = {"token": token} if token is not None else UNDEFINED
    return stringify({"event": "hotsock.subscribe", "channel": channel, "data": data})


def unsubscribe_frame(channel: str) -> str:
    return stringify({"event": "hotsock.unsubscribe", "channel": channel})


def message_frame(event: str, channel: Any = UNDEFINED, data: Any = UNDEFINED) -> str:
    return stringify({"channel": channel, "event": event, "data": data})


def _truthy(value: Any) -> bool:
    """JavaScript truthiness for JSON values (``{}`` and ``[]`` are truthy)."""
    if value is None or value is False or value == "":
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    return True


def _object(frame: dict[str, Any], key: str) -> dict[str, Any]:
    value = frame.get(key)
    assert isinstance(value, dict), f"client dereferences {key}.…; got {frame!r}"
    return value


class JsClientModel:
    """The per-connection state hotsock-js keeps, updated the way its message handler updates
    it; an assertion fails wherever the real client would throw on a missing object."""

    def __init__(self) -> None:
        self.connection_id: str | None = None
        self.uid: Any = None
        self.umd: Any = None
        self.channels: dict[str, dict[str, Any]] = {}
        self.alias_to_real: dict[str, str] = {}
        self.real_to_alias: dict[str, str] = {}
        self.frames: list[dict[str, Any]] = []

    def entry(self, name: str) -> dict[str, Any]:
        return self.channels.setdefault(
            name, {"state": None, "uid": None, "umd": None, "members": [], "auto": False}
        )

    def state(self, name: str) -> str | None:
        return self.channels[name]["state"] if name in self.channels else None

    def routes(self, frame: dict[str, Any]) -> list[str]:
        """Names under which channel bindings receive ``frame``."""
        channel = frame.get("channel")
        if not isinstance(channel, str):
            return []
        alias = self.real_to_alias.get(channel)
        return [channel] + ([alias] if alias else [])

    def apply(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        event = frame.get("event")
        if event == "hotsock.connected":
            meta, data = _object(frame, "meta"), _object(frame, "data")
            self.uid, self.umd = meta.get("uid"), meta.get("umd")
            assert isinstance(data.get("connectionId"), str) and data["connectionId"]
            assert isinstance(data.get("connectionSecret"), str) and data["connectionSecret"]
            expires = data.get("connectionExpiresAt")
            assert isinstance(expires, str)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", expires), expires
            self.connection_id = data["connectionId"]
        elif event == "hotsock.subscribed":
            meta, data = _object(frame, "meta"), _object(frame, "data")
            entry = self.entry(self._channel(frame))
            entry["uid"] = meta.get("uid") if _truthy(meta.get("uid")) else self.uid
            entry["umd"] = meta.get("umd") if _truthy(meta.get("umd")) else self.umd
            members = data.get("members") if _truthy(data.get("members")) else []
            assert isinstance(members, list), frame
            entry["members"] = members
            entry["state"] = "subscribeConfirmed"
            entry["auto"] = data.get("autoSubscribed") is True
            alias = meta.get("channelAlias")
            if isinstance(alias, str) and _truthy(alias):
                self.alias_to_real[alias] = frame["channel"]
                self.real_to_alias[frame["channel"]] = alias
                self.channels.pop(alias, None)
        elif event == "hotsock.unsubscribed":
            entry = self.entry(self._channel(frame))
            entry.update(uid=None, umd=None, members=[], state="unsubscribeConfirmed")
        elif event in ("hotsock.memberAdded", "hotsock.memberRemoved"):
            members = _object(frame, "data").get("members")
            assert isinstance(members, list), frame
            self.entry(self._channel(frame))["members"] = members
        elif event == "hotsock.error":
            error = _object(frame, "error")
            assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str)
            new_state = {
                "NOT_SUBSCRIBED": "unsubscribeConfirmed",
                "ALREADY_SUBSCRIBED": "subscribeConfirmed",
                "SUBSCRIBE_PERMISSION_DENIED": "subscribeFailed",
                "INVALID_SUBSCRIBE_TOKEN": "subscribeFailed",
            }.get(error["code"])
            if new_state is not None:
                self.entry(self._channel(frame))["state"] = new_state

    @staticmethod
    def _channel(frame: dict[str, Any]) -> str:
        channel = frame.get("channel")
        assert isinstance(channel, str) and channel, f"client keys its state on channel: {frame}"
        return channel

    def sent_subscribe(self, channel: str) -> None:
        self.entry(channel)["state"] = "subscribePending"

    def sent_unsubscribe(self, channel: str) -> None:
        self.entry(channel)["state"] = "unsubscribePending"


class JsClient:
    """A socket driven the way hotsock-js drives it: exact text out, every reply checked in."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.model = JsClientModel()

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def subscribe(self, channel: str, token: str | None = None) -> None:
        await self.send(subscribe_frame(channel, token))
        self.model.sent_subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self.send(unsubscribe_frame(channel))
        self.model.sent_unsubscribe(channel)

    async def recv(self, timeout: float = 2000 * MS) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), f"binary frame {raw!r}: the client parses text"
        frame = json.loads(raw)
        assert isinstance(frame, dict), raw
        self.model.apply(frame)
        return frame

    async def expect(self, event: str, timeout: float = 2000 * MS) -> dict[str, Any]:
        frame = await self.recv(timeout)
        assert frame.get("event") == event, frame
        return frame

    async def error(self, code: str, channel: str | None) -> dict[str, Any]:
        """The next frame is ``hotsock.error`` with ``code`` and exactly ``channel`` (or none)."""
        frame = await self.expect("hotsock.error")
        assert frame["error"]["code"] == code, frame
        assert frame["error"]["message"], frame
        expected = {"event", "error"} | ({"channel"} if channel is not None else set())
        assert set(frame) == expected, frame
        assert set(frame["error"]) == {"code", "message"}, frame
        if channel is not None:
            assert frame["channel"] == channel, frame
        return frame

    async def nothing(self, wait: float = 150 * MS) -> None:
        try:
            frame = await asyncio.wait_for(self.ws.recv(), wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame!r}")


async def open_js(
    server: Server,
    claims: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    path: str = "",
) -> JsClient:
    """Open a socket like the client does (``<url>?token=<jwt>``, deflate offered, an Origin),
    without reading anything yet."""
    token = token if token is not None else make_token(claims)
    ws = await websockets.connect(
        f"ws://127.0.0.1:{server.node.port}{path}?token={token}",
        origin=websockets.Origin("http://app.example"),
        max_size=None,
    )
    return JsClient(ws)


async def connect_js(server: Server, claims: dict[str, Any] | None = None) -> JsClient:
    client = await open_js(server, claims)
    await client.expect("hotsock.connected")
    return client


async def test_client_frame_builders_match_the_client_bytes() -> None:
    """The builders here produce exactly the text hotsock-js writes."""
    assert subscribe_frame("room") == '{"event":"hotsock.subscribe","channel":"room"}'
    assert (
        subscribe_frame("room", "a.b.c")
        == '{"event":"hotsock.subscribe","channel":"room","data":{"token":"a.b.c"}}'
    )
    assert unsubscribe_frame("room") == '{"event":"hotsock.unsubscribe","channel":"room"}'
    assert message_frame("e", "c", {"x": [1]}) == '{"channel":"c","event":"e","data":{"x":[1]}}'
    assert message_frame("e", "c") == '{"channel":"c","event":"e"}'
    assert message_frame("e", "c", None) == '{"channel":"c","event":"e","data":null}'
    assert message_frame("hotsock.ping") == PING
    assert message_frame("e", data="é") == '{"event":"e","data":"é"}'


@pytest.mark.parametrize("path", ["", "/", "/v1"], ids=["no-path", "root", "v1"])
async def test_client_connect_with_concatenated_url_gets_connected_in_time(
    server: Server, path: str
) -> None:
    """``<url>?token=`` with or without a path opens and gets hotsock.connected well within 5 s."""
    started = time.monotonic()
    client = await open_js(server, {"uid": "james", "umd": {"plan": "pro"}}, path=path)
    connected = await client.expect("hotsock.connected")
    assert time.monotonic() - started < 5
    assert set(connected) == {"event", "data", "meta"}
    assert connected["meta"] == {"uid": "james", "umd": {"plan": "pro"}}
    expires = datetime.strptime(connected["data"]["connectionExpiresAt"], "%Y-%m-%dT%H:%M:%SZ")
    assert expires.replace(tzinfo=UTC).timestamp() > time.time()
    assert client.model.connection_id == connected["data"]["connectionId"]
    await client.nothing()


async def test_client_subscribe_sent_before_connected_is_answered_after_it(
    server: Server,
) -> None:
    """Subscribes written right on open (before reading) get replies after hotsock.connected."""
    client = await open_js(server, {"uid": "james", "channels": {"room": {"subscribe": True}}})
    await client.subscribe("room")
    await client.subscribe("secret")
    await client.expect("hotsock.connected")
    sub = await client.expect("hotsock.subscribed")
    assert sub == {
        "event": "hotsock.subscribed",
        "channel": "room",
        "data": {},
        "meta": {"uid": "james", "umd": None},
    }
    await client.error("SUBSCRIBE_PERMISSION_DENIED", "secret")
    assert client.model.state("room") == "subscribeConfirmed"
    assert client.model.state("secret") == "subscribeFailed"
    assert client.model.channels["room"]["uid"] == "james"


async def test_client_subscribe_on_open_to_auto_subscribed_alias_is_already_subscribed(
    server: Server,
) -> None:
    """An app binding on an auto-subscribed alias: the early subscribe is ALREADY_SUBSCRIBED
    under the alias, after the auto confirmation that carries meta.channelAlias."""
    claims = {"uid": "u", "channels": {"user.123": {"autoSubscribe": True, "alias": "me"}}}
    client = await open_js(server, claims)
    await client.subscribe("me")
    await client.expect("hotsock.connected")
    auto = await client.expect("hotsock.subscribed")
    assert auto == {
        "event": "hotsock.subscribed",
        "channel": "user.123",
        "data": {"autoSubscribed": True},
        "meta": {"channelAlias": "me", "uid": "u", "umd": None},
    }
    await client.error("ALREADY_SUBSCRIBED", "me")
    model = client.model
    assert model.alias_to_real == {"me": "user.123"}
    assert model.channels["user.123"]["auto"] is True
    assert model.state("user.123") == "subscribeConfirmed" and model.state("me") == (
        "subscribeConfirmed"
    )
    await server.publish({"channel": "user.123", "event": "note", "data": 1})
    msg = await client.recv()
    assert model.routes(msg) == ["user.123", "me"]


async def test_client_subscribe_with_token_for_its_connection_id_gets_subscribed(
    server: Server,
) -> None:
    """The token-carrying subscribe (sent once the connection ID is known) gets subscribed with
    the token's uid/umd and alias in meta."""
    client = await connect_js(server, {"uid": "jim"})
    token = make_token(
        {
            "connectionId": client.model.connection_id,
            "umd": {"role": "mod"},
            "channels": {"private.42": {"subscribe": True, "alias": "mine"}},
        },
        scope="subscribe",
    )
    await client.subscribe("mine", token)
    sub = await client.expect("hotsock.subscribed")
    assert sub == {
        "event": "hotsock.subscribed",
        "channel": "private.42",
        "data": {},
        "meta": {"channelAlias": "mine", "uid": "jim", "umd": {"role": "mod"}},
    }
    assert client.model.channels["private.42"]["umd"] == {"role": "mod"}
    assert "mine" not in client.model.channels
    await client.unsubscribe("private.42")  # the client unsubscribes by the real name
    unsub = await client.expect("hotsock.unsubscribed")
    assert unsub["channel"] == "private.42" and unsub["meta"]["channelAlias"] == "mine"
    assert client.model.state("private.42") == "unsubscribeConfirmed"


async def test_client_subscribe_errors_carry_channel_as_sent_and_code(server: Server) -> None:
    """The four codes the client switches on come back with its channel name and error.code,
    and move its channel state the intended way."""
    client = await connect_js(server, {"uid": "jim", "channels": {"room": {"subscribe": True}}})
    await client.subscribe("room")
    await client.expect("hotsock.subscribed")
    await client.subscribe("room")
    await client.error("ALREADY_SUBSCRIBED", "room")
    assert client.model.state("room") == "subscribeConfirmed"

    await client.subscribe("secret")
    await client.error("SUBSCRIBE_PERMISSION_DENIED", "secret")
    assert client.model.state("secret") == "subscribeFailed"

    foreign = make_token(
        {"connectionId": "AAAAAAAAAAAAAAA=", "channels": {"vip": {"subscribe": True}}},
        scope="subscribe",
    )
    await client.subscribe("vip", foreign)
    await client.error("INVALID_SUBSCRIBE_TOKEN", "vip")
    assert client.model.state("vip") == "subscribeFailed"

    await client.unsubscribe("lobby")
    await client.error("NOT_SUBSCRIBED", "lobby")
    assert client.model.state("lobby") == "unsubscribeConfirmed"

    await client.send(PING)
    await client.expect("hotsock.pong")


async def test_client_rebind_after_denied_subscribe_with_token_gets_subscribed(
    server: Server,
) -> None:
    """A failed channel is retried when the app binds again (here with a subscribe token)."""
    client = await connect_js(server, {"uid": "jim"})
    await client.subscribe("vip")
    await client.error("SUBSCRIBE_PERMISSION_DENIED", "vip")
    token = make_token({"uid": "jim", "channels": {"vip": {"subscribe": True}}}, scope="subscribe")
    await client.subscribe("vip", token)
    await client.expect("hotsock.subscribed")
    assert client.model.state("vip") == "subscribeConfirmed"


async def test_client_alias_from_connect_token_round_trips(server: Server) -> None:
    """Bind on an alias: subscribe by alias, messages arrive under the real name and reach the
    alias bindings, unsubscribe goes out under the real name."""
    claims = {
        "uid": "jim",
        "channels": {
            "user.123": {"subscribe": True, "alias": "me", "messages": {"*": {"publish": True}}}
        },
    }
    client = await connect_js(server, claims)
    await client.subscribe("me")
    sub = await client.expect("hotsock.subscribed")
    assert sub["channel"] == "user.123" and sub["meta"] == {
        "channelAlias": "me",
        "uid": "jim",
        "umd": None,
    }
    assert client.model.real_to_alias == {"user.123": "me"}
    await server.publish({"channel": "user.123", "event": "hello", "data": "x"})
    msg = await client.recv()
    assert msg["channel"] == "user.123" and client.model.routes(msg) == ["user.123", "me"]

    other = await connect_js(server, claims)
    await other.subscribe("me")
    await other.expect("hotsock.subscribed")
    await client.send(message_frame("chat", "me", {"t": 1}))  # sendMessage on the alias
    got = await other.recv()
    assert got["channel"] == "user.123" and got["data"] == {"t": 1}

    await client.unsubscribe("user.123")
    unsub = await client.expect("hotsock.unsubscribed")
    assert unsub == {
        "event": "hotsock.unsubscribed",
        "channel": "user.123",
        "data": {},
        "meta": {"channelAlias": "me", "uid": "jim", "umd": None},
    }


async def test_client_denied_alias_subscribe_error_names_the_alias(server: Server) -> None:
    """A refused subscribe by alias reports the alias, the entry the client is waiting on."""
    client = await connect_js(server, {"uid": "jim", "channels": {"user.9": {"alias": "me"}}})
    await client.subscribe("me")
    await client.error("SUBSCRIBE_PERMISSION_DENIED", "me")
    assert client.model.state("me") == "subscribeFailed"


async def test_client_quick_rebind_race_settles_as_subscribed(server: Server) -> None:
    """Unbind + re-bind: unsubscribe, subscribe, then the loop's extra subscribe after the late
    hotsock.unsubscribed; replies settle the channel as confirmed, and delivery works."""
    client = await connect_js(server, ANY)
    await client.subscribe("room")
    await client.expect("hotsock.subscribed")
    await client.unsubscribe("room")
    await client.subscribe("room")  # unsubscribe-pending counts as subscribable
    await client.expect("hotsock.unsubscribed")
    assert client.model.state("room") == "unsubscribeConfirmed"
    await client.subscribe("room")  # the next 250 ms tick
    await client.expect("hotsock.subscribed")
    await client.error("ALREADY_SUBSCRIBED", "room")
    assert client.model.state("room") == "subscribeConfirmed"
    await server.publish({"channel": "room", "event": "e", "data": 1})
    assert (await client.recv())["data"] == 1
    await client.nothing()


async def test_client_send_message_frames_reach_subscribers(server: Server) -> None:
    """sendMessage output (data present, undefined, null, non-ASCII) is delivered with id,
    event, channel, data and meta; the sender gets nothing back."""
    sender = await connect_js(server, CHAT)
    receiver = await connect_js(server, {**CHAT, "uid": "pam"})
    for client in (sender, receiver):
        await client.subscribe("room")
        await client.expect("hotsock.subscribed")
    rich = {"text": "hi", "n": [1, 2.5, True]}
    cases = [
        (message_frame("chat", "room", rich), rich),
        (message_frame("chat", "room"), None),
        (message_frame("chat", "room", None), None),
        (message_frame("chat", "room", "ünïcode ✓"), "ünïcode ✓"),
    ]
    for text, data in cases:
        await sender.send(text)
        msg = await receiver.recv()
        assert set(msg) == {"id", "event", "channel", "data", "meta"}, msg
        assert msg["event"] == "chat" and msg["channel"] == "room" and msg["data"] == data
        assert msg["meta"] == {"uid": "jim", "umd": None}
        assert receiver.model.routes(msg) == ["room"]
    await sender.nothing()


async def test_client_send_message_without_channel_gets_error_and_survives(
    server: Server,
) -> None:
    """``sendMessage(event, {data})`` without a channel is refused without closing the socket."""
    client = await connect_js(server, CHAT)
    await client.send(message_frame("chat", data=1))
    await client.error("INVALID_CHANNEL", None)
    await client.send(message_frame("chat", "room", 1))
    await client.error("PUBLISH_PERMISSION_DENIED", "room")
    await client.send(PING)
    await client.expect("hotsock.pong")


async def test_client_ping_gets_pong_and_its_pong_and_heartbeat_get_nothing(
    server: Server,
) -> None:
    """App ping → pong with object data; the client's literal pong and heartbeat are silent."""
    client = await connect_js(server, {})
    await client.send(PING)
    assert await client.recv() == {"event": "hotsock.pong", "data": {}}
    await client.send(PONG_FROM_CLIENT)
    await client.send(HEARTBEAT)
    await client.nothing()
    await client.send(PING)
    await client.expect("hotsock.pong")


async def test_client_heartbeats_at_its_latest_jitter_keep_a_heartbeat_timeout_socket(
    server: Server,
) -> None:
    """heartbeatIntervalSeconds=5 under a heartbeatTimeout of 6: a heartbeat at 5.0 s after open
    (the latest the client sends) keeps the socket past 6 s."""
    client = await connect_js(server, {"heartbeatTimeout": 6})
    await asyncio.sleep(5.0)
    await client.send(HEARTBEAT)
    await asyncio.sleep(1.5)
    await client.send(PING)
    await client.expect("hotsock.pong")


async def test_client_presence_members_lists_have_the_client_shape(server: Server) -> None:
    """subscribed carries data.members; memberAdded/Removed carry data.members the client copies."""
    claims = {"channels": {"presence.chat": {"subscribe": True}}}
    jim = await connect_js(server, {**claims, "uid": "jim", "umd": {"n": "Jim"}})
    pam = await connect_js(server, {**claims, "uid": "pam"})
    await jim.subscribe("presence.chat")
    sub = await jim.expect("hotsock.subscribed")
    assert sub["data"] == {"members": [{"uid": "jim", "umd": {"n": "Jim"}}]}
    await pam.subscribe("presence.chat")
    sub = await pam.expect("hotsock.subscribed")
    both = [{"uid": "jim", "umd": {"n": "Jim"}}, {"uid": "pam", "umd": None}]
    assert sub["data"] == {"members": both} and sub["meta"] == {"uid": "pam", "umd": None}
    added = await jim.expect("hotsock.memberAdded")
    assert added == {
        "event": "hotsock.memberAdded",
        "channel": "presence.chat",
        "data": {"member": {"uid": "pam", "umd": None}, "members": both},
    }
    assert jim.model.channels["presence.chat"]["members"] == both
    await pam.unsubscribe("presence.chat")
    await pam.expect("hotsock.unsubscribed")
    removed = await jim.expect("hotsock.memberRemoved")
    assert removed["data"]["members"] == both[:1]
    assert jim.model.channels["presence.chat"]["members"] == both[:1]
    assert pam.model.channels["presence.chat"]["members"] == []


async def test_client_reconnect_after_server_stop_gets_fresh_connection(
    start_server: StartServer,
) -> None:
    """A stopping node closes the socket (the client then reconnects); the new socket gets a new
    connection ID and the client's resubscribe works from scratch."""
    first = await start_server()
    client = await connect_js(first, ANY)
    await client.subscribe("room")
    await client.expect("hotsock.subscribed")
    old_id = client.model.connection_id
    await first.node.stop()
    with pytest.raises(websockets.ConnectionClosed) as info:
        await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    first.node.stop = _noop  # type: ignore[method-assign]

    second = await start_server()
    again = await open_js(second, ANY)
    await again.subscribe("room")  # the loop may fire before hotsock.connected
    await again.expect("hotsock.connected")
    await again.expect("hotsock.subscribed")
    assert again.model.connection_id != old_id


async def _noop() -> None:
    return None
