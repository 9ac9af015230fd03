"""Client frame parsing and server frame building (spec §5, §18.1)."""

from __future__ import annotations

import orjson
import pytest

from tidings.core import protocol
from tidings.core.json import loads, loads_object
from tidings.errors import ErrorCode, ProtocolError


@pytest.mark.parametrize(
    "text,command",
    [
        ('{"event":"hotsock.ping"}', protocol.Ping()),
        ('{"event":"hotsock.pong"}', protocol.Pong()),
        ('{"event":"hotsock.heartbeat"}', protocol.Heartbeat()),
        ('{"event":"hotsock.subscribe","channel":"c"}', protocol.Subscribe("c", None)),
        (
            '{"event":"hotsock.subscribe","channel":"c","data":{"token":"t"}}',
            protocol.Subscribe("c", "t"),
        ),
        ('{"event":"hotsock.subscribe","channel":"c","data":{}}', protocol.Subscribe("c", None)),
        (
            '{"event":"hotsock.subscribe","channel":"c","data":{"resumeFrom":7}}',
            protocol.Subscribe("c", None, resume=True, resume_from=7),
        ),
        (
            '{"event":"hotsock.subscribe","channel":"c","data":{"resumeFrom":null,"token":"t"}}',
            protocol.Subscribe("c", "t", resume=True, resume_from=None),
        ),
        ('{"event":"hotsock.unsubscribe","channel":"c"}', protocol.Unsubscribe("c")),
        ('{"channel":"c","event":"e","data":[1]}', protocol.ClientMessage("c", "e", [1])),
        ('{"event":"e"}', protocol.ClientMessage(None, "e", None)),
        (
            '{"channel":"c","event":"e","scheduleExpression":"at(2030-01-01T00:00:00)",'
            '"scheduleExpressionTimezone":"UTC"}',
            protocol.ClientMessage("c", "e", None, "at(2030-01-01T00:00:00)", "UTC"),
        ),
        (
            '{"event":"hotsock.messageReaction","channel":"c","data":{"reaction":"x"}}',
            protocol.MessageReaction("c", {"reaction": "x"}),
        ),
        ('{"event":"hotsock.messageReaction"}', protocol.MessageReaction(None, None)),
        (
            '{"event":"hotsock.umdUpdate","channel":"c","data":{"token":"t"}}',
            protocol.UmdUpdate("c", "t"),
        ),
        ('{"event":"hotsock.umdUpdate","data":{"token":5}}', protocol.UmdUpdate(None, 5)),
        ('{"event":"hotsock.umdUpdate"}', protocol.UmdUpdate(None, None)),
        ('{"event":"hotsock.umdUpdate","data":{}}', protocol.UmdUpdate(None, None)),
        (
            '{"event":"hotsock.channelStorageSet","channel":"g","key":"k","data":{"a":1}}',
            protocol.ChannelStorageSet("g", "k", {"a": 1}, None, None),
        ),
        (
            '{"event":"hotsock.channelStorageSet","channel":"g","key":5,'
            '"scheduleExpression":"at(2030-01-01T00:00:00)","scheduleExpressionTimezone":"UTC"}',
            protocol.ChannelStorageSet("g", 5, None, "at(2030-01-01T00:00:00)", "UTC"),
        ),
        (
            '{"event":"hotsock.channelStorageGet","channel":"g","key":"k"}',
            protocol.ChannelStorageGet("g", "k"),
        ),
        ('{"event":"hotsock.channelStorageGet"}', protocol.ChannelStorageGet(None, None)),
    ],
)
def test_parse_client_frame_commands(text: str, command: protocol.Command) -> None:
    """Each client frame becomes its command."""
    assert protocol.parse_client_frame(text) == command


