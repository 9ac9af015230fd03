"""Who may do what at the door: connect and subscribe tokens (spec §4.1, §6.1, §13), their
``singleUse`` claims, Client HTTP API credentials (§10.1) and API keys (§15)."""

from __future__ import annotations

import hmac
import logging
import time

from tidings.broker.base import MAX_CLAIM_TTL_MS, Broker
from tidings.config import Settings
from tidings.core.revocations import RevocationSet
from tidings.core.tokens import Claims, Scope, SigningKey, TokenGate, check_binding
from tidings.errors import ErrorCode, ProtocolError, TokenError
from tidings.hub.connection import Connection

__all__ = ["Auth"]

log = logging.getLogger("tidings.hub")


class Auth:
    """Token verification and the cluster-wide claims that make ``singleUse`` single."""

    def __init__(self, *, settings: Settings, broker: Broker, revoked: RevocationSet) -> None:
        self._broker = broker
        self._revoked = revoked  # kept current by hub/revocations.py
        self._api_keys = tuple(k.value.encode() for k in settings.auth.api_keys)
        self.gate = TokenGate(
            keys=[
                SigningKey.from_setting(k.method, k.value.value, k.kid)
                for k in settings.auth.signing_keys
            ],
            audience=settings.auth.audience,
            issuer=settings.auth.issuer,
            leeway=settings.auth.leeway_seconds,
        )
        self.debug = log.isEnabledFor(logging.DEBUG)

    # Public methods

    async def authenticate(self, token: object) -> Claims:
        """Verify a connect token and consume it when ``singleUse``.

        Raises:
            TokenError: the token is refused; answer 401 ``INVALID_CONNECT_TOKEN``.
        """
        claims = self.gate.verify(token, scope=Scope.CONNECT, now=time.time())
        self._check_revoked(claims, claims.uid)
        await self._claim(claims, "connect token")
        return claims

    def verify_subscribe(self, token: str, conn: Connection, sent: str) -> Claims:
        """A subscribe token bound to ``conn`` (spec §13), or ``INVALID_SUBSCRIBE_TOKEN``."""
        try:
            claims = self.gate.verify(token, scope=Scope.SUBSCRIBE, now=time.time())
            check_binding(claims, connection_id=conn.id, uid=conn.uid)
            self._check_revoked(claims, claims.uid or conn.uid)
        except TokenError as exc:
            raise ProtocolError(ErrorCode.INVALID_SUBSCRIBE_TOKEN, str(exc), channel=sent) from exc
        return claims

    async def consume_subscribe(self, claims: Claims, sent: str) -> bool:
        """Consume a ``singleUse`` subscribe token; True when one was consumed, so a refused
        subscribe can give it back with ``release``."""
        try:
            return await self._claim(claims, "subscribe token")
        except TokenError as exc:
            raise ProtocolError(ErrorCode.INVALID_SUBSCRIBE_TOKEN, str(exc), channel=sent) from exc

    def verify_umd(self, token: object, conn: Connection, sent: str | None) -> Claims:
        """A umd token bound to ``conn`` (spec §3.13, §13), or ``INVALID_UMD_TOKEN``."""
        try:
            claims = self.gate.verify(token, scope=Scope.UMD, now=time.time())
            check_binding(claims, connection_id=conn.id, uid=conn.uid)
            self._check_revoked(claims, claims.uid or conn.uid)
        except TokenError as exc:
            raise ProtocolError(ErrorCode.INVALID_UMD_TOKEN, str(exc), channel=sent) from exc
        return claims

    async def consume_umd(self, claims: Claims, sent: str | None) -> bool:
        """Consume a ``singleUse`` umd token (a tidings choice, spec §3.13); True when one was
        consumed, so a refused update can give it back with ``release``."""
        try:
            return await self._claim(claims, "umd token")
        except TokenError as exc:
            raise ProtocolError(ErrorCode.INVALID_UMD_TOKEN, str(exc), channel=sent) from exc

    async def release(self, claims: Claims) -> None:
        """Undo ``consume_subscribe`` or ``consume_umd``: the operation did not happen."""
        await self._broker.release(f"jti:{claims.jti}", "used")

    def authorize_http(
        self, connections: dict[str, Connection], connection_id: str | None, secret: str | None
    ) -> Connection:
        """The live connection for Client HTTP API credentials (constant-time check).

        Raises:
            ProtocolError: ``UNAUTHORIZED``.
        """
        conn = connections.get(connection_id or "")
        expected = conn.secret.encode() if conn is not None else b"\0" * 20
        given = (secret or "").encode("utf-8", "surrogatepass")
        if conn is None or conn.closed or not hmac.compare_digest(expected, given):
            if self.debug:
                log.debug("! Client HTTP API call refused for connection %r", connection_id)
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "unknown connection or wrong secret")
        return conn

    def check_api_key(self, authorization: str) -> None:
        """Check an ``Authorization: Bearer <key>`` header, or raise ``UNAUTHORIZED``."""
        scheme, _, key = authorization.partition(" ")
        given = key.strip().encode("utf-8", "surrogatepass")
        ok = False
        for secret in self._api_keys:
            # compare bytes: compare_digest raises on non-ASCII str, and every key is tried so
            # the time taken does not reveal which one matched
            ok |= hmac.compare_digest(secret, given)
        if scheme.lower() != "bearer" or not ok:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "missing or invalid API key")

    # Private methods

    def _check_revoked(self, claims: Claims, uid: str | None) -> None:
        """Refuse a revoked token (spec §24.2); ``uid`` is the user it acts for."""
        if self._revoked and self._revoked.find(claims, uid, time.time_ns() // 1_000_000):
            raise TokenError("token has been revoked")

    async def _claim(self, claims: Claims, what: str) -> bool:
        if not claims.single_use or claims.jti is None:
            return False
        # the claim outlives the token (exp is at most MAX_NUMERIC_DATE), and the clamp keeps
        # whatever reaches the broker within what it can hold
        ttl_ms = min(max(1, int((claims.exp - time.time()) * 1000)), MAX_CLAIM_TTL_MS)
        if await self._broker.claim_once(f"jti:{claims.jti}", "used", ttl_ms) is not None:
            raise TokenError(f"{what} was already used (singleUse)")
        return True
