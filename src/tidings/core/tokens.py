"""JWT verification and claim checks (spec §3.2–§3.9, §3.13, §4.1).

:class:`TokenGate` turns a token string into :class:`Claims` or raises :class:`TokenError`. It is
pure: the caller passes ``now``, and the two rules that need state — consuming a ``singleUse``
``jti`` and binding a token to a connection — are left to the caller, which gets
:func:`check_binding` for the latter.

Signatures are checked with joserfc; the header and the claims are checked here, so that the
rules are exactly the spec's: ``iat`` is ignored even in the future, ``exp`` may be an integer or
a fraction, ``typ`` may be absent. A JSON ``null`` counts as an absent claim, except that
:attr:`Claims.has_uid` and :attr:`Claims.has_umd` record a present ``null``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from joserfc import jws
from joserfc.errors import JoseError, UnsupportedAlgorithmError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey

from tidings.core.json import dumps
from tidings.core.names import UID_MAX_CHARS, UMD_MAX_BYTES
from tidings.core.permissions import Grants
from tidings.errors import ConfigError, TokenError

__all__ = [
    "ALGORITHMS",
    "HEARTBEAT_TIMEOUT_RANGE",
    "MAX_NUMERIC_DATE",
    "Claims",
    "Scope",
    "SigningKey",
    "TokenGate",
    "check_binding",
]

# 9999-12-31T23:59:59Z: a later exp or nbf is not a date any issuer means (10**30 has been
# seen) and would overflow the lifetimes derived from it, so the token is refused as invalid.
MAX_NUMERIC_DATE = 253_402_300_799

_HMAC = ("HS256", "HS384", "HS512")
_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_EDDSA_CURVES = ("Ed25519", "Ed448")

#: Every ``alg`` a token may use (spec §3.2). ``none`` is never among them.
ALGORITHMS: frozenset[str] = frozenset((*_HMAC, *_RSA, *_EC_CURVES, "EdDSA"))

#: Inclusive bounds of the ``heartbeatTimeout`` claim, in seconds (spec §2.1).
HEARTBEAT_TIMEOUT_RANGE = (5, 600)

# Material that parses as (or looks like) a public key must never become an HMAC secret: with it,
# anyone holding the public key could forge HS tokens.
_KEY_MARKERS = (b"-----BEGIN", b"---- BEGIN", b"ssh-", b"ecdsa-sha2-")


class Scope(enum.StrEnum):
    """What a token is presented for (spec §3.1, §3.4)."""

    CONNECT = "connect"
    SUBSCRIBE = "subscribe"
    UMD = "umd"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One configured verification key (spec §3.2).

    Attributes:
        method: the algorithm tokens signed with this key carry in ``alg``.
        material: the HMAC secret, or the PEM-encoded public key. Hidden from ``repr``.
        kid: when set, tokens must carry this ``kid``; when None, any ``kid`` or none passes.
    """

    method: str
    material: bytes = field(repr=False)
    kid: str | None = None

    @classmethod
    def from_setting(cls, method: str, value_b64: str, kid: str | None) -> SigningKey:
        """Build a key from its settings and check it can verify ``method`` tokens.

        Args:
            method: ``HS256`` … ``EdDSA``.
            value_b64: Base64 of the HMAC secret or of the PEM public key; whitespace (line
                wrapping) and the URL-safe alphabet are accepted.
            kid: the key ID, or None (an empty string also means none).

        Raises:
            ConfigError: the method is unknown, the value is not Base64, or the decoded material
                cannot serve as a ``method`` key.
        """
        compact = "".join(value_b64.split()).translate(_URLSAFE_TO_STANDARD)
        try:
            material = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"The {method} signing key value is not valid Base64.") from exc
        key = cls(method=method, material=material, kid=kid or None)
        _import_key(key)
        return key