@pytest.mark.parametrize(
    "text,code,channel",
    [
        ("nope", ErrorCode.INVALID_MESSAGE, None),
        ("[]", ErrorCode.INVALID_MESSAGE, None),
        ('{"channel":1,"event":"e"}', ErrorCode.INVALID_MESSAGE, None),
        ('{"channel":"c"}', ErrorCode.INVALID_EVENT, "c"),
        ('{"channel":"c","event":1}', ErrorCode.INVALID_MESSAGE, "c"),
        ('{"channel":"c","event":"hotsock.nope"}', ErrorCode.INVALID_EVENT, "c"),
        ('{"event":"hotsock.subscribe"}', ErrorCode.INVALID_CHANNEL, None),
        ('{"event":"hotsock.unsubscribe","channel":""}', ErrorCode.INVALID_CHANNEL, None),
        ('{"event":"hotsock.subscribe","channel":"c","data":[]}', ErrorCode.INVALID_MESSAGE, "c"),
        (
            '{"event":"hotsock.subscribe","channel":"c","data":{"token":5}}',
            ErrorCode.INVALID_SUBSCRIBE_TOKEN,
            "c",
        ),
        ('{"event":"hotsock.umdUpdate","channel":"c","data":"t"}', ErrorCode.INVALID_MESSAGE, "c"),
        ('{"event":"hotsock.umdUpdate","data":[]}', ErrorCode.INVALID_MESSAGE, None),
    ],
)
def test_parse_client_frame_errors(text: str, code: ErrorCode, channel: str | None) -> None:
    """Malformed frames raise ProtocolError with the right code and the channel as sent."""
    with pytest.raises(ProtocolError) as info:
        protocol.parse_client_frame(text)
    assert info.value.code is code and info.value.channel == channel
    assert str(info.value).startswith(code.value)


def test_json_loads_rejects_deep_nesting_and_non_objects() -> None:
    with pytest.raises(ProtocolError):
        loads(b"[" * 2000 + b"]" * 2000)
    with pytest.raises(ProtocolError) as info:
        loads_object(b"[1]", what="body")
    assert info.value.message == "body must be a JSON object"
    assert loads_object('{"a":1}') == {"a": 1}


def test_server_frames_are_compact_json() -> None:
    """Builders emit exactly the documented shapes."""
    assert orjson.loads(
        protocol.connected_frame("id=", "2024-01-01T00:00:00Z", "s", "u", None)
    ) == {
        "event": "hotsock.connected",
        "data": {
            "connectionId": "id=",
            "connectionExpiresAt": "2024-01-01T00:00:00Z",
            "connectionSecret": "s",
        },
        "meta": {"uid": "u", "umd": None},
    }
    assert protocol.subscribed_frame("c", uid=None, umd=None, alias="a", members=[], auto=True) == (
        b'{"event":"hotsock.subscribed","channel":"c","data":{"members":[],"autoSubscribed":true},'
        b'"meta":{"channelAlias":"a","uid":null,"umd":null}}'
    )
    assert protocol.subscribed_frame("c", uid=None, umd=None, resumed=True, replayed=3) == (
        b'{"event":"hotsock.subscribed","channel":"c","data":{"resumed":true,"replayed":3},'
        b'"meta":{"uid":null,"umd":null}}'
    )
    assert protocol.unsubscribed_frame("c", uid="u", umd=1, alias=None) == (
        b'{"event":"hotsock.unsubscribed","channel":"c","data":{},"meta":{"uid":"u","umd":1}}'
    )
    meta = protocol.meta_json("u", b'{"k":"\\u0000"}')
    frame = protocol.message_frame("01ID", "e", "c", b'"d"', meta)
    assert orjson.loads(frame) == {
        "id": "01ID",
        "event": "e",
        "channel": "c",
        "data": "d",
        "meta": {"uid": "u", "umd": {"k": "\x00"}},
    }
    assert protocol.message_frame("01ID", "e", "c", b"null", None) == (
        b'{"id":"01ID","event":"e","channel":"c","data":null}'
    )
    assert orjson.loads(protocol.error_frame(ErrorCode.NOT_SUBSCRIBED, "m", "c")) == {
        "event": "hotsock.error",
        "channel": "c",
        "error": {"code": "NOT_SUBSCRIBED", "message": "m"},
    }
    assert "channel" not in orjson.loads(protocol.error_frame(ErrorCode.INVALID_MESSAGE, "m"))
    assert orjson.loads(protocol.pong_frame()) == {"event": "hotsock.pong", "data": {}}
    assert orjson.loads(protocol.keepalive_frame()) == {"event": "hotsock.keepAlive", "data": {}}
