"""Tests for tidings.sdk.issuer: tokens for every algorithm family, claim defaults, bad input."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from joserfc import jwt
from joserfc.errors import BadSignatureError, SecurityWarning
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey

from tidings.sdk import issuer as issuer_module
from tidings.sdk.issuer import ALGORITHMS, Issuer

HMAC_SECRET = b"a-shared-secret-of-32-bytes-long"
NOW = 1_718_000_000


def pem_private(key: Any, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())  # type: ignore[no-any-return]


def pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "ES384": ec.generate_private_key(ec.SECP384R1()),
        "ES512": ec.generate_private_key(ec.SECP521R1()),
    }


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(time, "time", lambda: NOW + 0.75)
    yield NOW


def private_and_public(
    algorithm: str,
    rsa_key: rsa.RSAPrivateKey,
    ec_keys: dict[str, ec.EllipticCurvePrivateKey],
    ed_key: ed25519.Ed25519PrivateKey,
) -> tuple[Any, Key]:
    """The signing key for ``algorithm`` and the joserfc key a server would verify with."""
    if algorithm.startswith("HS"):
        return HMAC_SECRET, OctKey.import_key(HMAC_SECRET)
    if algorithm[:2] in ("RS", "PS"):
        return rsa_key, RSAKey.import_key(pem_public(rsa_key))
    if algorithm.startswith("ES"):
        key = ec_keys[algorithm]
        return key, ECKey.import_key(pem_public(key))
    return ed_key, OKPKey.import_key(pem_public(ed_key))


def decode(token: str, key: Key, algorithm: str) -> jwt.Token:
    """Verify ``token`` the way a server restricted to ``algorithm`` would."""
    with warnings.catch_warnings():
        # joserfc warns that the name "EdDSA" is deprecated (RFC 9864); spec §3.2 requires it.
        warnings.simplefilter("ignore", SecurityWarning)
        return jwt.decode(token, key, algorithms=[algorithm])


# Every algorithm family


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_issuer_token_verifies_with_public_key(
    algorithm: str,
    rsa_key: rsa.RSAPrivateKey,
    ec_keys: dict[str, ec.EllipticCurvePrivateKey],
    ed_key: ed25519.Ed25519PrivateKey,
) -> None:
    """A token issued with each algorithm verifies against the matching public key."""
    private, public = private_and_public(algorithm, rsa_key, ec_keys, ed_key)
    issuer = Issuer(private, algorithm=algorithm, kid="key-1")
    token = issuer.issue({"uid": "42"}, scope="connect")
    decoded = decode(token, public, algorithm)
    assert decoded.header == {"typ": "JWT", "alg": algorithm, "kid": "key-1"}
    assert decoded.claims["uid"] == "42"
    assert decoded.claims["scope"] == "connect"


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS - {"HS256", "HS384", "HS512"}))
@pytest.mark.parametrize("form", ["object", "pkcs8-str", "pkcs8-bytes", "traditional-str"])
def test_issuer_accepts_key_objects_and_pem_forms(
    algorithm: str,
    form: str,
    rsa_key: rsa.RSAPrivateKey,
    ec_keys: dict[str, ec.EllipticCurvePrivateKey],
    ed_key: ed25519.Ed25519PrivateKey,
) -> None:
    """Asymmetric keys may be cryptography objects or PEM text/bytes in the common formats."""
    private, public = private_and_public(algorithm, rsa_key, ec_keys, ed_key)
    if form == "object":
        key: Any = private
    elif form.startswith("pkcs8"):
        key = pem_private(private, serialization.PrivateFormat.PKCS8)
    elif algorithm == "EdDSA":
        # Ed25519 has no "traditional" OpenSSL encoding; PKCS#8 is its only PEM form.
        key = pem_private(private, serialization.PrivateFormat.PKCS8)
    else:
        key = pem_private(private, serialization.PrivateFormat.TraditionalOpenSSL)
    if form.endswith("-str"):
        key = key.decode()
    token = Issuer(key, algorithm=algorithm).issue({}, scope="connect")
    assert decode(token, public, algorithm).claims["scope"] == "connect"


def test_issuer_hmac_str_and_bytes_secret_are_the_same_key() -> None:
    """A str secret signs with its UTF-8 bytes."""
    token = Issuer(HMAC_SECRET.decode()).issue({}, scope="connect")
    assert decode(token, OctKey.import_key(HMAC_SECRET), "HS256").claims["scope"] == "connect"
    with pytest.raises(BadSignatureError):
        decode(token, OctKey.import_key(HMAC_SECRET + b"x"), "HS256")


def test_issuer_eddsa_ed448_supported() -> None:
    """Ed448 keys also sign as EdDSA (spec §3.2: MAY be supported)."""
    key = ed448.Ed448PrivateKey.generate()
    token = Issuer(key, algorithm="EdDSA").issue({}, scope="connect")
    assert decode(token, OKPKey.import_key(pem_public(key)), "EdDSA").header["alg"] == "EdDSA"


def test_issuer_eddsa_emits_no_warning(ed_key: ed25519.Ed25519PrivateKey) -> None:
    """Issuing an EdDSA token does not trip joserfc's deprecation warning."""
    issuer = Issuer(ed_key, algorithm="EdDSA")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        issuer.issue({}, scope="connect")


