"""Client frames in, server frames out (spec §5, §18.1). Pure: text in, typed commands out.

``parse_client_frame`` turns one WebSocket text frame into a command object or raises
``ProtocolError``; the ``*_frame`` builders return the compact JSON bytes of a server frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidings.core.json import dumps, loads
from tidings.errors import ErrorCode, ProtocolError

__all__ = [
    "ChannelStorageGet",
    "ChannelStorageSet",
    "ClientMessage",
    "Command",
    "Heartbeat",
    "MessageReaction",
    "Ping",
    "Pong",
    "Subscribe",
    "UmdUpdate",
    "Unsubscribe",
    "connected_frame",
    "error_frame",
    "keepalive_frame",
    "message_frame",
    "meta_json",
    "parse_client_frame",
    "pong_frame",
    "subscribed_frame",
    "unsubscribed_frame",
]


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str  # as the client sent it (may be an alias)
    token: str | None
    resume: bool = False  # ``data.resumeFrom`` was sent (tidings extension, spec §24.1)
    resume_from: Any = None  # its value, unchecked: a bad one is never an error


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A client-initiated channel message (spec §8)."""

    channel: Any  # validated by the hub, which also resolves aliases
    event: str
    data: Any
    schedule_expression: Any = None  # ``scheduleExpression`` (spec §14), checked by the hub
    schedule_timezone: Any = None  # ``scheduleExpressionTimezone``


@dataclass(frozen=True, slots=True)
class MessageReaction:
    """``hotsock.messageReaction`` (spec §12); ``data`` is checked by ``core.reactions``."""

    channel: str | None  # as the client sent it (may be an alias)
    data: Any


@dataclass(frozen=True, slots=True)
class UmdUpdate:
    """``hotsock.umdUpdate`` (spec §13): per subscription when ``channel`` is given, else for
    the connection."""

    channel: str | None  # as the client sent it (may be an alias)
    token: Any  # verified by the hub; anything but a valid umd token is INVALID_UMD_TOKEN


@dataclass(frozen=True, slots=True)
class ChannelStorageSet:
    """``hotsock.channelStorageSet`` (spec §5.1, §11); the hub validates every field."""

    channel: str | None  # as the client sent it (may be an alias)
    key: Any
    data: Any  # absent and null both delete
    schedule_expression: Any
    schedule_timezone: Any


@dataclass(frozen=True, slots=True)
class ChannelStorageGet:
    """``hotsock.channelStorageGet`` (spec §5.1)."""

    channel: str | None  # as the client sent it (may be an alias)
    key: Any


Command = (
    Subscribe
    | Unsubscribe
    | Ping
    | Pong
    | Heartbeat
    | ClientMessage
    | MessageReaction
    | UmdUpdate
    | ChannelStorageSet
    | ChannelStorageGet
)

_SIMPLE: dict[str, Command] = {
    "hotsock.ping": Ping(),
    "hotsock.pong": Pong(),
    "hotsock.heartbeat": Heartbeat(),
}


def parse_client_frame(text: str | bytes) -> Command:
    """Parse one client text frame.

    Raises:
        ProtocolError: ``INVALID_MESSAGE`` for non-JSON/non-object frames or wrong field types,
            ``INVALID_EVENT`` for a missing or unknown ``hotsock.*`` event, ``INVALID_CHANNEL``
            for a missing channel where one is required. ``.channel`` is set when known.
    """
    frame = loads(text)
    if not isinstance(frame, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "frame must be a JSON object")
    channel = frame.get("channel")
    sent_channel = channel if isinstance(channel, str) else None
    if channel is not None and not isinstance(channel, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "channel must be a string")
    event = frame.get("event")
    if event is None:
        raise ProtocolError(ErrorCode.INVALID_EVENT, "event is required", channel=sent_channel)
    if not isinstance(event, str):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, "event must be a string", channel=sent_channel
        )
    simple = _SIMPLE.get(event)
    if simple is not None:
        return simple
    if event in ("hotsock.subscribe", "hotsock.unsubscribe"):
        if channel is None or channel == "":
            raise ProtocolError(ErrorCode.INVALID_CHANNEL, "channel is required")
        if event == "hotsock.unsubscribe":
            return Unsubscribe(channel)
        data = frame.get("data")
        token = _subscribe_token(data, channel)
        if isinstance(data, dict) and "resumeFrom" in data:
            return Subscribe(channel, token, resume=True, resume_from=data["resumeFrom"])
        return Subscribe(channel, token)
    if event == "hotsock.messageReaction":
        return MessageReaction(channel, frame.get("data"))
    if event == "hotsock.umdUpdate":
        return UmdUpdate(channel, _umd_token(frame.get("data"), sent_channel))
    if event == "hotsock.channelStorageSet":
        return ChannelStorageSet(
            channel,
            frame.get("key"),
            frame.get("data"),
            frame.get("scheduleExpression"),
            frame.get("scheduleExpressionTimezone"),
        )
    if event == "hotsock.channelStorageGet":
        return ChannelStorageGet(channel, frame.get("key"))
    if event.startswith("hotsock."):
        raise ProtocolError(
            ErrorCode.INVALID_EVENT, f"unknown or unsupported event {event!r}", channel=sent_channel
        )
    return ClientMessage(
        channel,
        event,
        frame.get("data"),
        frame.get("scheduleExpression"),
        frame.get("scheduleExpressionTimezone"),
    )


