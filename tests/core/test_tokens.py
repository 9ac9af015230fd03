"""Tests for tidings.core.tokens: JWT verification and claim rules (spec §3.2–§3.9, §3.13)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.errors import JoseError

from tidings.core import tokens
from tidings.core.permissions import Grants
from tidings.core.tokens import (
    ALGORITHMS,
    Claims,
    Scope,
    SigningKey,
    TokenGate,
    check_binding,
)
from tidings.errors import ConfigError, TokenError

NOW = 1_700_000_000.0
SECRET = b"0123456789abcdef0123456789abcdef"
OTHER_SECRET = b"fedcba9876543210fedcba9876543210"
DROP = object()  # marks a claim or header to leave out

_HASHES: dict[str, Any] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_HMAC_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


# Builders


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate_key(name: str) -> Any:
    """A fresh private key of one algorithm family."""
    if name == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if name in ("P-256", "P-384", "P-521"):
        curves: dict[str, ec.EllipticCurve] = {
            "P-256": ec.SECP256R1(),
            "P-384": ec.SECP384R1(),
            "P-521": ec.SECP521R1(),
        }
        return ec.generate_private_key(curves[name])
    if name == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if name == "Ed448":
        return ed448.Ed448PrivateKey.generate()
    raise AssertionError(name)


#: One key per family, reused across tests (RSA generation is slow).
private_key = functools.cache(generate_key)


def public_pem(private: Any) -> bytes:
    pem: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def sign(alg: str, key: Any, message: bytes) -> bytes:
    """Sign like an issuer would, with cryptography directly (independent of joserfc)."""
    if alg in _HMAC_HASHES:
        return hmac.new(key, message, _HMAC_HASHES[alg]).digest()
    if alg == "EdDSA":
        signature: bytes = key.sign(message)
        return signature
    digest = _HASHES[alg[2:]]
    if alg.startswith("RS"):
        signature = key.sign(message, padding.PKCS1v15(), digest())
        return signature
    if alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(digest()), salt_length=digest.digest_size)
        signature = key.sign(message, pss, digest())
        return signature
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(digest())))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def make_claims(**overrides: Any) -> dict[str, Any]:
    """A valid connect-token payload with ``overrides`` applied (DROP removes a claim)."""
    claims: dict[str, Any] = {"exp": NOW + 60, "scope": "connect"}
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not DROP}


def make_token(
    claims: dict[str, Any] | None = None,
    *,
    key: Any = SECRET,
    alg: str = "HS256",
    headers: dict[str, Any] | None = None,
    payload: bytes | None = None,
) -> str:
    """A signed compact JWS; ``headers`` override the header (DROP removes one)."""
    header = {"alg": alg, "typ": "JWT", **(headers or {})}
    header = {name: value for name, value in header.items() if value is not DROP}
    body = (
        payload
        if payload is not None
        else orjson.dumps(make_claims() if claims is None else claims)
    )
    signing_input = f"{b64url(orjson.dumps(header))}.{b64url(body)}".encode("ascii")
    signer = alg if alg in ALGORITHMS else "HS256"
    return f"{signing_input.decode()}.{b64url(sign(signer, key, signing_input))}"


def make_gate(*keys: SigningKey, **options: Any) -> TokenGate:
    """A gate over ``keys`` (default: one HS256 key with SECRET)."""
    return TokenGate(keys=keys or (SigningKey("HS256", SECRET),), **options)


def verify(token: object, *, scope: Scope = Scope.CONNECT, gate: TokenGate | None = None) -> Claims:
    return (gate or make_gate()).verify(token, scope=scope, now=NOW)


# Algorithms and keys (spec §3.2)

_ASYMMETRIC = [
    ("RS256", "RSA"),
    ("RS384", "RSA"),
    ("RS512", "RSA"),
    ("PS256", "RSA"),
    ("PS384", "RSA"),
    ("PS512", "RSA"),
    ("ES256", "P-256"),
    ("ES384", "P-384"),
    ("ES512", "P-521"),
    ("EdDSA", "Ed25519"),
    ("EdDSA", "Ed448"),
]


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_gate_verify_accepts_hmac_algorithms(alg: str) -> None:
    """HS256/384/512 tokens verify against their shared secret."""
    gate = make_gate(SigningKey(alg, SECRET))
    assert verify(make_token(alg=alg), gate=gate).scopes == {"connect"}


@pytest.mark.parametrize(("alg", "family"), _ASYMMETRIC)
def test_gate_verify_accepts_asymmetric_algorithms(alg: str, family: str) -> None:
    """RS*, PS*, ES* and EdDSA tokens verify against the PEM public key, without warnings."""
    private = private_key(family)
    gate = make_gate(SigningKey(alg, public_pem(private)))
    assert verify(make_token(key=private, alg=alg), gate=gate).exp == NOW + 60


@pytest.mark.parametrize(("alg", "family"), _ASYMMETRIC)
def test_gate_verify_refuses_signature_of_another_key(alg: str, family: str) -> None:
    """A token signed by a different private key of the right type is refused."""
    gate = make_gate(SigningKey(alg, public_pem(private_key(family))))
    other = generate_key(family)
    with pytest.raises(TokenError, match="signature is invalid"):
        verify(make_token(key=other, alg=alg), gate=gate)


def test_gate_verify_refuses_wrong_hmac_secret() -> None:
    """An HS256 token signed with another secret is refused."""
    with pytest.raises(TokenError, match="signature is invalid"):
        verify(make_token(key=OTHER_SECRET))


def test_gate_verify_refuses_tampered_payload() -> None:
    """Changing the payload after signing breaks the signature."""
    header, _, signature = make_token().split(".")
    forged = b64url(orjson.dumps(make_claims(scope="connect subscribe")))
    with pytest.raises(TokenError, match="signature is invalid"):
        verify(f"{header}.{forged}.{signature}")


def test_gate_verify_tries_each_configured_key() -> None:
    """With two keys (rotation), a token verifies against either."""
    rsa_private = private_key("RSA")
    gate = make_gate(SigningKey("HS256", SECRET), SigningKey("RS256", public_pem(rsa_private)))
    assert verify(make_token(), gate=gate)
    assert verify(make_token(key=rsa_private, alg="RS256"), gate=gate)
    gate = make_gate(SigningKey("HS256", OTHER_SECRET), SigningKey("HS256", SECRET))
    assert verify(make_token(), gate=gate)


def test_gate_verify_kid_rules_with_and_without_configured_kid() -> None:
    """A key with a kid needs that kid; a key without one accepts any kid or none."""
    gate = make_gate(SigningKey("HS256", SECRET, kid="k1"), SigningKey("HS256", OTHER_SECRET))
    assert verify(make_token(headers={"kid": "k1"}), gate=gate)
    assert verify(make_token(key=OTHER_SECRET), gate=gate)
    assert verify(make_token(key=OTHER_SECRET, headers={"kid": "anything"}), gate=gate)
    assert verify(make_token(key=OTHER_SECRET, headers={"kid": "k1"}), gate=gate) is not None
    for headers in ({}, {"kid": "k2"}):
        with pytest.raises(TokenError, match="signature is invalid"):
            verify(make_token(headers=headers), gate=gate)


def test_gate_verify_refuses_when_no_key_matches_alg_and_kid() -> None:
    """No key of the token's alg (or none with its kid): refused before any crypto."""
    gate = make_gate(SigningKey("HS256", SECRET, kid="k1"))
    with pytest.raises(TokenError, match="no configured key"):
        verify(make_token(headers={"kid": "k2"}), gate=gate)
    with pytest.raises(TokenError, match="no configured key"):
        verify(make_token(alg="HS384"), gate=gate)