def test_issuer_without_kid_omits_header() -> None:
    """No kid configured → no kid header."""
    token = Issuer(HMAC_SECRET).issue({}, scope="connect")
    assert decode(token, OctKey.import_key(HMAC_SECRET), "HS256").header == {
        "typ": "JWT",
        "alg": "HS256",
    }


# Claims and defaults


def claims_of(token: str) -> dict[str, Any]:
    return dict(decode(token, OctKey.import_key(HMAC_SECRET), "HS256").claims)


def test_issue_adds_exp_from_default_ttl(frozen_clock: int) -> None:
    """Without exp or ttl, exp is now + default_ttl in whole seconds."""
    assert claims_of(Issuer(HMAC_SECRET).issue({}))["exp"] == frozen_clock + 3600
    assert claims_of(Issuer(HMAC_SECRET, default_ttl=60).issue({}))["exp"] == frozen_clock + 60


def test_issue_ttl_overrides_default(frozen_clock: int) -> None:
    """ttl sets the lifetime of one token."""
    assert claims_of(Issuer(HMAC_SECRET).issue({}, ttl=30))["exp"] == frozen_clock + 30


def test_issue_keeps_explicit_exp_nbf_iat() -> None:
    """Explicit registered claims are kept; aware datetimes become Unix seconds."""
    when = datetime(2030, 1, 1, tzinfo=UTC)
    claims = claims_of(Issuer(HMAC_SECRET).issue({"exp": 1_900_000_000, "nbf": when, "iat": 5}))
    assert claims == {"exp": 1_900_000_000, "nbf": int(when.timestamp()), "iat": 5}


def test_issue_adds_iss_and_aud_when_configured_and_absent() -> None:
    """Configured issuer/audience fill in iss/aud but never override the caller's."""
    issuer = Issuer(HMAC_SECRET, issuer="backend", audience="tidings")
    claims = claims_of(issuer.issue({}))
    assert (claims["iss"], claims["aud"]) == ("backend", "tidings")
    claims = claims_of(issuer.issue({"iss": "other", "aud": ["x", "y"]}))
    assert (claims["iss"], claims["aud"]) == ("other", ["x", "y"])
    listed = Issuer(HMAC_SECRET, audience=["a", "b"])
    assert claims_of(listed.issue({}))["aud"] == ["a", "b"]
    assert "iss" not in claims_of(Issuer(HMAC_SECRET).issue({}))


def test_issue_scope_argument_sets_claim_and_conflict_is_error() -> None:
    """scope= sets the claim; a different scope claim alongside it is an error."""
    assert claims_of(Issuer(HMAC_SECRET).issue({}, scope="umd"))["scope"] == "umd"
    same = Issuer(HMAC_SECRET).issue({"scope": "umd"}, scope="umd")
    assert claims_of(same)["scope"] == "umd"
    with pytest.raises(ValueError, match="conflicts"):
        Issuer(HMAC_SECRET).issue({"scope": "connect"}, scope="umd")


def test_issue_does_not_mutate_input_claims() -> None:
    """The caller's mapping is left untouched."""
    claims: dict[str, Any] = {"uid": "1"}
    Issuer(HMAC_SECRET, issuer="me").issue(claims, scope="connect")
    assert claims == {"uid": "1"}


def test_connect_token_builds_connect_claims(frozen_clock: int) -> None:
    """connect_token() sets scope connect, channels, uid, umd, ttl and passes other claims."""
    channels = {"chat.*": {"subscribe": True, "messages": {"msg": {"publish": True}}}}
    token = Issuer(HMAC_SECRET).connect_token(
        channels=channels, uid="42", umd={"name": "Jim"}, ttl=120, keepAlive=True
    )
    assert claims_of(token) == {
        "scope": "connect",
        "channels": channels,
        "uid": "42",
        "umd": {"name": "Jim"},
        "keepAlive": True,
        "exp": frozen_clock + 120,
    }


