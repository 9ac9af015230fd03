"""Tests for tidings.sdk.webhooks: Standard Webhooks signing and verification (spec §17.3)."""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest
from multidict import CIMultiDict

from tidings.errors import ConfigError, TidingsError
from tidings.sdk import webhooks
from tidings.sdk.webhooks import (
    WebhookVerificationError,
    generate_secret,
    sign,
    signature_header,
    verify,
)

# The Standard Webhooks specification's published test vector: matching it means any of that
# specification's receiver libraries accepts tidings' deliveries.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()
NOW = 1_718_000_000
MSG_ID = "01J0000000000000000000000A"
BODY = b'{"source":"hotsock.v1","type":"hotsock.connected","data":{"id":"x"}}'


def make_headers(
    secrets: list[str] | None = None,
    *,
    msg_id: str = MSG_ID,
    timestamp: int = NOW,
    body: bytes = BODY,
) -> dict[str, str]:
    """Headers tidings would send for ``body``."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets or [SECRET], msg_id, timestamp, body),
    }


# sign / signature_header


def test_sign_matches_standard_webhooks_vector() -> None:
    """sign() reproduces the specification's reference signature."""
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_verify_accepts_standard_webhooks_vector() -> None:
    """verify() accepts the specification's reference delivery."""
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    event = verify(headers, VECTOR_BODY, VECTOR_SECRET, now=VECTOR_TIMESTAMP)
    assert event == {"test": 2432232314}


def test_sign_plain_secret_uses_utf8_bytes() -> None:
    """A secret without the whsec_ prefix is used as its UTF-8 bytes, not Base64-decoded."""
    raw = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert sign(raw, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) != VECTOR_SIGNATURE
    as_whsec = "whsec_" + base64.b64encode(raw.encode()).decode()
    assert sign(raw, VECTOR_ID, 1, b"{}") == sign(as_whsec, VECTOR_ID, 1, b"{}")


def test_signature_header_one_entry_per_secret_in_order() -> None:
    """signature_header() joins one v1 entry per secret with spaces, in the secrets' order."""
    header = signature_header([SECRET, OTHER_SECRET], MSG_ID, NOW, BODY)
    assert header.split(" ") == [
        sign(SECRET, MSG_ID, NOW, BODY),
        sign(OTHER_SECRET, MSG_ID, NOW, BODY),
    ]


@pytest.mark.parametrize("secrets", [[], ["whsec_!!!"], [""], "x"[:0]])
def test_signature_header_bad_secrets_raise_config_error(secrets: Any) -> None:
    """An empty list, an empty secret or bad whsec_ Base64 is a configuration error."""
    with pytest.raises(ConfigError):
        signature_header(secrets, MSG_ID, NOW, BODY)


@pytest.mark.parametrize("timestamp", [-1, 1.5, True, "1"])
def test_sign_bad_timestamp_raises_value_error(timestamp: Any) -> None:
    """Timestamps are non-negative integers."""
    with pytest.raises(ValueError):
        sign(SECRET, MSG_ID, timestamp, BODY)


def test_generate_secret_round_trips() -> None:
    """A generated secret is whsec_ + Base64 of fresh random bytes and signs/verifies."""
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:])) == 24
    assert secret != generate_secret()
    headers = make_headers([secret])
    assert verify(headers, BODY, secret, now=NOW)["type"] == "hotsock.connected"
    with pytest.raises(ValueError):
        generate_secret(8)


# verify: acceptance


def test_verify_round_trip_returns_parsed_body() -> None:
    """A delivery signed with the endpoint secret verifies and yields the envelope."""
    event = verify(make_headers(), BODY, SECRET, now=NOW)
    assert event == {"source": "hotsock.v1", "type": "hotsock.connected", "data": {"id": "x"}}


def test_verify_header_names_case_insensitive_in_plain_dict() -> None:
    """Header names match whatever their case, also in a plain dict."""
    headers = {k.title(): v for k, v in make_headers().items()}
    assert "Webhook-Signature" in headers
    assert verify(headers, BODY, SECRET, now=NOW)["type"] == "hotsock.connected"


def test_verify_accepts_multidict_headers_and_bytearray_body() -> None:
    """aiohttp-style CIMultiDict headers and bytes-like bodies work."""
    headers = CIMultiDict({k.upper(): v for k, v in make_headers().items()})
    assert verify(headers, bytearray(BODY), SECRET, now=NOW)["data"] == {"id": "x"}
    assert verify(headers, memoryview(BODY), SECRET, now=NOW)["data"] == {"id": "x"}
    assert verify(headers, BODY.decode(), SECRET, now=NOW)["data"] == {"id": "x"}  # type: ignore[arg-type]