def test_gate_verify_refuses_everything_without_keys() -> None:
    """A gate without keys refuses every token."""
    with pytest.raises(TokenError, match="no configured key"):
        verify(make_token(), gate=TokenGate(keys=()))


def test_gate_verify_refuses_hmac_token_signed_with_rsa_public_key() -> None:
    """Key/algorithm confusion: HS256 signed with the RSA public PEM as secret is refused."""
    pem = public_pem(private_key("RSA"))
    gate = make_gate(SigningKey("RS256", pem))
    with pytest.raises(TokenError, match="no configured key"):
        verify(make_token(key=pem, alg="HS256"), gate=gate)


@pytest.mark.parametrize("alg", ["none", "None", "HS1", "ES256K", "Ed25519", 5, None])
def test_gate_verify_refuses_disallowed_algorithms(alg: Any) -> None:
    """Only the thirteen spec algorithms pass; ``none`` never does."""
    token = make_token(headers={"alg": alg})
    if alg == "none":
        token = token.rpartition(".")[0] + "."
    with pytest.raises(TokenError, match="not allowed"):
        verify(token)


def test_gate_verify_refuses_hand_built_unsigned_token() -> None:
    """A classic ``alg: none`` token with an empty signature is refused."""
    header = b64url(b'{"alg":"none","typ":"JWT"}')
    body = b64url(orjson.dumps(make_claims()))
    with pytest.raises(TokenError, match="'none' is not allowed"):
        verify(f"{header}.{body}.")