def test_connect_token_minimal_and_extra_scope() -> None:
    """Without arguments only scope and exp are set; a wider scope must include connect."""
    assert set(claims_of(Issuer(HMAC_SECRET).connect_token())) == {"scope", "exp"}
    token = Issuer(HMAC_SECRET).connect_token(scope="connect umd")
    assert claims_of(token)["scope"] == "connect umd"
    with pytest.raises(ValueError, match="must include 'connect'"):
        Issuer(HMAC_SECRET).connect_token(scope="subscribe")


def test_connect_token_refuses_connection_id() -> None:
    """A connect token bound to a connection could never open one (spec §3.5)."""
    with pytest.raises(ValueError, match="connectionId"):
        Issuer(HMAC_SECRET).connect_token(connectionId="IDnAdd9kIAMCEsQ=")


def test_subscribe_token_bound_by_connection_id_or_uid() -> None:
    """subscribe_token() needs connection_id or a non-empty uid (spec §3.13)."""
    issuer = Issuer(HMAC_SECRET)
    by_conn = claims_of(issuer.subscribe_token(connection_id="IDnAdd9kIAMCEsQ=", channels={}))
    assert by_conn["connectionId"] == "IDnAdd9kIAMCEsQ="
    assert by_conn["scope"] == "subscribe"
    assert "uid" not in by_conn
    by_uid = claims_of(
        issuer.subscribe_token(uid="42", channels={"presence.x": {"subscribe": True}})
    )
    assert by_uid["uid"] == "42"
    assert by_uid["channels"] == {"presence.x": {"subscribe": True}}
    bad: list[dict[str, Any]] = [{}, {"uid": ""}, {"connection_id": ""}]
    for kwargs in bad:
        with pytest.raises(ValueError):
            issuer.subscribe_token(**kwargs)


def test_subscribe_token_umd_none_is_written_as_null() -> None:
    """umd=None writes "umd": null (clears metadata); omitting umd leaves the claim out."""
    issuer = Issuer(HMAC_SECRET)
    assert claims_of(issuer.subscribe_token(uid="1", umd=None))["umd"] is None
    assert "umd" not in claims_of(issuer.subscribe_token(uid="1"))
    assert claims_of(issuer.subscribe_token(uid="1", umd=[1]))["umd"] == [1]


def test_issuer_repr_hides_key() -> None:
    """repr() names the algorithm and kid, never the secret."""
    text = repr(Issuer(HMAC_SECRET, kid="k"))
    assert "HS256" in text and "'k'" in text
    assert HMAC_SECRET.decode() not in text


def test_issue_token_is_compact_jws_with_json_payload() -> None:
    """The token is three base64url parts; the payload is plain JSON."""
    import base64

    token = Issuer(HMAC_SECRET).issue({"uid": "é"}, scope="connect")
    header, payload, signature = token.split(".")
    assert signature
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert decoded["uid"] == "é"
    assert json.loads(base64.urlsafe_b64decode(header + "==="))["typ"] == "JWT"


def test_issue_exp_is_close_to_real_clock() -> None:
    """Without a patched clock, exp is within a second or two of now + ttl."""
    before = int(time.time())
    exp = claims_of(Issuer(HMAC_SECRET).issue({}, ttl=10))["exp"]
    assert before + 10 <= exp <= int(time.time()) + 10


# Bad arguments


@pytest.mark.parametrize("algorithm", ["none", "hs256", "RS1", "Ed25519", "", "HS256 "])
def test_issuer_unknown_algorithm_rejected(algorithm: str) -> None:
    """Only the algorithms of spec §3.2 are offered; "none" never."""
    with pytest.raises(ValueError, match="unsupported algorithm"):
        Issuer(HMAC_SECRET, algorithm=algorithm)


def test_issuer_hmac_key_errors(rsa_key: rsa.RSAPrivateKey) -> None:
    """HMAC needs a non-empty str/bytes secret, not a PEM or key object."""
    with pytest.raises(ValueError, match="empty"):
        Issuer(b"")
    with pytest.raises(ValueError, match="not a PEM key"):
        Issuer(pem_private(rsa_key, serialization.PrivateFormat.PKCS8))
    with pytest.raises(ValueError, match="not a PEM key"):
        Issuer(pem_public(rsa_key).decode())
    with pytest.raises(ValueError, match="str or bytes"):
        Issuer(rsa_key)
    with pytest.raises(ValueError, match="str or bytes"):
        Issuer(42)  # type: ignore[arg-type]