_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    """The checked claims of a verified token.

    Attributes:
        raw: the whole payload as decoded.
        scopes: every value of ``scope``, recognised or not.
        exp: expiry, Unix seconds (a fraction is rounded down).
        nbf: not-before, Unix seconds (a fraction is rounded up), or None.
        jti: the token ID, or None.
        single_use: ``singleUse``; when True, ``jti`` is a non-empty string.
        uid: the user ID; None when absent, null or empty.
        has_uid: the ``uid`` claim was present, even as null (an empty string counts as absent).
            A subscribe token's uid replaces the connection's exactly when this is True.
        umd: the user metadata; None when absent or null.
        has_umd: the ``umd`` claim was present, even as null.
        connection_id: the connection this token is bound to, or None.
        keep_alive: ``keepAlive``.
        heartbeat_timeout: ``heartbeatTimeout`` in seconds, or None.
        umd_update: top-level ``umdUpdate``.
        umd_propagate: ``umdPropagate``.
        grants: the parsed ``channels`` claim.
    """

    raw: dict[str, Any]
    scopes: frozenset[str]
    exp: int
    nbf: int | None = None
    jti: str | None = None
    single_use: bool = False
    uid: str | None = None
    has_uid: bool = False
    umd: Any = None
    has_umd: bool = False
    connection_id: str | None = None
    keep_alive: bool = False
    heartbeat_timeout: int | None = None
    umd_update: bool = False
    umd_propagate: bool = False
    grants: Grants = Grants.EMPTY


class _Registry(jws.JWSRegistry):
    """A joserfc registry that allows exactly the configured algorithms, quietly.

    joserfc emits a ``SecurityWarning`` on every ``EdDSA`` verification because RFC 9864 renamed
    the algorithm; Hotsock issuers and the spec use ``EdDSA``, so the warning would fire on every
    connection and tell the operator nothing.
    """

    def get_alg(self, name: str) -> JWSAlgModel:
        if not self.allowed or name not in self.allowed:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        return self.algorithms[name]