def test_verify_rotation_old_new_and_both_secrets() -> None:
    """During rotation the sender signs with two secrets; a receiver holding either accepts."""
    headers = make_headers([SECRET, OTHER_SECRET])
    assert verify(headers, BODY, SECRET, now=NOW)
    assert verify(headers, BODY, OTHER_SECRET, now=NOW)
    assert verify(headers, BODY, [OTHER_SECRET, SECRET], now=NOW)


def test_verify_receiver_rotation_any_listed_secret_may_match() -> None:
    """A receiver listing old and new secrets accepts deliveries signed with only one of them."""
    assert verify(make_headers([OTHER_SECRET]), BODY, [SECRET, OTHER_SECRET], now=NOW)
    assert verify(make_headers([SECRET]), BODY, (SECRET, OTHER_SECRET), now=NOW)


def test_verify_skips_unknown_versions_and_bad_entries() -> None:
    """Entries of other versions or with garbage are skipped while a valid one still matches."""
    good = sign(SECRET, MSG_ID, NOW, BODY)
    headers = make_headers()
    headers["webhook-signature"] = f"v1a,AAAA v2,{good[3:]} v1,not*base64 v1 ,,, {good}"
    assert verify(headers, BODY, SECRET, now=NOW)


def test_verify_timestamp_within_tolerance_both_ways() -> None:
    """Timestamps exactly at the tolerance, in the past or future, are accepted."""
    assert verify(make_headers(timestamp=NOW - 300), BODY, SECRET, now=NOW)
    assert verify(make_headers(timestamp=NOW + 300), BODY, SECRET, now=NOW)
    assert verify(make_headers(timestamp=NOW - 10), BODY, SECRET, now=NOW, tolerance=10)


def test_verify_defaults_to_system_clock() -> None:
    """Without ``now`` the system clock is used: a fresh delivery verifies, a 2021 one does not."""
    import time

    fresh = int(time.time())
    assert verify(make_headers(timestamp=fresh), BODY, SECRET)
    with pytest.raises(WebhookVerificationError, match="old"):
        verify(make_headers(timestamp=VECTOR_TIMESTAMP), BODY, SECRET)


# verify: rejection


def test_verify_tampered_body_rejected() -> None:
    """Changing one byte of the body breaks the signature."""
    headers = make_headers()
    with pytest.raises(WebhookVerificationError, match="no webhook-signature entry matches"):
        verify(headers, BODY.replace(b'"x"', b'"y"'), SECRET, now=NOW)


def test_verify_tampered_id_or_timestamp_rejected() -> None:
    """The id and timestamp are signed too."""
    headers = make_headers()
    with pytest.raises(WebhookVerificationError):
        verify({**headers, "webhook-id": MSG_ID + "B"}, BODY, SECRET, now=NOW)
    with pytest.raises(WebhookVerificationError):
        verify({**headers, "webhook-timestamp": str(NOW + 1)}, BODY, SECRET, now=NOW)


def test_verify_wrong_secret_rejected() -> None:
    """A delivery signed with another secret is refused."""
    with pytest.raises(WebhookVerificationError):
        verify(make_headers([OTHER_SECRET]), BODY, SECRET, now=NOW)


def test_verify_old_timestamp_rejected_even_with_valid_signature() -> None:
    """A replay more than 5 minutes old is refused although its signature is genuine."""
    headers = make_headers(timestamp=NOW - 301)
    with pytest.raises(WebhookVerificationError, match="301 s old"):
        verify(headers, BODY, SECRET, now=NOW)


def test_verify_future_timestamp_rejected() -> None:
    """A timestamp too far in the future is refused."""
    with pytest.raises(WebhookVerificationError, match="future"):
        verify(make_headers(timestamp=NOW + 301), BODY, SECRET, now=NOW)


def test_verify_signed_non_json_body_rejected() -> None:
    """A correctly signed body that is not a JSON object is still refused."""
    for body in (b"not json", b"[1,2]", b"\xff\xfe", b""):
        headers = make_headers(body=body)
        with pytest.raises(WebhookVerificationError, match="JSON"):
            verify(headers, body, SECRET, now=NOW)


def test_verify_error_is_tidings_error_and_hides_secret() -> None:
    """The error belongs to the tidings tree and its message leaks neither secret nor digest."""
    headers = make_headers([OTHER_SECRET])
    with pytest.raises(TidingsError) as info:
        verify(headers, BODY, SECRET, now=NOW)
    text = str(info.value)
    assert SECRET[6:] not in text
    assert sign(SECRET, MSG_ID, NOW, BODY)[3:] not in text


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_missing_header_rejected(missing: str) -> None:
    """Each of the three headers is required."""
    headers = make_headers()
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match=f"missing {missing}"):
        verify(headers, BODY, SECRET, now=NOW)