# Header rules


@pytest.mark.parametrize("typ", [DROP, "JWT"])
def test_gate_verify_accepts_jwt_typ_or_none(typ: Any) -> None:
    """``typ`` may be absent or JWT."""
    assert verify(make_token(headers={"typ": typ}))


@pytest.mark.parametrize("typ", ["at+jwt", "JOSE", None, 1])
def test_gate_verify_refuses_other_typ(typ: Any) -> None:
    """Any other ``typ`` is refused."""
    with pytest.raises(TokenError, match="typ must be JWT"):
        verify(make_token(headers={"typ": typ}))


@pytest.mark.parametrize("crit", [["exp"], ["b64"], [], "x"])
def test_gate_verify_refuses_crit_header(crit: Any) -> None:
    """tidings understands no JWS extension, so any ``crit`` is refused."""
    with pytest.raises(TokenError, match="critical"):
        verify(make_token(headers={"crit": crit, "exp": 1, "b64": True}))


@pytest.mark.parametrize("headers", [{"b64": False}, {"b64": False, "crit": ["b64"]}])
def test_gate_verify_refuses_unencoded_payload_option(headers: dict[str, Any]) -> None:
    """``b64: false`` (RFC 7797) is not a JWT, with or without ``crit``."""
    with pytest.raises(TokenError):
        verify(make_token(headers=headers))


@pytest.mark.parametrize("headers", [{"jwk": "not-a-jwk"}, {"x5c": "not-a-list"}])
def test_gate_verify_refuses_malformed_registered_header(headers: dict[str, Any]) -> None:
    """Registered header parameters of the wrong shape fail verification."""
    with pytest.raises(TokenError, match="signature is invalid"):
        verify(make_token(headers=headers))


def test_registry_get_alg_refuses_unlisted_algorithm() -> None:
    """The quiet joserfc registry still enforces its allow-list."""
    registry = tokens._Registry(algorithms=["HS256"])
    assert registry.get_alg("HS256").name == "HS256"
    with pytest.raises(JoseError):
        registry.get_alg("RS256")


def test_gate_verify_refuses_non_string_kid() -> None:
    """``kid`` must be a string."""
    with pytest.raises(TokenError, match="kid must be a string"):
        verify(make_token(headers={"kid": 7}))


def test_gate_verify_ignores_unknown_header_parameters() -> None:
    """Unknown, non-critical header parameters are ignored (RFC 7515 §4)."""
    assert verify(make_token(headers={"x-custom": {"a": 1}, "cty": "JWT"}))


# Malformed input


@pytest.mark.parametrize("token", [None, 123, b"a.b.c", ["a"], {"token": "x"}])
def test_gate_verify_refuses_non_string_token(token: object) -> None:
    """The token must be a string."""
    with pytest.raises(TokenError, match="must be a string"):
        verify(token)


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b", "a.b.c.d", "!!!.???.###", "é.é.é", "e30.e30", "e30.e30.e30.e30"],
)
def test_gate_verify_refuses_garbage(token: str) -> None:
    """Anything that is not a JWS compact serialization is refused."""
    with pytest.raises(TokenError, match="not a JWS compact serialization"):
        verify(token)


