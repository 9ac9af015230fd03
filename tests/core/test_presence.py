"""PresenceChannel: membership, deduplication and capacity (spec §7)."""

from __future__ import annotations

import pytest

from tidings.core.presence import MEMBERS_MAX_BYTES, Change, PresenceChannel, member_event_frame
from tidings.errors import ErrorCode, ProtocolError


def test_presence_join_new_uid_added_in_first_join_order() -> None:
    """New uids are ADDED and listed in first-join order."""
    p = PresenceChannel("presence.x")
    assert p.join("c1", "b", None) is Change.ADDED
    assert p.join("c2", "a", {"k": 1}) is Change.ADDED
    assert p.members() == [{"uid": "b", "umd": None}, {"uid": "a", "umd": {"k": 1}}]
    assert p.members_json() == b'[{"uid":"b","umd":null},{"uid":"a","umd":{"k":1}}]'
    assert p.size == len(p.members_json()) - 2 - 1  # brackets and one comma


def test_presence_join_same_uid_dedups_and_updates_on_changed_umd() -> None:
    """A second subscription of a uid adds nothing; a different umd is an UPDATE."""
    p = PresenceChannel("presence.x")
    p.join("c1", "a", {"x": 1, "y": 2})
    assert p.join("c2", "a", {"y": 2, "x": 1}) is Change.NONE  # key order is not a change
    assert p.join("c3", "a", {"x": True, "y": 2}) is Change.UPDATED  # true is not 1
    assert len(p) == 1 and p.member("a") == {"uid": "a", "umd": {"x": True, "y": 2}}


def test_presence_leave_removes_only_with_last_holder() -> None:
    p = PresenceChannel("presence.x")
    p.join("c1", "a", None)
    p.join("c2", "a", None)
    assert p.leave("c1", "a") == (Change.NONE, None)
    assert p.leave("c1", "a") == (Change.NONE, None)  # already gone: idempotent
    assert p.leave("c2", "a") == (Change.REMOVED, {"uid": "a", "umd": None})
    assert len(p) == 0 and p.size == 0
    assert p.leave("c9", "zzz") == (Change.NONE, None)


def test_presence_update_changes_only_when_different() -> None:
    p = PresenceChannel("presence.x")
    assert p.update("ghost", 1) is Change.NONE
    p.join("c1", "a", 1)
    assert p.update("a", 1) is Change.NONE
    assert p.update("a", 2) is Change.UPDATED


def test_presence_capacity_default_is_102400_bytes() -> None:
    """100 members of 1017 bytes fit in 102400; the 101st is refused, existing members not."""
    p = PresenceChannel("presence.x")
    pad = "x" * 990
    for i in range(100):
        p.check_join(f"user-{i:03d}", pad)
        p.join(f"c{i}", f"user-{i:03d}", pad)
    assert p.size == 100 * 1017 <= MEMBERS_MAX_BYTES < 101 * 1017
    with pytest.raises(ProtocolError) as info:
        p.check_join("user-new", pad)
    assert info.value.code is ErrorCode.PRESENCE_CHANNEL_CAPACITY_REACHED
    assert info.value.channel == "presence.x"
    p.check_join("user-000", pad)  # same member, same umd: no growth
    p.check_join("user-001", "short")  # shrinking is fine
    with pytest.raises(ProtocolError):
        p.check_join("user-002", pad * 2)  # growing an existing member over the cap


def test_member_event_frame_shape() -> None:
    frame = member_event_frame(
        Change.ADDED, "presence.x", {"uid": "a", "umd": None}, b'[{"uid":"a","umd":null}]'
    )
    assert frame == (
        b'{"event":"hotsock.memberAdded","channel":"presence.x","data":'
        b'{"member":{"uid":"a","umd":null},"members":[{"uid":"a","umd":null}]}}'
    )