def test_issuer_asymmetric_key_mismatch_errors(
    rsa_key: rsa.RSAPrivateKey,
    ec_keys: dict[str, ec.EllipticCurvePrivateKey],
    ed_key: ed25519.Ed25519PrivateKey,
) -> None:
    """The key type (and EC curve) must fit the algorithm."""
    with pytest.raises(ValueError, match="RSA private key"):
        Issuer(ec_keys["ES256"], algorithm="RS256")
    with pytest.raises(ValueError, match="EC private key"):
        Issuer(rsa_key, algorithm="ES256")
    with pytest.raises(ValueError, match="curve secp256r1, got secp384r1"):
        Issuer(ec_keys["ES384"], algorithm="ES256")
    with pytest.raises(ValueError, match="Ed25519 or Ed448"):
        Issuer(ec_keys["ES256"], algorithm="EdDSA")
    with pytest.raises(ValueError, match="EC private key"):
        Issuer(pem_private(ed_key, serialization.PrivateFormat.PKCS8), algorithm="ES256")


def test_issuer_asymmetric_public_or_garbage_pem_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    """Signing needs the private key; a public key, garbage or a secret is refused clearly."""
    with pytest.raises(ValueError, match="public key belongs in the server"):
        Issuer(pem_public(rsa_key), algorithm="RS256")
    with pytest.raises(ValueError, match="PEM private key"):
        Issuer("not a pem", algorithm="RS256")
    with pytest.raises(ValueError, match="PEM private key"):
        Issuer(42, algorithm="RS256")  # type: ignore[arg-type]


def test_issuer_encrypted_pem_rejected_with_hint(rsa_key: rsa.RSAPrivateKey) -> None:
    """An encrypted PEM points the caller at loading the key object themselves."""
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(ValueError, match="encrypted"):
        Issuer(pem, algorithm="RS256")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kid": ""},
        {"kid": 5},
        {"issuer": ""},
        {"audience": ""},
        {"audience": []},
        {"audience": ["ok", ""]},
        {"audience": 5},
        {"default_ttl": 0},
        {"default_ttl": -5},
        {"default_ttl": 1.5},
        {"default_ttl": True},
    ],
)
def test_issuer_bad_options_rejected(kwargs: dict[str, Any]) -> None:
    """Options are checked when the issuer is built."""
    with pytest.raises(ValueError):
        Issuer(HMAC_SECRET, **kwargs)


@pytest.mark.parametrize(
    ("claims", "kwargs", "match"),
    [
        ({}, {"ttl": 0}, "ttl"),
        ({}, {"ttl": "60"}, "ttl"),
        ({"exp": 1}, {"ttl": 60}, "not both"),
        ({"exp": "tomorrow"}, {}, "NumericDate"),
        ({"exp": True}, {}, "NumericDate"),
        ({"exp": float("inf")}, {}, "NumericDate"),
        ({"nbf": datetime(2030, 1, 1)}, {}, "timezone-aware"),
        ({"scope": ""}, {}, "scope"),
        ({"scope": ["connect"]}, {}, "scope"),
        ({}, {"scope": "  "}, "scope"),
        ({"data": object()}, {}, "JSON"),
        ({"data": float("nan")}, {}, "JSON"),
        ({1: "x"}, {}, "claim names"),
    ],
)
def test_issue_bad_claims_rejected(
    claims: dict[Any, Any], kwargs: dict[str, Any], match: str
) -> None:
    """issue() refuses claims and arguments it cannot encode faithfully."""
    with pytest.raises(ValueError, match=match):
        Issuer(HMAC_SECRET).issue(claims, **kwargs)


def test_issue_claims_must_be_mapping() -> None:
    """A list of pairs is not a claims mapping."""
    with pytest.raises(ValueError, match="mapping"):
        Issuer(HMAC_SECRET).issue([("uid", "1")])  # type: ignore[arg-type]


def test_builders_check_uid_umd_channels() -> None:
    """uid ≤ 128 characters, umd ≤ 1 KiB of JSON, channels a mapping (spec §3.5)."""
    issuer = Issuer(HMAC_SECRET)
    issuer.connect_token(uid="u" * 128, umd={"k": "v" * 1000})
    with pytest.raises(ValueError, match="128"):
        issuer.connect_token(uid="u" * 129)
    with pytest.raises(ValueError, match="uid must be a string"):
        issuer.connect_token(uid=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1024 bytes"):
        issuer.connect_token(umd={"k": "v" * 1020})
    with pytest.raises(ValueError, match="1024 bytes"):
        issuer.subscribe_token(uid="1", umd="é" * 600)
    with pytest.raises(ValueError, match="JSON"):
        issuer.connect_token(umd={1, 2})
    with pytest.raises(ValueError, match="channels"):
        issuer.connect_token(channels=["chat"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="connection_id="):
        issuer.subscribe_token(uid="1", connectionId="x")


def test_issuer_module_exports() -> None:
    """__all__ lists the public names."""
    assert issuer_module.__all__ == ["ALGORITHMS", "Issuer"]
    assert len(ALGORITHMS) == 13