def _subscribe_token(data: Any, channel: str) -> str | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "data must be an object", channel=channel)
    token = data.get("token")
    if token is not None and not isinstance(token, str):
        raise ProtocolError(
            ErrorCode.INVALID_SUBSCRIBE_TOKEN, "token must be a string", channel=channel
        )
    return token


def _umd_token(data: Any, channel: str | None) -> Any:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "data must be an object", channel=channel)
    return data.get("token")


# Server frames. Field order mirrors Hotsock's examples (spec §0).


def _meta(uid: str | None, umd: Any, alias: str | None = None) -> dict[str, Any]:
    if alias is None:
        return {"uid": uid, "umd": umd}
    return {"channelAlias": alias, "uid": uid, "umd": umd}


def connected_frame(
    connection_id: str, expires_at: str, secret: str, uid: str | None, umd: Any
) -> bytes:
    return dumps(
        {
            "event": "hotsock.connected",
            "data": {
                "connectionId": connection_id,
                "connectionExpiresAt": expires_at,
                "connectionSecret": secret,
            },
            "meta": _meta(uid, umd),
        }
    )


def subscribed_frame(
    channel: str,
    *,
    uid: str | None,
    umd: Any,
    alias: str | None = None,
    members: list[dict[str, Any]] | None = None,
    auto: bool = False,
    resumed: bool | None = None,
    replayed: int = 0,
) -> bytes:
    """``resumed`` is None unless the subscribe asked to resume (spec §24.1)."""
    data: dict[str, Any] = {}
    if members is not None:
        data["members"] = members
    if auto:
        data["autoSubscribed"] = True
    if resumed is not None:
        data["resumed"] = resumed
        data["replayed"] = replayed
    return dumps(
        {
            "event": "hotsock.subscribed",
            "channel": channel,
            "data": data,
            "meta": _meta(uid, umd, alias),
        }
    )


def unsubscribed_frame(channel: str, *, uid: str | None, umd: Any, alias: str | None) -> bytes:
    return dumps(
        {
            "event": "hotsock.unsubscribed",
            "channel": channel,
            "data": {},
            "meta": _meta(uid, umd, alias),
        }
    )


def message_frame(
    message_id: str, event: str, channel: str, data_json: bytes, meta_json: bytes | None
) -> bytes:
    """A channel message, spliced from pre-encoded JSON so ``data`` is encoded only once."""
    head = dumps({"id": message_id, "event": event, "channel": channel})
    tail = b"}" if meta_json is None else b',"meta":' + meta_json + b"}"
    return head[:-1] + b',"data":' + data_json + tail


def meta_json(uid: str | None, umd_json: bytes) -> bytes:
    return b'{"uid":' + dumps(uid) + b',"umd":' + umd_json + b"}"


def error_frame(code: ErrorCode, message: str, channel: str | None = None) -> bytes:
    frame: dict[str, Any] = {"event": "hotsock.error"}
    if channel is not None:
        frame["channel"] = channel
    frame["error"] = {"code": code.value, "message": message}
    return dumps(frame)


def pong_frame() -> bytes:
    return b'{"event":"hotsock.pong","data":{}}'


def keepalive_frame() -> bytes:
    return b'{"event":"hotsock.keepAlive","data":{}}'
