"""Presence members of one channel (spec §7). Pure: the hub feeds joins, leaves and updates and
sends the frames this module builds.

Members are the subscriptions' users deduplicated by ``uid``, ordered by the time the uid first
joined; a member's ``umd`` is that of the uid's latest join or update.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import orjson

from tidings.core.json import dumps
from tidings.errors import ErrorCode, ProtocolError

__all__ = ["MEMBERS_MAX_BYTES", "Change", "PresenceChannel", "member_event_frame", "same_json"]

MEMBERS_MAX_BYTES = 102_400


class Change(enum.Enum):
    NONE = "none"
    ADDED = "hotsock.memberAdded"
    REMOVED = "hotsock.memberRemoved"
    UPDATED = "hotsock.memberUpdated"


@dataclass(slots=True)
class _Member:
    uid: str
    umd: Any
    encoded: bytes  # compact {"uid":…,"umd":…}; its length counts against the capacity
    holders: set[str] = field(default_factory=set)  # subscription keys (connection IDs)


def _encode(uid: str, umd: Any) -> bytes:
    return dumps({"uid": uid, "umd": umd})


def same_json(a: Any, b: Any) -> bool:
    """Deep JSON equality: key order does not matter, but ``true`` is not ``1``."""
    return dumps(a, option=orjson.OPT_SORT_KEYS) == dumps(b, option=orjson.OPT_SORT_KEYS)


class PresenceChannel:
    """The member list of one presence channel."""

    def __init__(self, channel: str, *, max_bytes: int = MEMBERS_MAX_BYTES) -> None:
        self.channel = channel
        self._members: dict[str, _Member] = {}  # uid -> member, in first-join order
        self._size = 0  # sum of len(member.encoded)
        self._max_bytes = max_bytes

    # Public methods

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._members)

    def members(self) -> list[dict[str, Any]]:
        return [{"uid": m.uid, "umd": m.umd} for m in self._members.values()]

    def members_json(self) -> bytes:
        return b"[" + b",".join(m.encoded for m in self._members.values()) + b"]"

    def check_join(self, uid: str, umd: Any) -> None:
        """Raise ``PRESENCE_CHANNEL_CAPACITY_REACHED`` if admitting would exceed the cap."""
        member = self._members.get(uid)
        new = len(_encode(uid, umd))
        old = len(member.encoded) if member is not None else 0
        if member is not None and same_json(member.umd, umd):
            return
        if self._size - old + new > self._max_bytes:
            raise ProtocolError(
                ErrorCode.PRESENCE_CHANNEL_CAPACITY_REACHED,
                f"presence channel member payload limit ({self._max_bytes} bytes) reached",
                channel=self.channel,
            )

    def join(self, holder: str, uid: str, umd: Any) -> Change:
        """Add ``holder``'s subscription for ``uid``. Call ``check_join`` first."""
        member = self._members.get(uid)
        if member is None:
            member = _Member(uid, umd, _encode(uid, umd), {holder})
            self._members[uid] = member
            self._size += len(member.encoded)
            return Change.ADDED
        member.holders.add(holder)
        return self._set_umd(member, umd)

    def update(self, uid: str, umd: Any) -> Change:
        """A umd update of a present member; UPDATED only when the value changed."""
        member = self._members.get(uid)
        if member is None:
            return Change.NONE
        return self._set_umd(member, umd)

    def leave(self, holder: str, uid: str) -> tuple[Change, dict[str, Any] | None]:
        """Remove ``holder``'s subscription; returns REMOVED with the member when it was the
        uid's last one."""
        member = self._members.get(uid)
        if member is None or holder not in member.holders:
            return Change.NONE, None
        member.holders.discard(holder)
        if member.holders:
            return Change.NONE, None
        del self._members[uid]
        self._size -= len(member.encoded)
        return Change.REMOVED, {"uid": member.uid, "umd": member.umd}

    def member(self, uid: str) -> dict[str, Any] | None:
        member = self._members.get(uid)
        return None if member is None else {"uid": member.uid, "umd": member.umd}

    # Private methods

    def _set_umd(self, member: _Member, umd: Any) -> Change:
        if same_json(member.umd, umd):
            return Change.NONE
        self._size -= len(member.encoded)
        member.umd = umd
        member.encoded = _encode(member.uid, umd)
        self._size += len(member.encoded)
        return Change.UPDATED


def member_event_frame(
    change: Change, channel: str, member: dict[str, Any], members_json: bytes
) -> bytes:
    """``hotsock.memberAdded/Removed/Updated`` (no ``id``, no ``meta``; spec §5.2)."""
    head = dumps({"event": change.value, "channel": channel})
    return head[:-1] + b',"data":{"member":' + dumps(member) + b',"members":' + members_json + b"}}"