class TokenGate:
    """Verifies tokens against the configured keys and claim rules.

    Build one at start-up and share it: it holds no per-token state.
    """

    def __init__(
        self,
        *,
        keys: Sequence[SigningKey],
        audience: str | None = None,
        issuer: str | None = None,
        leeway: int = 0,
        max_token_bytes: int = 16384,
    ) -> None:
        """Import the keys once.

        Args:
            keys: the verification keys, tried in order. With none, every token is refused
                (checking that keys exist is the settings' job: dev mode generates one).
            audience: when set, ``aud`` must equal it or list it.
            issuer: when set, ``iss`` must equal it.
            leeway: seconds of clock skew tolerated on ``exp`` and ``nbf``.
            max_token_bytes: longer tokens are refused before any decoding.

        Raises:
            ConfigError: a key cannot serve its method, or a limit is out of range.
        """
        if leeway < 0:
            raise ConfigError("The token clock leeway must not be negative.")
        if max_token_bytes <= 0:
            raise ConfigError("The maximum token size must be positive.")
        # (configured key, joserfc key) in configuration order: the order keys are tried.
        self._keys = tuple((key, _import_key(key)) for key in keys)
        # Configured audience and issuer; None disables the check (spec §3.3).
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._max_token_bytes = max_token_bytes
        self._registry = _Registry(
            algorithms=sorted({key.method for key in keys}),
            # Unknown non-critical header parameters must be ignored (RFC 7515 §4); critical ones
            # are refused before joserfc sees the token.
            strict_check_header=False,
        )
        # joserfc's own default (512 bytes) would refuse a header with an x5c chain.
        self._registry.max_header_length = max_token_bytes
        self._registry.max_payload_length = max_token_bytes

    # Public methods

    def verify(self, token: object, *, scope: Scope, now: float) -> Claims:
        """Verify ``token`` for use with ``scope`` at time ``now``.

        The caller must still consume ``singleUse`` tokens and, for subscribe and umd tokens,
        call :func:`check_binding`.

        Args:
            token: the token as received (anything: a non-string is refused).
            scope: the scope the token is presented for.
            now: current Unix time in seconds.

        Returns:
            The checked claims.

        Raises:
            TokenError: the token is refused; ``str(exc)`` is safe to show the client.
        """
        payload = self._verified_payload(token)
        return self._check_claims(payload, scope=scope, now=now)

    # Private methods

    def _verified_payload(self, token: object) -> dict[str, Any]:
        if not isinstance(token, str):
            raise TokenError("token must be a string")
        if len(token) > self._max_token_bytes:
            raise TokenError(f"token is larger than {self._max_token_bytes} bytes")
        if not token.isascii():
            raise TokenError("token is not a JWS compact serialization")
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
        except (JoseError, ValueError) as exc:
            raise TokenError("token is not a JWS compact serialization") from exc
        header = obj.headers()
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise TokenError(f"token algorithm {alg!r} is not allowed")
        if "typ" in header and header["typ"] != "JWT":
            raise TokenError("token typ must be JWT")
        if "crit" in header:
            # tidings implements no JWS extension, so any critical one is unknown to it. This also
            # rules out an unencoded payload: RFC 7797 ``b64: false`` must be listed in crit (and
            # joserfc's extract_compact already refuses it otherwise).
            raise TokenError("token header lists critical extensions tidings does not support")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("token kid must be a string")
        # Only keys of the token's own algorithm are tried: an RSA public key can never be
        # misused as an HMAC secret, whatever the header says.
        candidates = [
            jwk
            for key, jwk in self._keys
            if key.method == alg and (key.kid is None or key.kid == kid)
        ]
        if not candidates:
            raise TokenError("no configured key matches the token's alg and kid")
        if not any(_signature_ok(obj, jwk, self._registry) for jwk in candidates):
            raise TokenError("token signature is invalid")
        try:
            payload = orjson.loads(obj.payload)
        except orjson.JSONDecodeError as exc:
            raise TokenError("token payload is not valid JSON") from exc
        if not isinstance(payload, dict):
            raise TokenError("token payload must be a JSON object")
        return payload

    def _check_claims(self, payload: dict[str, Any], *, scope: Scope, now: float) -> Claims:
        exp = _numeric_date(payload, "exp")
        if exp is None:
            raise TokenError("token exp is required")
        if now >= exp + self._leeway:
            raise TokenError("token has expired")
        nbf = _numeric_date(payload, "nbf")
        if nbf is not None and now + self._leeway < nbf:
            raise TokenError("token is not valid yet (nbf)")
        # iat is deliberately ignored (spec §3.3), even when it lies in the future.
        if self._audience is not None and not _audience_ok(payload.get("aud"), self._audience):
            raise TokenError("token aud does not match")
        if self._issuer is not None and payload.get("iss") != self._issuer:
            raise TokenError("token iss does not match")

        raw_scope = payload.get("scope")
        if raw_scope is None:
            raise TokenError("token scope is required")
        if not isinstance(raw_scope, str):
            raise TokenError("token scope must be a space-separated string")
        scopes = frozenset(raw_scope.split())
        if scope not in scopes:
            raise TokenError(f"token lacks the {scope.value!r} scope")

        connection_id = _string(payload, "connectionId") or None
        if scope is Scope.CONNECT and connection_id is not None:
            raise TokenError("a token carrying connectionId cannot open a connection")

        raw_uid = payload.get("uid")
        if raw_uid is not None and not isinstance(raw_uid, str):
            raise TokenError("token uid must be a string")
        if raw_uid is not None and len(raw_uid) > UID_MAX_CHARS:
            raise TokenError(f"token uid is longer than {UID_MAX_CHARS} characters")

        umd = payload.get("umd")
        if len(dumps(umd)) > UMD_MAX_BYTES:
            raise TokenError(f"token umd is larger than {UMD_MAX_BYTES} bytes")

        heartbeat_timeout = payload.get("heartbeatTimeout")
        low, high = HEARTBEAT_TIMEOUT_RANGE
        if heartbeat_timeout is not None and (
            isinstance(heartbeat_timeout, bool)
            or not isinstance(heartbeat_timeout, int)
            or not low <= heartbeat_timeout <= high
        ):
            raise TokenError(f"token heartbeatTimeout must be an integer from {low} to {high}")

        jti = _string(payload, "jti")
        single_use = _bool(payload, "singleUse")
        if single_use and not jti:
            raise TokenError("a singleUse token must carry a jti")

        return Claims(
            raw=payload,
            scopes=scopes,
            exp=math.floor(exp),
            nbf=None if nbf is None else math.ceil(nbf),
            jti=jti,
            single_use=single_use,
            uid=raw_uid or None,
            has_uid="uid" in payload and raw_uid != "",
            umd=umd,
            has_umd="umd" in payload,
            connection_id=connection_id,
            keep_alive=_bool(payload, "keepAlive"),
            heartbeat_timeout=heartbeat_timeout,
            umd_update=_bool(payload, "umdUpdate"),
            umd_propagate=_bool(payload, "umdPropagate"),
            grants=Grants.parse(payload.get("channels"), connect_token=scope is Scope.CONNECT),
        )