def test_gate_verify_refuses_header_that_is_not_an_object() -> None:
    """A header segment holding a JSON array is refused."""
    token = make_token()
    with pytest.raises(TokenError, match="not a JWS compact serialization"):
        verify(b64url(b"[1]") + token[token.index(".") :])


def test_gate_verify_refuses_oversized_token() -> None:
    """Tokens over max_token_bytes are refused before decoding."""
    token = make_token(make_claims(umd="x" * 200))
    gate = make_gate(max_token_bytes=len(token) - 1)
    with pytest.raises(TokenError, match="larger than"):
        verify(token, gate=gate)
    assert verify(token, gate=make_gate(max_token_bytes=len(token)))


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"connect"'])
def test_gate_verify_refuses_payload_that_is_not_a_json_object(payload: bytes) -> None:
    """The payload must be a JSON object."""
    with pytest.raises(TokenError, match="payload"):
        verify(make_token(payload=payload))


# Registered claims (spec §3.3)


def test_gate_verify_refuses_expired_token() -> None:
    """A token is unusable at and after ``exp``."""
    with pytest.raises(TokenError, match="expired"):
        verify(make_token(make_claims(exp=NOW)))
    assert verify(make_token(make_claims(exp=NOW + 1))).exp == NOW + 1


def test_gate_verify_applies_leeway_to_exp_and_nbf() -> None:
    """Leeway extends ``exp`` and advances ``nbf`` by that many seconds."""
    gate = make_gate(leeway=5)
    assert verify(make_token(make_claims(exp=NOW - 4)), gate=gate)
    with pytest.raises(TokenError, match="expired"):
        verify(make_token(make_claims(exp=NOW - 5)), gate=gate)
    assert verify(make_token(make_claims(nbf=NOW + 5)), gate=gate)


def test_gate_verify_accepts_fractional_exp() -> None:
    """NumericDate may be fractional; Claims.exp rounds it down."""
    assert verify(make_token(make_claims(exp=NOW + 10.75))).exp == NOW + 10


@pytest.mark.parametrize("exp", [DROP, None])
def test_gate_verify_refuses_missing_exp(exp: Any) -> None:
    """``exp`` is required."""
    with pytest.raises(TokenError, match="exp is required"):
        verify(make_token(make_claims(exp=exp)))


@pytest.mark.parametrize("exp", [str(int(NOW + 60)), True, [NOW + 60]])
def test_gate_verify_refuses_non_numeric_exp(exp: Any) -> None:
    """``exp`` must be a number: not a string, not a boolean."""
    with pytest.raises(TokenError, match="exp must be a number"):
        verify(make_token(make_claims(exp=exp)))


def test_gate_verify_refuses_token_before_nbf() -> None:
    """A token is unusable before ``nbf``; usable from it on."""
    with pytest.raises(TokenError, match="not valid yet"):
        verify(make_token(make_claims(nbf=NOW + 1)))
    assert verify(make_token(make_claims(nbf=NOW))).nbf == NOW
    assert verify(make_token(make_claims(nbf=NOW - 0.5))).nbf == NOW


def test_gate_verify_refuses_non_numeric_nbf() -> None:
    """``nbf`` must be a number when present."""
    with pytest.raises(TokenError, match="nbf must be a number"):
        verify(make_token(make_claims(nbf="soon")))


@pytest.mark.parametrize("iat", [NOW + 3600, "yesterday", None])
def test_gate_verify_ignores_iat_even_in_the_future(iat: Any) -> None:
    """``iat`` is ignored (spec §3.3), unlike JWT libraries' defaults."""
    assert verify(make_token(make_claims(iat=iat)))


@pytest.mark.parametrize("aud", ["tidings", ["other", "tidings"]])
def test_gate_verify_accepts_matching_audience(aud: Any) -> None:
    """``aud`` may equal the configured audience or list it."""
    assert verify(make_token(make_claims(aud=aud)), gate=make_gate(audience="tidings"))


