"""Revocation requests and matching (spec §24.2)."""

from __future__ import annotations

from typing import Any

import pytest

from tidings.core.revocations import (
    JTI_MAX_CHARS,
    Revocation,
    RevocationKind,
    RevocationSet,
    parse_revocation,
    parse_target,
)
from tidings.core.tokens import Claims
from tidings.errors import ErrorCode, ProtocolError

NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)
DAY = 86_400


def claims(**raw: Any) -> Claims:
    return Claims(raw=raw, scopes=frozenset({"connect"}), exp=int(NOW) + 60, jti=raw.get("jti"))


def parse(body: Any, **kw: Any) -> Revocation:
    return parse_revocation(body, now=NOW, default_ttl_seconds=DAY, **kw)


def refused(body: Any, message: str, **kw: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(body, **kw)
    assert info.value.code is ErrorCode.INVALID_MESSAGE
    assert message in info.value.message


def test_revocation_jti_defaults_its_expiry_to_the_ttl() -> None:
    """A jti revocation without expiresAt lasts the default TTL."""
    r = parse({"jti": "abc"})
    assert (r.kind, r.value, r.issued_before_ms) == (RevocationKind.JTI, "abc", None)
    assert r.created_ms == NOW_MS and r.expires_ms == NOW_MS + DAY * 1000
    assert r.body() == {"jti": "abc", "createdAt": int(NOW), "expiresAt": int(NOW) + DAY}


def test_revocation_uid_keeps_issued_before_and_expires_at() -> None:
    """issuedBefore and expiresAt are kept to the millisecond, fractions shown as given."""
    r = parse({"uid": "u1", "issuedBefore": NOW - 10.5, "expiresAt": NOW + 100})
    assert r.issued_before_ms == NOW_MS - 10_500
    assert r.body() == {
        "uid": "u1",
        "issuedBefore": NOW - 10.5,
        "createdAt": int(NOW),
        "expiresAt": int(NOW) + 100,
    }


def test_revocation_uid_without_issued_before_means_now() -> None:
    """A uid revocation without issuedBefore refuses every token issued so far."""
    assert parse({"uid": "u1"}).issued_before_ms == NOW_MS


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({}, "exactly one of jti or uid"),
        ({"jti": None, "uid": None}, "exactly one of jti or uid"),
        ({"jti": "a", "uid": "b"}, "exactly one of jti or uid"),
        ({"jti": ""}, "jti must be a non-empty string"),
        ({"jti": 5}, "jti must be a non-empty string"),
        ({"jti": "x" * (JTI_MAX_CHARS + 1)}, "at most 1024"),
        ({"uid": "x" * 129}, "at most 128"),
        ({"jti": "a", "issuedBefore": NOW}, "uid revocations only"),
        ({"uid": "a", "issuedBefore": "yesterday"}, "issuedBefore must be a NumericDate"),
        ({"uid": "a", "issuedBefore": True}, "issuedBefore must be a NumericDate"),
        ({"uid": "a", "issuedBefore": -1}, "must not be negative"),
        ({"uid": "a", "issuedBefore": NOW + 5}, "must not lie in the future"),
        ({"jti": "a", "expiresAt": NOW}, "expiresAt must lie in the future"),
        ({"jti": "a", "expiresAt": "soon"}, "expiresAt must be a NumericDate"),
        ({"jti": "a", "expiresAt": float("inf")}, "expiresAt must be a NumericDate"),
    ],
)
def test_revocation_bad_body_is_refused(body: Any, message: str) -> None:
    """Each malformed body is refused with INVALID_MESSAGE naming the field."""
    refused(body, message)


def test_revocation_issued_before_within_leeway_is_accepted() -> None:
    """The token leeway also covers an operator clock slightly ahead."""
    assert parse({"uid": "a", "issuedBefore": NOW + 5}, leeway_seconds=10).issued_before_ms


def test_revocation_jti_refuses_that_jti_until_expiry() -> None:
    """A jti revocation matches the jti, whatever the uid, until it expires."""
    r = parse({"jti": "abc", "expiresAt": NOW + 10})
    assert r.revokes(claims(jti="abc"), "anyone", NOW_MS)
    assert not r.revokes(claims(jti="other"), None, NOW_MS)
    assert not r.revokes(claims(jti="abc"), None, NOW_MS + 10_000)


def test_revocation_uid_refuses_older_or_missing_iat() -> None:
    """Tokens of the user with an older iat, or none, or a junk iat, are refused."""
    r = parse({"uid": "u1", "issuedBefore": NOW - 100})
    assert r.revokes(claims(iat=NOW - 101), "u1", NOW_MS)
    assert r.revokes(claims(), "u1", NOW_MS)
    assert r.revokes(claims(iat="old"), "u1", NOW_MS)
    assert r.revokes(claims(iat=True), "u1", NOW_MS)
    assert not r.revokes(claims(iat=NOW - 100), "u1", NOW_MS)
    assert not r.revokes(claims(iat=NOW - 101), "u2", NOW_MS)
    assert not r.revokes(claims(iat=NOW - 101), None, NOW_MS)


def test_revocation_set_finds_by_jti_then_uid() -> None:
    """find() returns the matching revocation; add replaces, remove drops."""
    rs = RevocationSet()
    by_jti = parse({"jti": "j"})
    by_uid = parse({"uid": "u", "issuedBefore": NOW - 100})
    rs.replace([by_jti, by_uid])
    assert len(rs) == 2
    assert rs.find(claims(jti="j"), "u", NOW_MS) is by_jti
    assert rs.find(claims(jti="k", iat=NOW - 200), "u", NOW_MS) is by_uid
    assert rs.find(claims(jti="k", iat=NOW), "u", NOW_MS) is None
    assert rs.find(claims(), None, NOW_MS) is None
    newer = parse({"uid": "u", "issuedBefore": NOW})
    rs.add(newer)
    assert len(rs) == 2 and rs.find(claims(iat=NOW - 50), "u", NOW_MS) is newer
    assert rs.remove(RevocationKind.JTI, "j") is by_jti
    assert rs.remove(RevocationKind.JTI, "j") is None
    assert rs.find(claims(jti="j"), None, NOW_MS) is None


def test_revocation_set_items_skip_expired() -> None:
    """items() lists live revocations, jti first, each kind by value."""
    rs = RevocationSet()
    b, a = parse({"jti": "b"}), parse({"jti": "a", "expiresAt": NOW + 1})
    u = parse({"uid": "u"})
    rs.replace([u, b, a])
    assert rs.items(NOW_MS) == [a, b, u]
    assert rs.items(NOW_MS + 1000) == [b, u]
    rs.replace([])
    assert rs.items(NOW_MS) == []


def test_revocation_target_parses_kind_and_value() -> None:
    """DELETE targets name a known kind and a valid value."""
    assert parse_target("jti", "abc") == (RevocationKind.JTI, "abc")
    assert parse_target("uid", "u") == (RevocationKind.UID, "u")
    with pytest.raises(ProtocolError) as info:
        parse_target("sub", "x")
    assert info.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(ProtocolError) as info:
        parse_target("uid", "x" * 129)
    assert info.value.code is ErrorCode.INVALID_MESSAGE