def check_binding(claims: Claims, *, connection_id: str, uid: str | None) -> None:
    """Check that a subscribe or umd token may be used by this connection (spec §3.13).

    A token with ``connectionId`` works only for that connection; otherwise its non-empty
    ``uid`` must equal the connection's, and it then works for any connection of that user.

    Args:
        claims: the verified claims of the subscribe or umd token.
        connection_id: the ID of the connection presenting the token.
        uid: the connection's user ID (from its connect token), or None.

    Raises:
        TokenError: the token is not bound to this connection.
    """
    if claims.connection_id is not None:
        if claims.connection_id != connection_id:
            raise TokenError("token is bound to another connection")
        return
    if claims.uid is None:
        raise TokenError("token must carry connectionId or uid")
    if claims.uid != uid:
        raise TokenError("token uid does not match the connection's uid")


# Private functions


def _import_key(key: SigningKey) -> Key:
    """Build the joserfc key for ``key``, or raise ConfigError naming what is wrong."""
    method, material = key.method, key.material
    label = f"The {method} signing key" + (f" {key.kid!r}" if key.kid else "")
    if method not in ALGORITHMS:
        raise ConfigError(f"{label} uses an unknown method; use one of {sorted(ALGORITHMS)}.")
    jwk: Key
    try:
        if method in _HMAC:
            if not material:
                raise ConfigError(f"{label} has an empty secret.")
            if any(marker in material for marker in _KEY_MARKERS):
                raise ConfigError(f"{label} is an HMAC secret but looks like a public key.")
            jwk = OctKey.import_key(material)
        elif method in _RSA:
            jwk = RSAKey.import_key(material)
        elif method in _EC_CURVES:
            jwk = ECKey.import_key(material)
        else:
            jwk = OKPKey.import_key(material)
            if jwk.curve_name not in _EDDSA_CURVES:
                raise ConfigError(f"{label} is not an Ed25519 or Ed448 public key.")
        _Registry.algorithms[method].check_key(jwk)
    except (JoseError, ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{label} is not a usable {method} key: {exc}.") from exc
    return jwk


def _signature_ok(obj: jws.CompactSignature, jwk: Key, registry: jws.JWSRegistry) -> bool:
    try:
        return jws.validate_compact(obj, jwk, registry=registry)
    except (JoseError, ValueError):
        return False


def _numeric_date(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenError(f"token {name} must be a number")
    if abs(value) > MAX_NUMERIC_DATE:
        raise TokenError(f"token {name} is out of range (after the year 9999)")
    return value


def _audience_ok(aud: object, audience: str) -> bool:
    if isinstance(aud, str):
        return aud == audience
    if isinstance(aud, list):
        return audience in aud
    return False


def _string(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is None or isinstance(value, str):
        return value
    raise TokenError(f"token {name} must be a string")


def _bool(payload: Mapping[str, Any], name: str) -> bool:
    value = payload.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise TokenError(f"token {name} must be a boolean")
    return value