@pytest.mark.parametrize("aud", ["other", ["other"], [], DROP, None, 1, {"tidings": True}])
def test_gate_verify_refuses_mismatched_audience(aud: Any) -> None:
    """With an audience configured, ``aud`` is required and must match."""
    with pytest.raises(TokenError, match="aud does not match"):
        verify(make_token(make_claims(aud=aud)), gate=make_gate(audience="tidings"))


def test_gate_verify_skips_audience_when_not_configured() -> None:
    """Without a configured audience, ``aud`` is not checked at all."""
    assert verify(make_token(make_claims(aud=42)))


def test_gate_verify_checks_issuer_when_configured() -> None:
    """``iss`` must match exactly when an issuer is configured."""
    gate = make_gate(issuer="https://app.example")
    assert verify(make_token(make_claims(iss="https://app.example")), gate=gate)
    for iss in ("https://app.example/", DROP, ["https://app.example"]):
        with pytest.raises(TokenError, match="iss does not match"):
            verify(make_token(make_claims(iss=iss)), gate=gate)
    assert verify(make_token(make_claims(iss=1)))


# scope (spec §3.4)


@pytest.mark.parametrize("scope", [DROP, None])
def test_gate_verify_refuses_missing_scope(scope: Any) -> None:
    """``scope`` is required."""
    with pytest.raises(TokenError, match="scope is required"):
        verify(make_token(make_claims(scope=scope)))


def test_gate_verify_refuses_non_string_scope() -> None:
    """``scope`` is a space-separated string, not an array."""
    with pytest.raises(TokenError, match="space-separated string"):
        verify(make_token(make_claims(scope=["connect"])))


@pytest.mark.parametrize(
    ("claim", "scope"),
    [
        ("subscribe", Scope.CONNECT),
        ("connect", Scope.SUBSCRIBE),
        ("connect subscribe", Scope.UMD),
        ("", Scope.CONNECT),
        ("connects", Scope.CONNECT),
    ],
)
def test_gate_verify_refuses_token_lacking_scope(claim: str, scope: Scope) -> None:
    """A token is usable only for the scopes it lists."""
    with pytest.raises(TokenError, match=f"lacks the '{scope}' scope"):
        verify(make_token(make_claims(scope=claim, uid="u")), scope=scope)


def test_gate_verify_accepts_multiple_and_unknown_scopes() -> None:
    """Several scopes may be listed; unknown ones are kept but ignored."""
    claims = verify(make_token(make_claims(scope="admin  connect umd")), scope=Scope.UMD)
    assert claims.scopes == {"admin", "connect", "umd"}


# Hotsock claims (spec §3.5)


def test_gate_verify_refuses_connection_id_on_connect_token() -> None:
    """A token carrying ``connectionId`` can never open a connection."""
    token = make_token(make_claims(scope="connect subscribe", connectionId="abc="))
    with pytest.raises(TokenError, match="cannot open a connection"):
        verify(token)
    assert verify(token, scope=Scope.SUBSCRIBE).connection_id == "abc="


@pytest.mark.parametrize("connection_id", ["", None])
def test_gate_verify_treats_empty_connection_id_as_absent(connection_id: Any) -> None:
    """An empty or null ``connectionId`` does not bind the token."""
    assert verify(make_token(make_claims(connectionId=connection_id))).connection_id is None


def test_gate_verify_refuses_non_string_connection_id() -> None:
    """``connectionId`` must be a string."""
    with pytest.raises(TokenError, match="connectionId must be a string"):
        verify(make_token(make_claims(connectionId=5, scope="subscribe")), scope=Scope.SUBSCRIBE)


def test_gate_verify_reports_uid_and_presence() -> None:
    """``uid``: a value, null (present) or empty/absent (not present)."""
    claims = verify(make_token(make_claims(uid="x" * 128)))
    assert (claims.uid, claims.has_uid) == ("x" * 128, True)
    claims = verify(make_token(make_claims(uid=None)))
    assert (claims.uid, claims.has_uid) == (None, True)
    claims = verify(make_token(make_claims(uid="")))
    assert (claims.uid, claims.has_uid) == (None, False)
    claims = verify(make_token(make_claims()))
    assert (claims.uid, claims.has_uid) == (None, False)


