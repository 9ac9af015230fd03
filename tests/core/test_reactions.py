"""Reaction request validation, reaction event data and the ``reactions`` object (§9.4, §12)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tidings.core.reactions import (
    REACTION_MAX_BYTES,
    ReactionAction,
    ReactionRequest,
    counts_json,
    expanded_json,
    parse_reaction,
    reaction_data_json,
    reaction_item_json,
)
from tidings.errors import ErrorCode, ProtocolError

MESSAGE_ID = "01JA3S0TNEC2QBYMZRBMCEXGNW"


def make_data(**fields: Any) -> dict[str, Any]:
    """A valid reaction ``data``, with ``fields`` replaced (None removes a field)."""
    data: dict[str, Any] = {"messageId": MESSAGE_ID, "reaction": "👍", "action": "add"}
    for name, value in fields.items():
        if value is None:
            del data[name]
        else:
            data[name] = value
    return data


@pytest.mark.parametrize(
    "reaction",
    ["👍", "❤️", "+1", "a b", "x" * REACTION_MAX_BYTES, "é" * (REACTION_MAX_BYTES // 2), " ok "],
)
def test_parse_reaction_accepts_valid_values(reaction: str) -> None:
    """Any non-blank value up to 100 UTF-8 bytes without '#' is accepted as given."""
    request = parse_reaction(make_data(reaction=reaction))
    assert request == ReactionRequest(MESSAGE_ID, reaction, ReactionAction.ADD)


def test_parse_reaction_reads_the_action() -> None:
    """``remove`` is the other action; each names its own event."""
    request = parse_reaction(make_data(action="remove"))
    assert request.action is ReactionAction.REMOVE
    assert request.action.event == "hotsock.messageReactionRemoved"
    assert ReactionAction.ADD.event == "hotsock.messageReactionAdded"


@pytest.mark.parametrize(
    "data,message",
    [
        (None, "data must be an object"),
        ([MESSAGE_ID, "👍", "add"], "data must be an object"),
        ("👍", "data must be an object"),
        (make_data(messageId=None), "messageId is required"),
        (make_data(messageId="not-a-ulid"), "messageId must be a message ID"),
        (make_data(messageId=MESSAGE_ID.lower()), "messageId must be a message ID"),
        (make_data(messageId=42), "messageId must be a message ID"),
        (make_data(reaction=None), "reaction must be a string"),
        (make_data(reaction=1), "reaction must be a string"),
        (make_data(reaction=["👍"]), "reaction must be a string"),
        (make_data(reaction=""), "must not be blank"),
        (make_data(reaction="   "), "must not be blank"),
        (make_data(reaction="\u2003\n"), "must not be blank"),
        (make_data(reaction="x" * (REACTION_MAX_BYTES + 1)), "101 bytes"),
        (make_data(reaction="é" * 51), "102 bytes"),
        (make_data(reaction="#"), "must not contain '#'"),
        (make_data(reaction="a#b"), "must not contain '#'"),
        (make_data(reaction="a\x00b"), "control characters"),
        (make_data(reaction="a\x85b"), "control characters"),
        (make_data(reaction="\ud83d"), "valid Unicode"),
        (make_data(action=None), 'action must be "add" or "remove"'),
        (make_data(action="ADD"), 'action must be "add" or "remove"'),
        (make_data(action=True), 'action must be "add" or "remove"'),
    ],
)
def test_parse_reaction_refuses_bad_data(data: Any, message: str) -> None:
    """Every malformed request is ``INVALID_REACTION`` with a readable reason and the channel."""
    with pytest.raises(ProtocolError) as info:
        parse_reaction(data, channel="room.1")
    assert info.value.code is ErrorCode.INVALID_REACTION
    assert message in info.value.message
    assert info.value.channel == "room.1"


def test_reaction_data_json_is_the_event_data() -> None:
    """Reaction events carry ``{messageId, reaction, action}`` in that order."""
    request = ReactionRequest(MESSAGE_ID, "👍", ReactionAction.REMOVE)
    assert (
        reaction_data_json(request)
        == ('{"messageId":"' + MESSAGE_ID + '","reaction":"👍","action":"remove"}').encode()
    )


def test_reaction_item_json_omits_null_umd() -> None:
    """An expanded item has ``umd`` only when it is not null, spliced byte for byte."""
    assert reaction_item_json("Pam", "null") == b'{"uid":"Pam"}'
    assert reaction_item_json("Jim", '{"b":1, "a":2}') == b'{"uid":"Jim","umd":{"b":1, "a":2}}'
    assert reaction_item_json("Jim", "false") == b'{"uid":"Jim","umd":false}'


def test_counts_json_keeps_the_given_order() -> None:
    """Counts appear as given; no reactions is ``{}``."""
    assert counts_json([]) == b"{}"
    encoded = counts_json([("👍", 2), ("❤️", 1)])
    assert encoded == '{"👍":{"count":2},"❤️":{"count":1}}'.encode()
    assert list(orjson.loads(encoded)) == ["👍", "❤️"]


def test_expanded_json_groups_items_by_first_reaction() -> None:
    """Items group under their value, values ordered by their first reaction, items by
    creation; the count equals the number of items."""
    encoded = expanded_json([("👍", "Jim", '{"n":1}'), ("❤️", "Pam", "null"), ("👍", "Pam", "null")])
    assert orjson.loads(encoded) == {
        "👍": {"count": 2, "items": [{"uid": "Jim", "umd": {"n": 1}}, {"uid": "Pam"}]},
        "❤️": {"count": 1, "items": [{"uid": "Pam"}]},
    }
    assert list(orjson.loads(encoded)) == ["👍", "❤️"]
    assert expanded_json([]) == b"{}"
