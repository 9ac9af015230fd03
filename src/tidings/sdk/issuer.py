"""Sign tokens for tidings (and Hotsock) from a backend (spec §3).

An :class:`Issuer` holds one signing key and turns claim mappings into compact JWTs::

    issuer = Issuer(secret, algorithm="HS256", kid="key1")
    token = issuer.connect_token(channels={"chat.*": {"subscribe": True}}, uid="42", ttl=300)

The key is loaded and checked once, in the constructor; issuing is then cheap and thread-safe, so
create one issuer per key at start-up and share it.

The issuer checks only what it must to produce a token the server can read (types of the claims it
adds, JSON-serialisable claims, the binding rules of spec §3.13 in the convenience builders). The
server remains the authority on claim validity (spec §3.9).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

__all__ = ["ALGORITHMS", "Issuer"]

_HMAC: Final = frozenset({"HS256", "HS384", "HS512"})
_RSA: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES: Final[Mapping[str, type[ec.EllipticCurve]]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
_EDDSA: Final = frozenset({"EdDSA"})

#: Signing algorithms accepted by tidings (spec §3.2); ``none`` is never offered.
ALGORITHMS: Final = frozenset(_HMAC | _RSA | _EC_CURVES.keys() | _EDDSA)

_UID_MAX_CHARS: Final = 128  # spec §3.5
_UMD_MAX_BYTES: Final = 1024  # spec §3.5, measured on compact UTF-8 JSON (spec §0)
_UNSET: Final[Any] = object()  # distinguishes "not given" from an explicit ``None`` (JSON null)

_PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


class Issuer:
    """Signs tokens with one key.

    Args:
        key: for ``HS*``, the shared secret as ``bytes`` or ``str`` (its UTF-8 bytes are the key;
            this is the raw secret, not the Base64 form ``TIDINGS_SIGNING_KEY1`` takes). For
            ``RS*``/``PS*``/``ES*``/``EdDSA``, the *private* key as unencrypted PEM (``str`` or
            ``bytes``) or as a ``cryptography`` private key object (load an encrypted PEM with
            ``cryptography`` first). The server is configured with the matching public key.
        algorithm: one of :data:`ALGORITHMS`. ``ES256``/``ES384``/``ES512`` need a P-256/P-384/
            P-521 key; ``EdDSA`` an Ed25519 (or Ed448) key.
        kid: sets the ``kid`` header. Needed when the server's key has a configured ID.
        issuer: default ``iss`` claim, added when the claims carry none.
        audience: default ``aud`` claim (a string or a list of strings), added when absent.
        default_ttl: seconds until ``exp`` when neither ``exp`` nor ``ttl`` is given.

    Raises:
        ValueError: the algorithm is unknown, the key does not fit it, or an option is invalid.
    """

    def __init__(
        self,
        key: str | bytes | _PrivateKey,
        *,
        algorithm: str = "HS256",
        kid: str | None = None,
        issuer: str | None = None,
        audience: str | Sequence[str] | None = None,
        default_ttl: int = 3600,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"unsupported algorithm {algorithm!r}; use one of {', '.join(sorted(ALGORITHMS))}"
            )
        if kid is not None and (not isinstance(kid, str) or not kid):
            raise ValueError("kid must be a non-empty string or None")
        if issuer is not None and (not isinstance(issuer, str) or not issuer):
            raise ValueError("issuer must be a non-empty string or None")
        # The signing algorithm, exactly as it appears in the ``alg`` header.
        self.algorithm = algorithm
        # Key ID for the ``kid`` header; None leaves the header out.
        self.kid = kid
        # Default ``iss`` claim.
        self.issuer = issuer
        # Default ``aud`` claim; a tuple is stored so the issuer stays immutable.
        self.audience: str | tuple[str, ...] | None = _check_audience(audience)
        # Lifetime of tokens issued without ``exp`` or ``ttl``, in seconds.
        self.default_ttl = _check_ttl(default_ttl, "default_ttl")
        self._key: Key = _load_key(key, algorithm)
        self._registry = _registry_for(algorithm)
        self._header: dict[str, str] = {"alg": algorithm}
        if kid is not None:
            self._header["kid"] = kid

    def __repr__(self) -> str:
        # Never show the key material.
        return f"Issuer(algorithm={self.algorithm!r}, kid={self.kid!r})"

    # Public methods

    def issue(
        self,
        claims: Mapping[str, Any],
        *,
        ttl: int | None = None,
        scope: str | None = None,
    ) -> str:
        """Sign ``claims`` and return the compact JWT.

        Adds ``exp`` = now + ``ttl`` (or ``default_ttl``) when ``claims`` has no ``exp``, and
        ``iss``/``aud`` from the issuer's configuration when absent. Claims given explicitly are
        never overwritten. The header is ``{"typ": "JWT", "alg": …, "kid": …}``.

        Args:
            claims: the payload; values must be JSON-serialisable (``exp``/``nbf``/``iat`` may be
                numbers or timezone-aware ``datetime`` objects).
            ttl: seconds until expiry; not allowed together with an explicit ``exp`` claim.
            scope: the ``scope`` claim (``"connect"``, ``"subscribe"``, ``"umd"`` or several,
                space-separated). tidings refuses tokens without a scope (spec §3.4).

        Returns:
            The token, ready for ``?token=`` or a ``hotsock.subscribe`` frame.

        Raises:
            ValueError: an argument or claim has the wrong type or value, or the claims cannot be
                encoded as JSON.
        """
        if not isinstance(claims, Mapping):
            raise ValueError("claims must be a mapping of claim names to values")
        payload: dict[str, Any] = {}
        for name, value in claims.items():
            if not isinstance(name, str):
                raise ValueError(f"claim names must be strings, got {name!r}")
            payload[name] = value

        if scope is not None:
            _check_scope(scope)
            if "scope" in payload and payload["scope"] != scope:
                raise ValueError(
                    f"scope={scope!r} conflicts with the scope claim {payload['scope']!r}"
                )
            payload["scope"] = scope
        elif "scope" in payload:
            _check_scope(payload["scope"])

        if "exp" in payload:
            if ttl is not None:
                raise ValueError("give either an exp claim or ttl, not both")
            payload["exp"] = _numeric_date(payload["exp"], "exp")
        else:
            lifetime = self.default_ttl if ttl is None else _check_ttl(ttl, "ttl")
            payload["exp"] = int(time.time()) + lifetime
        for name in ("nbf", "iat"):
            if name in payload:
                payload[name] = _numeric_date(payload[name], name)

        if self.issuer is not None:
            payload.setdefault("iss", self.issuer)
        if self.audience is not None:
            aud = self.audience
            payload.setdefault("aud", aud if isinstance(aud, str) else list(aud))

        # joserfc encodes with the stdlib, which writes NaN/Infinity (not JSON) and reports
        # unserialisable values as TypeError; check first so the caller gets one clear ValueError.
        try:
            json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"claims are not JSON-serialisable: {exc}") from exc
        try:
            return jwt.encode(self._header, payload, self._key, registry=self._registry)
        except JoseError as exc:  # pragma: no cover - the key was checked in __init__
            raise ValueError(f"cannot sign the token: {exc}") from exc

    def connect_token(
        self,
        *,
        channels: Mapping[str, Any] | None = None,
        uid: str | None = None,
        umd: Any = None,
        ttl: int | None = None,
        **claims: Any,
    ) -> str:
        """Issue a token that opens a WebSocket connection (scope ``connect``).

        Args:
            channels: channel key → channel directives (spec §3.6); omitted when None.
            uid: the user ID (≤ 128 characters); omitted when None.
            umd: user metadata (≤ 1 KiB of JSON); omitted when None.
            ttl: seconds until expiry (default: the issuer's ``default_ttl``).
            **claims: any other claims, with their wire names (``keepAlive=True``,
                ``heartbeatTimeout=60``, ``singleUse=True``, ``jti=...``). A ``scope`` given here
                must include ``connect``.

        Returns:
            The token.

        Raises:
            ValueError: an argument is invalid, or the claims carry ``connectionId`` (a token bound
                to a connection can never open one, spec §3.5).
        """
        if "connectionId" in claims:
            raise ValueError("a connect token must not carry connectionId (spec §3.5)")
        payload = self._builder_claims(claims, "connect", channels=channels, uid=uid)
        if umd is not None:
            payload["umd"] = _check_umd(umd)
        return self.issue(payload, ttl=ttl)

    def subscribe_token(
        self,
        *,
        connection_id: str | None = None,
        uid: str | None = None,
        channels: Mapping[str, Any] | None = None,
        ttl: int | None = None,
        umd: Any = _UNSET,
        **claims: Any,
    ) -> str:
        """Issue a token granting extra permissions for ``hotsock.subscribe`` (scope ``subscribe``).

        Spec §3.13 requires a binding: ``connection_id`` ties the token to one connection;
        otherwise ``uid`` ties it to every connection of that user.

        Args:
            connection_id: the ``connectionId`` claim.
            uid: the ``uid`` claim; also the subscription's user ID (spec §3.11).
            channels: channel key → channel directives (spec §3.6).
            ttl: seconds until expiry (default: the issuer's ``default_ttl``).
            umd: the subscription's user metadata. Passing ``None`` explicitly writes
                ``"umd": null``, which clears the connection's metadata for this subscription;
                leaving it out keeps the connection's.
            **claims: any other claims, with their wire names. A ``scope`` given here must
                include ``subscribe``.

        Returns:
            The token.

        Raises:
            ValueError: neither ``connection_id`` nor a non-empty ``uid`` is given, or an argument
                is invalid.
        """
        if "connectionId" in claims:
            raise ValueError("pass connection_id=, not connectionId=")
        if connection_id is not None and (not isinstance(connection_id, str) or not connection_id):
            raise ValueError("connection_id must be a non-empty string or None")
        if connection_id is None and not uid:
            raise ValueError(
                "a subscribe token needs connection_id or a non-empty uid to bind it (spec §3.13)"
            )
        payload = self._builder_claims(claims, "subscribe", channels=channels, uid=uid)
        if connection_id is not None:
            payload["connectionId"] = connection_id
        if umd is not _UNSET:
            payload["umd"] = None if umd is None else _check_umd(umd)
        return self.issue(payload, ttl=ttl)

    # Private methods

    def _builder_claims(
        self,
        claims: Mapping[str, Any],
        needed_scope: str,
        *,
        channels: Mapping[str, Any] | None,
        uid: str | None,
    ) -> dict[str, Any]:
        payload = dict(claims)
        scope = payload.setdefault("scope", needed_scope)
        _check_scope(scope)
        if needed_scope not in scope.split():
            raise ValueError(f"scope {scope!r} must include {needed_scope!r}")
        if channels is not None:
            if not isinstance(channels, Mapping):
                raise ValueError("channels must be a mapping of channel keys to directives")
            payload["channels"] = dict(channels)
        if uid is not None:
            payload["uid"] = _check_uid(uid)
        return payload


def _load_key(key: object, algorithm: str) -> Key:
    """Import ``key`` as the joserfc key type ``algorithm`` needs, or raise ``ValueError``."""
    if algorithm in _HMAC:
        if isinstance(key, str):
            secret = key.encode("utf-8")
        elif isinstance(key, bytes | bytearray):
            secret = bytes(key)
        else:
            raise ValueError(f"{algorithm} needs the shared secret as str or bytes")
        if not secret:
            raise ValueError(f"{algorithm} secret must not be empty")
        if secret.lstrip().startswith(b"-----BEGIN"):
            raise ValueError(f"{algorithm} takes a shared secret, not a PEM key")
        try:
            return OctKey.import_key(secret)
        except ValueError as exc:  # joserfc refuses anything that parses as a public key
            raise ValueError(f"invalid {algorithm} secret: {exc}") from exc

    private_key = _private_key(key, algorithm)
    if algorithm in _RSA:
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError(f"{algorithm} needs an RSA private key")
        key_cls: type[RSAKey | ECKey | OKPKey] = RSAKey
    elif algorithm in _EC_CURVES:
        curve = _EC_CURVES[algorithm]
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{algorithm} needs an EC private key on curve {curve.name}")
        if not isinstance(private_key.curve, curve):
            raise ValueError(
                f"{algorithm} needs a key on curve {curve.name}, got {private_key.curve.name}"
            )
        key_cls = ECKey
    else:
        if not isinstance(private_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            raise ValueError(f"{algorithm} needs an Ed25519 or Ed448 private key")
        key_cls = OKPKey
    # Going through PKCS#8 PEM uses joserfc's public import path for every key source.
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_cls.import_key(pem)


def _private_key(key: object, algorithm: str) -> _PrivateKey:
    if isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        return key
    if isinstance(key, str):
        data = key.encode("utf-8")
    elif isinstance(key, bytes | bytearray):
        data = bytes(key)
    else:
        raise ValueError(
            f"{algorithm} needs a PEM private key (str or bytes) or a cryptography private key"
        )
    if b"PUBLIC KEY-----" in data or b"CERTIFICATE-----" in data:
        raise ValueError(
            f"{algorithm} signs with the private key; the public key belongs in the server's "
            "configuration"
        )
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # encrypted PEM without a password
        raise ValueError(
            f"the {algorithm} private key is encrypted; load it with cryptography and pass the "
            "key object"
        ) from exc
    except ValueError as exc:
        raise ValueError(f"{algorithm} needs a PEM private key: {exc}") from exc
    if not isinstance(
        loaded,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise ValueError(f"{algorithm} cannot sign with a {type(loaded).__name__}")
    return loaded


class _EdDSARegistry(JWSRegistry):
    """A registry that allows only ``EdDSA``, without joserfc's per-use ``SecurityWarning``.

    joserfc warns on every use of the name ``EdDSA`` because RFC 9864 deprecates it in favour of
    ``Ed25519``. Hotsock and spec §3.2 accept only ``EdDSA``, so the choice is deliberate, and a
    warning on each token issued would be noise (and an error under ``-W error``).
    """

    def get_alg(self, name: str) -> Any:
        if name != "EdDSA":
            return super().get_alg(name)
        return self.algorithms[name]


def _registry_for(algorithm: str) -> JWSRegistry:
    # A registry restricted to the one configured algorithm, so joserfc also accepts the ones it
    # does not "recommend" (e.g. PS384, ES512).
    if algorithm in _EDDSA:
        return _EdDSARegistry(algorithms=[algorithm])
    return JWSRegistry(algorithms=[algorithm])


def _check_ttl(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive whole number of seconds, got {value!r}")
    return value


def _check_scope(value: object) -> None:
    if not isinstance(value, str) or not value.split():
        raise ValueError(f"scope must be a non-empty space-separated string, got {value!r}")


def _numeric_date(value: object, name: str) -> int | float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            # A naive datetime is ambiguous (local time or UTC?); a wrong guess shifts expiry.
            raise ValueError(f"{name} must be a timezone-aware datetime or Unix seconds")
        return int(value.timestamp())
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a NumericDate (Unix seconds), got {value!r}")
    return value


def _check_audience(value: object) -> str | tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            raise ValueError("audience must not be empty")
        return value
    if isinstance(value, Collection) and all(isinstance(v, str) and v for v in value) and value:
        return tuple(value)
    raise ValueError("audience must be a non-empty string or a non-empty list of them")


def _check_uid(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"uid must be a string, got {type(value).__name__}")
    if len(value) > _UID_MAX_CHARS:
        raise ValueError(f"uid must be at most {_UID_MAX_CHARS} characters")
    return value


def _check_umd(value: object) -> object:
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        size = len(encoded.encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"umd is not JSON-serialisable: {exc}") from exc
    if size > _UMD_MAX_BYTES:
        raise ValueError(f"umd must be at most {_UMD_MAX_BYTES} bytes of JSON, got {size}")
    return value