def test_gate_verify_refuses_uid_too_long() -> None:
    """``uid`` is at most 128 characters (code points)."""
    assert verify(make_token(make_claims(uid="é" * 128)))
    with pytest.raises(TokenError, match="longer than 128"):
        verify(make_token(make_claims(uid="x" * 129)))


@pytest.mark.parametrize("uid", [123, True, ["u"], {"id": "u"}])
def test_gate_verify_refuses_non_string_uid(uid: Any) -> None:
    """``uid: 123`` is a wrong type (spec §3.9)."""
    with pytest.raises(TokenError, match="uid must be a string"):
        verify(make_token(make_claims(uid=uid)))


def test_gate_verify_reports_umd_and_presence() -> None:
    """``umd`` is any JSON value; null is present, absence is not."""
    claims = verify(make_token(make_claims(umd={"name": "Jim"})))
    assert (claims.umd, claims.has_umd) == ({"name": "Jim"}, True)
    claims = verify(make_token(make_claims(umd=None)))
    assert (claims.umd, claims.has_umd) == (None, True)
    claims = verify(make_token(make_claims()))
    assert (claims.umd, claims.has_umd) == (None, False)


def test_gate_verify_refuses_umd_too_large() -> None:
    """``umd`` serializes to at most 1024 bytes (compact JSON)."""
    assert verify(make_token(make_claims(umd="x" * 1022)))
    with pytest.raises(TokenError, match="larger than 1024"):
        verify(make_token(make_claims(umd="x" * 1023)))


@pytest.mark.parametrize("timeout", [5, 600])
def test_gate_verify_accepts_heartbeat_timeout_bounds(timeout: int) -> None:
    """``heartbeatTimeout`` accepts 5 and 600."""
    assert verify(make_token(make_claims(heartbeatTimeout=timeout))).heartbeat_timeout == timeout


@pytest.mark.parametrize("timeout", [4, 601, 0, -5, "30", 30.0, True])
def test_gate_verify_refuses_heartbeat_timeout_out_of_bounds(timeout: Any) -> None:
    """``heartbeatTimeout`` must be an integer 5–600."""
    with pytest.raises(TokenError, match="heartbeatTimeout"):
        verify(make_token(make_claims(heartbeatTimeout=timeout)))


@pytest.mark.parametrize("name", ["keepAlive", "singleUse", "umdUpdate", "umdPropagate"])
def test_gate_verify_refuses_non_boolean_flags(name: str) -> None:
    """Boolean top-level claims must be booleans."""
    with pytest.raises(TokenError, match=f"{name} must be a boolean"):
        verify(make_token(make_claims(**{name: "true"}, jti="j")))


def test_gate_verify_reports_boolean_flags() -> None:
    """keepAlive, umdUpdate and umdPropagate are carried to Claims; null means false."""
    claims = verify(
        make_token(make_claims(keepAlive=True, umdUpdate=True, umdPropagate=None, scope="umd")),
        scope=Scope.UMD,
    )
    assert (claims.keep_alive, claims.umd_update, claims.umd_propagate) == (True, True, False)


@pytest.mark.parametrize("jti", [DROP, "", None])
def test_gate_verify_refuses_single_use_without_jti(jti: Any) -> None:
    """``singleUse: true`` needs a non-empty ``jti``."""
    with pytest.raises(TokenError, match="must carry a jti"):
        verify(make_token(make_claims(singleUse=True, jti=jti)))


def test_gate_verify_accepts_single_use_with_jti() -> None:
    """A singleUse token with a jti passes; consumption is the caller's job."""
    claims = verify(make_token(make_claims(singleUse=True, jti="once")))
    assert (claims.single_use, claims.jti) == (True, "once")


