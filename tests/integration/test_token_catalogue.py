"""The bad-token catalogue as one parametrised handshake test: every case goes through a real
WebSocket handshake against a node that trusts an HS256 secret and an RS256 public key, and
must be refused with 401 ``INVALID_CONNECT_TOKEN`` (a JSON body, no internals) or, for the
controls, accepted. Then single-use races across two nodes sharing Redis.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import websockets
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tests.conftest import SECRET, Server, StartServer, make_settings
from tests.services import REDIS_URL, require_redis

from tidings.config import Secret, SigningKeySetting

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_PUBLIC_PEM = _RSA.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
_ATTACKER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**extra: Any) -> dict[str, Any]:
    return {"exp": int(time.time()) + 3600, "scope": "connect", **extra}


def _raw(
    header: dict[str, Any], payload: bytes | dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(body)}".encode()
    return f"{signing_input.decode()}.{_b64(sign(signing_input))}"


def _hs(key: bytes = SECRET, alg: str = "HS256") -> Callable[[bytes], bytes]:
    import hmac

    digest = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}[alg]
    return lambda data: hmac.new(key, data, digest).digest()


def _rs(key: rsa.RSAPrivateKey = _RSA) -> Callable[[bytes], bytes]:
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _none(data: bytes) -> bytes:
    return b""


def hs(payload: bytes | dict[str, Any] | None = None, **header: Any) -> str:
    """An HS256 token signed with the trusted secret (header fields may be overridden)."""
    return _raw({"alg": "HS256", "typ": "JWT", **header}, payload or _claims(), _hs())


def _attacker_jwk() -> dict[str, Any]:
    numbers = _ATTACKER.public_key().public_numbers()
    return {
        "kty": "RSA",
        "n": _b64(numbers.n.to_bytes(256, "big")),
        "e": _b64(numbers.e.to_bytes(3, "big")),
    }


NOW = int(time.time())
CATASTROPHIC = {"channels": {"#regex:^(a+)+$": {"subscribe": True}, "#regex:(x+x+)+y": {}}}

# (case id, token, accepted)
CASES: list[tuple[str, str, bool]] = [
    # controls: the node does accept good tokens of both keys
    ("good-hs256", hs(), True),
    ("good-rs256", _raw({"alg": "RS256", "typ": "JWT"}, _claims(), _rs()), True),
    ("catastrophic-regex-accepted-by-re2", hs(_claims(**CATASTROPHIC)), True),
    ("large-but-allowed-claims", hs(_claims(umd={"x": "y" * 1000})), True),
    # alg none and its spellings
    *[
        (f"alg-{alg}", _raw({"alg": alg, "typ": "JWT"}, _claims(), _none), False)
        for alg in ("none", "None", "NONE", "nOnE")
    ],
    ("alg-none-with-signature", _raw({"alg": "none"}, _claims(), _hs()), False),
    ("alg-missing", _raw({"typ": "JWT"}, _claims(), _hs()), False),
    ("alg-empty", _raw({"alg": ""}, _claims(), _hs()), False),
    ("alg-not-a-string", _raw({"alg": ["HS256"]}, _claims(), _hs()), False),
    ("alg-unknown", _raw({"alg": "HS1024"}, _claims(), _hs()), False),
    # key confusion: the RSA public key used as an HMAC secret, and algorithm swaps
    (
        "rsa-public-key-as-hmac-secret",
        _raw({"alg": "HS256"}, _claims(), _hs(_RSA_PUBLIC_PEM)),
        False,
    ),
    ("hs256-header-rs256-signature", _raw({"alg": "HS256"}, _claims(), _rs()), False),
    ("rs256-header-hmac-signature", _raw({"alg": "RS256"}, _claims(), _hs()), False),
    ("hs384-with-the-hs256-secret", _raw({"alg": "HS384"}, _claims(), _hs(alg="HS384")), False),
    ("wrong-secret", _raw({"alg": "HS256"}, _claims(), _hs(b"not-the-secret")), False),
    ("attacker-rsa-key", _raw({"alg": "RS256"}, _claims(), _rs(_ATTACKER)), False),
    # header parameters that carry or point at keys, and critical extensions
    (
        "embedded-jwk",
        _raw({"alg": "RS256", "jwk": _attacker_jwk()}, _claims(), _rs(_ATTACKER)),
        False,
    ),
    (
        "jku",
        _raw({"alg": "RS256", "jku": "http://127.0.0.1:9/k"}, _claims(), _rs(_ATTACKER)),
        False,
    ),
    (
        "x5u",
        _raw({"alg": "RS256", "x5u": "http://127.0.0.1:9/c"}, _claims(), _rs(_ATTACKER)),
        False,
    ),
    ("x5c", _raw({"alg": "RS256", "x5c": ["MIIB"]}, _claims(), _rs(_ATTACKER)), False),
    (
        "kid-path-traversal",
        _raw({"alg": "HS256", "kid": "../../dev/null"}, _claims(), _hs(b"")),
        False,
    ),
    ("crit-exp", hs(crit=["exp"]), False),
    ("crit-b64-false", hs(crit=["b64"], b64=False), False),
    ("crit-empty", hs(crit=[]), False),
    # dates
    ("expired", hs(_claims(exp=NOW - 10)), False),
    ("exp-missing", hs({"scope": "connect"}), False),
    ("exp-string", hs(_claims(exp=str(NOW + 3600))), False),
    ("exp-bool", hs(_claims(exp=True)), False),
    ("exp-10e30", hs(b'{"scope":"connect","exp":1000000000000000000000000000000}'), False),
    ("exp-1e309-infinite", hs(b'{"scope":"connect","exp":1e309}'), False),
    ("exp-negative-huge", hs(b'{"scope":"connect","exp":-1e30}'), False),
    ("nbf-future", hs(_claims(nbf=NOW + 3600)), False),
    ("nbf-10e30", hs(b'{"scope":"connect","exp":%d,"nbf":1e30}' % (NOW + 3600)), False),
    # types and shapes
    ("scope-missing", hs({"exp": NOW + 3600}), False),
    ("scope-subscribe", hs(_claims(scope="subscribe")), False),
    ("scope-number", hs(_claims(scope=1)), False),
    ("channels-not-an-object", hs(_claims(channels=["room"])), False),
    ("uid-number", hs(_claims(uid=42)), False),
    ("payload-array", hs(b"[1,2,3]"), False),
    ("payload-not-json", hs(b"{not json"), False),
    # RFC 7519 §4: a parser may keep the lexically last duplicate (orjson does)
    ("payload-duplicate-keys", hs(b'{"scope":"connect","exp":1,"exp":%d}' % (NOW + 3600)), True),
    (
        "payload-duplicate-keys-last-expired",
        hs(b'{"scope":"connect","exp":%d,"exp":1}' % (NOW + 3600)),
        False,
    ),
    ("two-parts", "a.b", False),
    ("four-parts", hs() + ".x", False),
    ("empty", "", False),
    ("not-base64", "@@@.###.$$$", False),
    ("header-not-json", f"{_b64(b'nope')}.{_b64(orjson.dumps(_claims()))}.sig", False),
    ("signature-truncated", hs()[:-4], False),
    ("jwe-five-parts", "a.b.c.d.e", False),
    ("regex-invalid", hs(_claims(channels={"#regex:(?=x)": {"subscribe": True}})), False),
]


@pytest.fixture
async def node(start_server: StartServer) -> Server:
    settings = make_settings()
    keys = (
        *settings.auth.signing_keys,
        SigningKeySetting("RS256", Secret(base64.b64encode(_RSA_PUBLIC_PEM).decode())),
    )
    return await start_server(signing_keys=keys)


async def _handshake(server: Server, token: str) -> tuple[int, bytes]:
    try:
        ws = await websockets.connect(
            f"{server.ws_url}?token={urllib.parse.quote(token, safe='')}", compression=None
        )
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, bytes(exc.response.body)
    try:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame["event"] == "hotsock.connected"
    finally:
        await ws.close()
    return 101, b""


@pytest.mark.parametrize(
    ("token", "accepted"), [(t, a) for _, t, a in CASES], ids=[c[0] for c in CASES]
)
async def test_token_catalogue_handshake(node: Server, token: str, accepted: bool) -> None:
    """Each case is accepted or refused with 401 INVALID_CONNECT_TOKEN and a JSON body that
    names no internals; the node serves a good token afterwards."""
    status, body = await _handshake(node, token)
    if accepted:
        assert status == 101
    else:
        assert status == 401, (status, body)
        error = orjson.loads(body)["error"]
        assert error["code"] == "INVALID_CONNECT_TOKEN"
        assert "Traceback" not in error["message"] and "sha" not in error["message"].lower()
    assert (await _handshake(node, hs()))[0] == 101


async def test_token_catalogue_catastrophic_regex_answers_a_subscribe(node: Server) -> None:
    """RE2 matches in linear time: a subscribe to a channel built to make a backtracking
    engine explode is answered (refused) at once."""
    client = await node.connect(token=hs(_claims(**CATASTROPHIC)))
    await client.send({"event": "hotsock.subscribe", "channel": "a" * 120 + "!"})
    error = await client.expect("hotsock.error")
    assert error["error"]["code"] == "SUBSCRIBE_PERMISSION_DENIED"


@pytest.fixture
async def two_nodes(start_server: StartServer) -> AsyncIterator[tuple[Server, Server]]:
    await require_redis()
    prefix = f"tidings-tok-{secrets.token_hex(4)}:"
    url = f"{REDIS_URL}?prefix={prefix}"
    nodes = (await start_server(broker=url), await start_server(broker=url))
    yield nodes
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.mark.integration
@pytest.mark.parametrize("exp", [NOW + 3600, 253_402_300_799], ids=["soon", "year-9999"])
async def test_token_catalogue_single_use_race_across_two_nodes(
    two_nodes: tuple[Server, Server], exp: int
) -> None:
    """One singleUse token presented 10 times at once on two nodes connects exactly once,
    even when it is valid until the year 9999 (its claim lifetime is clamped, not refused)."""
    a, b = two_nodes
    token = hs(_claims(exp=exp, singleUse=True, jti=f"race-{secrets.token_hex(4)}"))
    outcomes = await asyncio.gather(*(_handshake((a, b)[i % 2], token) for i in range(10)))
    assert sorted(status for status, _ in outcomes) == [101] + [401] * 9
    for status, body in outcomes:
        if status == 401:
            assert b"already used" in body


@pytest.mark.integration
async def test_token_catalogue_absurd_exp_single_use_is_an_invalid_token(
    two_nodes: tuple[Server, Server],
) -> None:
    """exp 10**30 on a singleUse token: 401 invalid token, never a 503 naming Redis
    internals."""
    token = hs(
        b'{"scope":"connect","singleUse":true,"jti":"j","exp":1000000000000000000000000000000}'
    )
    status, body = await _handshake(two_nodes[0], token)
    assert status == 401 and b"out of range" in body