GOOD = make_headers()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {**GOOD, "webhook-id": ""},
        {**GOOD, "webhook-id": "   "},
        {**GOOD, "webhook-id": "\ud800"},
        {**GOOD, "webhook-id": 12},
        {**GOOD, "webhook-timestamp": "abc"},
        {**GOOD, "webhook-timestamp": "-5"},
        {**GOOD, "webhook-timestamp": "1e9"},
        {**GOOD, "webhook-timestamp": "1_718_000_000"},
        {**GOOD, "webhook-timestamp": "١٧١٨٠٠٠٠٠٠"},
        {**GOOD, "webhook-timestamp": "9" * 400},
        {**GOOD, "webhook-timestamp": None},
        {**GOOD, "webhook-signature": ""},
        {**GOOD, "webhook-signature": "v1"},
        {**GOOD, "webhook-signature": "v1,"},
        {**GOOD, "webhook-signature": "v1,é€漢字"},
        {**GOOD, "webhook-signature": "v1,@@@@"},
        {**GOOD, "webhook-signature": "v1,AAAA"},
        {**GOOD, "webhook-signature": "v1,\x00\x01"},
        {**GOOD, "webhook-signature": "v1," + "A" * 20000},
        {**GOOD, "webhook-signature": b"v1,\xff\xfe"},
        {**GOOD, "webhook-signature": GOOD["webhook-signature"].replace("v1,", "v2,")},
        {**GOOD, "webhook-signature": GOOD["webhook-signature"][:-4]},
    ],
)
def test_verify_garbage_headers_raise_only_verification_error(headers: Any) -> None:
    """Malformed header values never raise anything but WebhookVerificationError."""
    with pytest.raises(WebhookVerificationError):
        verify(headers, BODY, SECRET, now=NOW)


@pytest.mark.parametrize("headers", [None, [("webhook-id", "x")], "webhook-id: x", 42])
def test_verify_headers_not_a_mapping_rejected(headers: Any) -> None:
    """A headers argument that is not a mapping is refused the same way."""
    with pytest.raises(WebhookVerificationError):
        verify(headers, BODY, SECRET, now=NOW)


@pytest.mark.parametrize("body", [None, 42, {"a": 1}, "\ud800"])
def test_verify_body_of_wrong_type_rejected(body: Any) -> None:
    """A body that is not bytes (or encodable text) is refused, not crashed on."""
    with pytest.raises(WebhookVerificationError):
        verify(make_headers(), body, SECRET, now=NOW)


def test_verify_random_garbage_fuzz_only_verification_error() -> None:
    """Random header values and bodies only ever produce WebhookVerificationError."""
    rng = random.Random(1234)  # fixed seed: reproducible failures
    alphabet = "v1, =+/AZaz09.-_\x00\t\u00e9\u4e2d\ud83d"
    for _ in range(500):
        headers = {
            name: "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
            for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
            if rng.random() < 0.9
        }
        if rng.random() < 0.5:
            headers["webhook-timestamp"] = str(NOW + rng.randrange(-400, 400))
        body = rng.randbytes(rng.randrange(0, 40))
        with pytest.raises(WebhookVerificationError):
            verify(headers, body, SECRET, now=NOW)


@pytest.mark.parametrize("secret", ["", [], ["whsec_%%%"], [SECRET, ""], b"raw", None, "whsec_"])
def test_verify_bad_secret_raises_config_error(secret: Any) -> None:
    """A misconfigured secret is a ConfigError (a ValueError), not a verification failure."""
    with pytest.raises(ConfigError):
        verify(make_headers(), BODY, secret, now=NOW)


@pytest.mark.parametrize("tolerance", [-1, True, "300", float("nan")])
def test_verify_bad_tolerance_raises_value_error(tolerance: Any) -> None:
    """Tolerance is a non-negative number of seconds."""
    with pytest.raises(ValueError):
        verify(make_headers(), BODY, SECRET, tolerance=tolerance, now=NOW)


def test_webhooks_module_exports() -> None:
    """__all__ lists exactly the public names, all of which exist."""
    assert sorted(webhooks.__all__) == sorted(
        [
            "DEFAULT_TOLERANCE",
            "WebhookVerificationError",
            "generate_secret",
            "sign",
            "signature_header",
            "verify",
        ]
    )
    for name in webhooks.__all__:
        assert hasattr(webhooks, name)