def test_gate_verify_refuses_non_string_jti() -> None:
    """``jti`` must be a string."""
    with pytest.raises(TokenError, match="jti must be a string"):
        verify(make_token(make_claims(jti=12)))


def test_gate_verify_parses_channels_for_the_presented_scope() -> None:
    """``channels`` becomes Grants; autoSubscribe counts only for connect use."""
    token = make_token(
        make_claims(scope="connect subscribe", uid="u", channels={"lobby": {"autoSubscribe": True}})
    )
    assert verify(token).grants.auto_subscribe() == ["lobby"]
    assert verify(token, scope=Scope.SUBSCRIBE).grants.auto_subscribe() == []
    assert verify(make_token()).grants is Grants.EMPTY


def test_gate_verify_refuses_invalid_channels_claim() -> None:
    """A bad ``channels`` claim (e.g. a regex RE2 rejects) refuses the whole token."""
    with pytest.raises(TokenError, match="invalid regex key"):
        verify(make_token(make_claims(channels={"#regex:(?=x)": {"subscribe": True}})))
    with pytest.raises(TokenError, match="subscribe must be a boolean"):
        verify(make_token(make_claims(channels={"c": {"subscribe": "yes"}})))


def test_gate_verify_keeps_raw_payload() -> None:
    """Claims.raw is the whole decoded payload, unknown claims included."""
    claims = verify(make_token(make_claims(custom={"a": 1})))
    assert claims.raw["custom"] == {"a": 1}


# Binding (spec §3.13)


def subscribe_claims(**overrides: Any) -> Claims:
    token = make_token(make_claims(scope="subscribe", **overrides))
    return verify(token, scope=Scope.SUBSCRIBE)


def test_check_binding_accepts_matching_connection_id() -> None:
    """connectionId binds to that connection; the uid is then not compared."""
    claims = subscribe_claims(connectionId="conn=", uid="someone-else")
    check_binding(claims, connection_id="conn=", uid="jim")


def test_check_binding_refuses_other_connection_id() -> None:
    """A token bound to another connection is refused."""
    with pytest.raises(TokenError, match="another connection"):
        check_binding(subscribe_claims(connectionId="conn="), connection_id="other=", uid=None)


def test_check_binding_accepts_matching_uid() -> None:
    """Without connectionId, a non-empty uid must equal the connection's."""
    check_binding(subscribe_claims(uid="jim"), connection_id="any=", uid="jim")


@pytest.mark.parametrize("connection_uid", ["bob", None])
def test_check_binding_refuses_other_uid(connection_uid: str | None) -> None:
    """A uid that differs from the connection's (or a connection without uid) is refused."""
    with pytest.raises(TokenError, match="does not match"):
        check_binding(subscribe_claims(uid="jim"), connection_id="c=", uid=connection_uid)


@pytest.mark.parametrize("uid", [DROP, None, ""])
def test_check_binding_refuses_unbound_token(uid: Any) -> None:
    """A token with neither connectionId nor a non-empty uid is refused."""
    with pytest.raises(TokenError, match="connectionId or uid"):
        check_binding(subscribe_claims(uid=uid), connection_id="c=", uid=None)


# SigningKey.from_setting and TokenGate configuration


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.mark.parametrize(("alg", "family"), _ASYMMETRIC)
def test_signing_key_from_setting_accepts_base64_pem(alg: str, family: str) -> None:
    """A Base64-wrapped PEM public key builds a working key."""
    private = private_key(family)
    key = SigningKey.from_setting(alg, b64(public_pem(private)), "k1")
    assert (key.method, key.kid) == (alg, "k1")
    token = make_token(key=private, alg=alg, headers={"kid": "k1"})
    assert verify(token, gate=make_gate(key))


def test_signing_key_from_setting_accepts_wrapped_and_urlsafe_base64() -> None:
    """Line-wrapped and URL-safe Base64 decode to the same secret; an empty kid means none."""
    secret = b"\xfb\xff" * 16
    wrapped = base64.encodebytes(secret).decode("ascii")
    urlsafe = base64.urlsafe_b64encode(secret).decode("ascii")
    assert SigningKey.from_setting("HS256", wrapped, "") == SigningKey("HS256", secret)
    assert SigningKey.from_setting("HS512", urlsafe, None).material == secret


