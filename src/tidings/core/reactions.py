"""Message reactions (spec §9.4, §12): request validation, reaction event frames and the
``reactions`` object of stored records. Pure: values in, bytes out.

A request is checked here only for its own shape (``INVALID_REACTION``); whether the caller may
react, and whether the target message exists, is the hub's business.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tidings.core.ids import is_ulid
from tidings.core.json import dumps
from tidings.errors import ErrorCode, ProtocolError

__all__ = [
    "REACTION_EVENT",
    "REACTION_MAX_BYTES",
    "ReactionAction",
    "ReactionRequest",
    "counts_json",
    "expanded_json",
    "parse_reaction",
    "reaction_data_json",
    "reaction_item_json",
]

REACTION_EVENT = "hotsock.messageReaction"
"""The event a client (or server) publishes to react; also the event key whose ``echo`` decides
whether the reactor receives its own reaction events."""

REACTION_MAX_BYTES = 100


class ReactionAction(enum.StrEnum):
    """``data.action`` of a reaction request, and the event that announces it."""

    ADD = "add"
    REMOVE = "remove"

    @property
    def event(self) -> str:
        """The event name subscribers receive for this action."""
        if self is ReactionAction.ADD:
            return "hotsock.messageReactionAdded"
        return "hotsock.messageReactionRemoved"


@dataclass(frozen=True, slots=True)
class ReactionRequest:
    """A well-formed ``data`` of ``hotsock.messageReaction``."""

    message_id: str  # a ULID; the target message on the request's channel
    reaction: str
    action: ReactionAction


def parse_reaction(data: Any, *, channel: str | None = None) -> ReactionRequest:
    """Check the ``data`` of a reaction request (spec §2.1, §12).

    Args:
        data: ``data`` as decoded from JSON.
        channel: the channel as the client sent it, put on the error.

    Returns:
        The request; the caller then checks subscription, uid, target and permission, in that
        order.

    Raises:
        ProtocolError: ``INVALID_REACTION`` naming what is wrong.
    """
    if not isinstance(data, dict):
        raise _invalid("data must be an object with messageId, reaction and action", channel)
    message_id = data.get("messageId")
    if message_id is None:
        raise _invalid("data.messageId is required", channel)
    if not is_ulid(message_id):
        raise _invalid("data.messageId must be a message ID (ULID)", channel)
    reaction = data.get("reaction")
    if not isinstance(reaction, str):
        raise _invalid("data.reaction must be a string", channel)
    if not reaction.strip():
        raise _invalid("data.reaction must not be blank", channel)
    try:
        size = len(reaction.encode("utf-8"))
    except UnicodeEncodeError:
        raise _invalid("data.reaction must be valid Unicode", channel) from None
    if size > REACTION_MAX_BYTES:
        raise _invalid(f"data.reaction is {size} bytes; the limit is {REACTION_MAX_BYTES}", channel)
    if "#" in reaction:
        raise _invalid("data.reaction must not contain '#'", channel)
    # tidings choice, as for names: control characters are never printable, and PostgreSQL
    # cannot store U+0000 in text
    if any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in reaction):
        raise _invalid("data.reaction must not contain control characters", channel)
    action = data.get("action")
    if action not in ("add", "remove"):
        raise _invalid('data.action must be "add" or "remove"', channel)
    return ReactionRequest(message_id, reaction, ReactionAction(action))


def reaction_data_json(request: ReactionRequest) -> bytes:
    """``data`` of a reaction event: ``{messageId, reaction, action}`` (spec §5.2)."""
    return dumps(
        {
            "messageId": request.message_id,
            "reaction": request.reaction,
            "action": request.action.value,
        }
    )


def reaction_item_json(uid: str, umd_json: str) -> bytes:
    """One reactor as ``expandReactions`` lists it: ``umd`` omitted when null (spec §9.4)."""
    if umd_json == "null":
        return b'{"uid":' + dumps(uid) + b"}"
    return b'{"uid":' + dumps(uid) + b',"umd":' + umd_json.encode() + b"}"


def counts_json(counts: Iterable[tuple[str, int]]) -> bytes:
    """The ``reactions`` object of a record from (reaction, count) pairs, in the given order;
    ``{}`` when there are none."""
    parts = [
        dumps(reaction) + b':{"count":' + str(count).encode() + b"}" for reaction, count in counts
    ]
    return b"{" + b",".join(parts) + b"}"


def expanded_json(items: Iterable[tuple[str, str, str]]) -> bytes:
    """The ``reactions`` object with ``items``, from (reaction, uid, umd JSON) in creation
    order: values appear in the order of their first reaction; ``{}`` when there are none."""
    grouped: dict[str, list[bytes]] = {}
    for reaction, uid, umd_json in items:
        grouped.setdefault(reaction, []).append(reaction_item_json(uid, umd_json))
    parts = [
        dumps(reaction)
        + b':{"count":'
        + str(len(reactors)).encode()
        + b',"items":['
        + b",".join(reactors)
        + b"]}"
        for reaction, reactors in grouped.items()
    ]
    return b"{" + b",".join(parts) + b"}"


def _invalid(message: str, channel: str | None) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_REACTION, message, channel=channel)
