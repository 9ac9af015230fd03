"""Token revocations (spec §24.2): what an operator may revoke, and whether a verified token is
revoked. Pure: the caller passes the clock.

Two kinds, at most one of each per target (a later revocation replaces the earlier one):

* ``jti``: every token carrying that ``jti`` (connect, subscribe and umd tokens alike);
* ``uid`` with ``issuedBefore``: every token of that user whose ``iat`` is older than
  ``issuedBefore``, or that has no numeric ``iat`` at all.

A revocation lasts until its ``expiresAt``; past it the token is accepted again (a jti
revocation should therefore last until the token's own ``exp``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tidings.core.names import UID_MAX_CHARS
from tidings.core.tokens import Claims
from tidings.errors import ErrorCode, ProtocolError

__all__ = [
    "JTI_MAX_CHARS",
    "Revocation",
    "RevocationKind",
    "RevocationSet",
    "parse_revocation",
    "parse_target",
]

JTI_MAX_CHARS = 1024  # bounds what one revocation stores; real token IDs are far shorter


class RevocationKind(enum.StrEnum):
    JTI = "jti"
    UID = "uid"


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation, as stored and as every node caches it."""

    kind: RevocationKind
    value: str  # the jti, or the uid
    issued_before_ms: int | None  # uid only: tokens with an older iat (or none) are refused
    created_ms: int  # Unix ms
    expires_ms: int  # Unix ms; the revocation ends here

    def body(self) -> dict[str, Any]:
        """The API's JSON shape: ``{"jti"|"uid", "issuedBefore"?, "createdAt", "expiresAt"}``
        with NumericDates (Unix seconds, fractions kept when given)."""
        out: dict[str, Any] = {self.kind.value: self.value}
        if self.issued_before_ms is not None:
            out["issuedBefore"] = _seconds(self.issued_before_ms)
        out["createdAt"] = _seconds(self.created_ms)
        out["expiresAt"] = _seconds(self.expires_ms)
        return out

    def revokes(self, claims: Claims, uid: str | None, now_ms: int) -> bool:
        """Whether this revocation refuses ``claims`` now; ``uid`` is the user the token acts
        for (its own ``uid``, else the connection's)."""
        if now_ms >= self.expires_ms:
            return False
        if self.kind is RevocationKind.JTI:
            return claims.jti == self.value
        if uid != self.value:
            return False
        iat = claims.raw.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
            return True  # no usable iat: the token cannot prove it is newer
        assert self.issued_before_ms is not None  # uid revocations always carry it
        return iat * 1000 < self.issued_before_ms


class RevocationSet:
    """The revocations in force on this node, indexed for one dict lookup per kind."""

    def __init__(self) -> None:
        self._by: dict[RevocationKind, dict[str, Revocation]] = {k: {} for k in RevocationKind}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by.values())

    def replace(self, revocations: Iterable[Revocation]) -> None:
        """Forget everything and hold exactly ``revocations``."""
        for index in self._by.values():
            index.clear()
        for revocation in revocations:
            self.add(revocation)

    def add(self, revocation: Revocation) -> None:
        """Hold ``revocation``, replacing one of the same kind and value."""
        self._by[revocation.kind][revocation.value] = revocation

    def remove(self, kind: RevocationKind, value: str) -> Revocation | None:
        """Drop the revocation of ``kind`` and ``value``; return it, or None."""
        return self._by[kind].pop(value, None)

    def items(self, now_ms: int) -> list[Revocation]:
        """The revocations still in force, by kind then value."""
        return [
            r
            for kind in RevocationKind
            for _, r in sorted(self._by[kind].items())
            if now_ms < r.expires_ms
        ]

    def find(self, claims: Claims, uid: str | None, now_ms: int) -> Revocation | None:
        """The revocation refusing ``claims`` now (``uid`` as for ``Revocation.revokes``)."""
        if claims.jti is not None:
            by_jti = self._by[RevocationKind.JTI].get(claims.jti)
            if by_jti is not None and by_jti.revokes(claims, uid, now_ms):
                return by_jti
        if uid is not None:
            by_uid = self._by[RevocationKind.UID].get(uid)
            if by_uid is not None and by_uid.revokes(claims, uid, now_ms):
                return by_uid
        return None


def parse_revocation(
    body: Any, *, now: float, default_ttl_seconds: float, leeway_seconds: float = 0
) -> Revocation:
    """Validate a ``POST /revocations`` body.

    Args:
        body: the parsed JSON body: ``{"jti": str}`` or ``{"uid": str, "issuedBefore"?:
            NumericDate}``, each with an optional ``expiresAt`` (NumericDate).
        now: the current Unix time in seconds.
        default_ttl_seconds: how long a revocation without ``expiresAt`` lasts.
        leeway_seconds: how far ``issuedBefore`` may lie in the future (clock skew).

    Returns:
        The revocation; ``issuedBefore`` defaults to ``now`` (every token issued so far).

    Raises:
        ProtocolError: ``INVALID_MESSAGE`` naming the field at fault.
    """
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object")
    has_jti, has_uid = body.get("jti") is not None, body.get("uid") is not None
    if has_jti == has_uid:
        raise _invalid("a revocation needs exactly one of jti or uid")
    now_ms = int(now * 1000)
    expires = _numeric(body, "expiresAt")
    if expires is None:
        expires_ms = now_ms + int(default_ttl_seconds * 1000)
    elif expires <= now:
        raise _invalid("expiresAt must lie in the future")
    else:
        expires_ms = math.ceil(expires * 1000)
    if has_jti:
        if body.get("issuedBefore") is not None:
            raise _invalid("issuedBefore applies to uid revocations only")
        jti = _target(body["jti"], "jti", JTI_MAX_CHARS)
        return Revocation(RevocationKind.JTI, jti, None, now_ms, expires_ms)
    uid = _target(body["uid"], "uid", UID_MAX_CHARS)
    issued_before = _numeric(body, "issuedBefore")
    if issued_before is None:
        issued_before = now
    elif issued_before > now + leeway_seconds:
        raise _invalid("issuedBefore must not lie in the future")
    # rounded up: a token issued a fraction of a millisecond before the cutoff stays refused
    return Revocation(RevocationKind.UID, uid, math.ceil(issued_before * 1000), now_ms, expires_ms)


def parse_target(kind: str, value: str) -> tuple[RevocationKind, str]:
    """The revocation a ``DELETE /revocations/{kind}/{value}`` names.

    Raises:
        ProtocolError: ``NOT_FOUND`` for an unknown kind, ``INVALID_MESSAGE`` for a bad value.
    """
    try:
        parsed = RevocationKind(kind)
    except ValueError:
        raise ProtocolError(
            ErrorCode.NOT_FOUND, f"unknown revocation kind {kind!r}; use jti or uid"
        ) from None
    limit = JTI_MAX_CHARS if parsed is RevocationKind.JTI else UID_MAX_CHARS
    return parsed, _target(value, parsed.value, limit)


# Private functions


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, message)


def _target(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid(f"{field} must be a non-empty string")
    if len(value) > limit:
        raise _invalid(f"{field} must be at most {limit} characters")
    return value


def _numeric(body: dict[str, Any], field: str) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(f"{field} must be a NumericDate (Unix seconds)")
    if value < 0:
        raise _invalid(f"{field} must not be negative")
    return float(value)


def _seconds(ms: int) -> int | float:
    return ms // 1000 if ms % 1000 == 0 else ms / 1000