def test_signing_key_repr_hides_material() -> None:
    """The secret never appears in repr."""
    assert "0123456789" not in repr(SigningKey("HS256", SECRET, "k"))


@pytest.mark.parametrize(
    ("method", "value", "message"),
    [
        ("HS256", "not base64!", "not valid Base64"),
        ("HS256", "abc", "not valid Base64"),
        ("none", b64(SECRET), "unknown method"),
        ("HS257", b64(SECRET), "unknown method"),
        ("HS256", "", "empty secret"),
        ("RS256", b64(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"), "usable"),
        ("ES256", b64(b"garbage"), "usable"),
        ("EdDSA", b64(b"garbage"), "usable"),
    ],
)
def test_signing_key_from_setting_refuses_bad_values(method: str, value: str, message: str) -> None:
    """Bad Base64, unknown methods, empty secrets and unparseable PEM are ConfigErrors."""
    with pytest.raises(ConfigError, match=message):
        SigningKey.from_setting(method, value, None)


def test_signing_key_from_setting_refuses_public_key_as_hmac_secret() -> None:
    """A PEM (or SSH) public key can never become an HMAC secret."""
    for material in (public_pem(private_key("RSA")), b"ssh-ed25519 AAAA user@host"):
        with pytest.raises(ConfigError, match="looks like a public key"):
            SigningKey.from_setting("HS256", b64(material), None)


@pytest.mark.parametrize(
    ("method", "family"),
    [
        ("RS256", "P-256"),
        ("PS256", "Ed25519"),
        ("ES256", "P-384"),
        ("ES512", "RSA"),
        ("EdDSA", "P-256"),
    ],
)
def test_signing_key_from_setting_refuses_key_of_wrong_type(method: str, family: str) -> None:
    """The key type (and EC curve) must fit the method."""
    with pytest.raises(ConfigError, match="usable"):
        SigningKey.from_setting(method, b64(public_pem(private_key(family))), None)


def test_signing_key_from_setting_refuses_x25519_for_eddsa() -> None:
    """X25519 is an OKP key but cannot verify signatures."""
    pem = public_pem(x25519.X25519PrivateKey.generate())
    with pytest.raises(ConfigError, match="Ed25519 or Ed448"):
        SigningKey.from_setting("EdDSA", b64(pem), "k")


def test_token_gate_refuses_key_built_without_from_setting() -> None:
    """The gate checks keys again, so a hand-made bad SigningKey fails at start-up."""
    with pytest.raises(ConfigError, match="empty secret"):
        TokenGate(keys=[SigningKey("HS256", b"")])


@pytest.mark.parametrize(
    ("options", "message"), [({"leeway": -1}, "leeway"), ({"max_token_bytes": 0}, "size")]
)
def test_token_gate_refuses_bad_limits(options: dict[str, int], message: str) -> None:
    """Negative leeway and non-positive size limits are ConfigErrors."""
    with pytest.raises(ConfigError, match=message):
        make_gate(**options)


@pytest.mark.parametrize("name", ["exp", "nbf"])
@pytest.mark.parametrize("value", [b"1000000000000000000000000000000", b"1e30", b"253402300800"])
def test_gate_verify_refuses_dates_after_the_year_9999(name: str, value: bytes) -> None:
    """``exp`` or ``nbf`` of 10**30 (or just after 9999-12-31) is an invalid token, not an
    overflow further on (a singleUse claim's lifetime is derived from ``exp``)."""
    other = b'"nbf":1,' if name == "exp" else f'"exp":{int(NOW) + 60},'.encode()
    payload = b'{"scope":"connect",' + other + f'"{name}":'.encode() + value + b"}"
    with pytest.raises(TokenError, match=f"token {name} is out of range"):
        verify(make_token(payload=payload))


def test_gate_verify_accepts_the_last_second_of_9999() -> None:
    assert verify(make_token(make_claims(exp=253_402_300_799))).exp == 253_402_300_799
