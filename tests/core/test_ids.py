"""Identifiers (spec §2.2): per-channel monotonic ULIDs, connection IDs and secrets."""

from __future__ import annotations

import re
import secrets

import pytest
from ulid import ULID

from tidings.core.ids import (
    ChannelIdMinter,
    is_ulid,
    new_connection_id,
    new_connection_secret,
    new_ulid,
    ulid_floor,
    ulid_ms,
    ulid_to_int,
)


def test_minter_mint_same_millisecond_strictly_increasing() -> None:
    """Many IDs in one millisecond still sort strictly in minting order."""
    minter = ChannelIdMinter()
    ids = [minter.mint("c", 1_700_000_000_000) for _ in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert all(ulid_ms(i) == 1_700_000_000_000 for i in ids)


def test_minter_mint_backwards_clock_keeps_order() -> None:
    """A clock that steps back reuses the last timestamp instead of inverting order."""
    minter = ChannelIdMinter()
    first = minter.mint("c", 2_000_000)
    second = minter.mint("c", 1_000_000)
    assert second > first and ulid_ms(second) == 2_000_000


def test_minter_channels_are_independent() -> None:
    minter = ChannelIdMinter()
    a = minter.mint("a", 5_000)
    b = minter.mint("b", 4_000)
    assert ulid_ms(a) == 5_000 and ulid_ms(b) == 4_000


def test_minter_observe_raises_floor() -> None:
    """An ID seen from elsewhere makes later IDs sort after it; a lower one changes nothing."""
    minter = ChannelIdMinter()
    later = new_ulid(9_000_000)
    minter.observe("c", later)
    minter.observe("c", new_ulid(1))
    assert minter.mint("c", 1_000) > later


def test_minter_forgets_old_channels_when_full() -> None:
    """State is bounded: old channels are dropped once the table is full."""
    minter = ChannelIdMinter(forget_after_ms=1_000, max_channels=3)
    for ch in ("a", "b", "c"):
        minter.mint(ch, 1_000)
    minter.mint("d", 10_000)
    assert set(minter._last) == {"d"}
    assert minter.mint("a", 10_000) > new_ulid(1_000)


def test_ulid_floor_and_ms() -> None:
    assert ulid_floor(1234) <= new_ulid(1234) < ulid_floor(1235)
    assert ulid_floor(-5) == "0" * 26
    assert ulid_ms(ulid_floor(1234)) == 1234
    assert ulid_to_int(ulid_floor(1)) == 1 << 80


def test_is_ulid() -> None:
    assert is_ulid(new_ulid(1)) and is_ulid("7ZZZZZZZZZZZZZZZZZZZZZZZZZ")
    for bad in ("8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "0" * 25, "0" * 25 + "I", "0" * 25 + "u", 5, None):
        assert not is_ulid(bad)


def test_connection_id_and_secret_shapes() -> None:
    ids = {new_connection_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{15}=", i) for i in ids)
    secret = new_connection_secret()
    assert re.fullmatch(r"[A-Za-z0-9]{20}", secret)
    assert new_connection_secret() != secret


def test_encoding_matches_the_ulid_library() -> None:
    """The hand-rolled encoder agrees with python-ulid's on edges and random IDs."""
    for ms in (0, 1, (1 << 48) - 1):
        assert ulid_floor(ms) == str(ULID.from_int(ms << 80))
    for _ in range(2000):
        ulid = new_ulid(secrets.randbits(48))
        assert ulid == str(ULID.from_int(ulid_to_int(ulid)))
        assert is_ulid(ulid)


def test_a_timestamp_past_48_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="128 bits"):
        new_ulid(1 << 48)


def test_ulid_time_ms_reads_the_timestamp_from_the_first_ten_characters() -> None:
    """The fast path agrees with ulid_ms for fresh, floor and extreme IDs."""
    from tidings.core.ids import new_ulid, ulid_floor, ulid_ms, ulid_time_ms

    for ms in (0, 1, 1_733_333_333_333, 2**48 - 1):
        for value in (new_ulid(ms), ulid_floor(ms)):
            assert ulid_time_ms(value[:10].encode()) == ulid_ms(value) == ms
