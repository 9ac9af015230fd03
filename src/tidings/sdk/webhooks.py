"""Sign and verify tidings webhooks (spec §17.3, the Standard Webhooks scheme).

tidings POSTs each backend event with three headers::

    webhook-id: 01J0...                       stable across retries: use it to deduplicate
    webhook-timestamp: 1718000000             Unix seconds of this attempt
    webhook-signature: v1,<base64> v1,<base64>  one entry per configured secret

Each signature is ``base64(HMAC-SHA256(key, "{id}.{timestamp}.{raw body}"))``. A secret written
``whsec_<base64>`` is Base64-decoded to get the key; any other secret's UTF-8 bytes are the key.

A receiver calls :func:`verify` with the request headers and the *raw* body bytes (not a re-encoded
parse of them) before trusting the event::

    try:
        event = webhooks.verify(request.headers, await request.read(), secret)
    except webhooks.WebhookVerificationError:
        return web.Response(status=400)

:func:`sign` and :func:`signature_header` produce the signatures, for senders and for tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from tidings.errors import ConfigError, TidingsError

__all__ = [
    "DEFAULT_TOLERANCE",
    "WebhookVerificationError",
    "generate_secret",
    "sign",
    "signature_header",
    "verify",
]

#: Seconds a webhook timestamp may differ from the receiver's clock (spec §17.3: 5 minutes).
DEFAULT_TOLERANCE: Final = 300

_SECRET_PREFIX: Final = "whsec_"
_VERSION: Final = "v1"
_TIMESTAMP_RE: Final = re.compile(r"[0-9]{1,12}")  # ASCII only: int() would take "١٢" or " 1_0"
# Headers longer than this are refused before any work: no legitimate value comes close.
_MAX_HEADER_CHARS: Final = 8192


class WebhookVerificationError(TidingsError):
    """A webhook failed verification; the request must be rejected.

    ``str(exc)`` says why (missing header, stale timestamp, no matching signature, body not
    JSON). It never contains the secret or the expected signature.
    """


# Public functions


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Sign one webhook delivery with one secret.

    Args:
        secret: ``whsec_<base64>`` or any other non-empty string (its UTF-8 bytes are the key).
        msg_id: the ``webhook-id`` header value.
        timestamp: the ``webhook-timestamp`` header value, in Unix seconds.
        body: the exact bytes sent as the request body.

    Returns:
        ``"v1,<base64 signature>"``, one entry of the ``webhook-signature`` header.

    Raises:
        ConfigError: the secret is empty or its ``whsec_`` Base64 is invalid.
        ValueError: ``timestamp`` is not a non-negative integer.
    """
    _check_timestamp(timestamp)
    digest = _digest(_secret_key(secret), msg_id, str(timestamp), bytes(body))
    return f"{_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,…`` entry per secret, space-separated.

    During a rotation, sign with both the old and the new secret so that receivers holding either
    accept the delivery.

    Raises:
        ConfigError: ``secrets`` is empty, or a secret is invalid.
        ValueError: ``timestamp`` is not a non-negative integer.
    """
    keys = _secret_keys(secrets)
    _check_timestamp(timestamp)
    raw = bytes(body)
    digests = [_digest(key, msg_id, str(timestamp), raw) for key in keys]
    return " ".join(f"{_VERSION},{base64.b64encode(d).decode('ascii')}" for d in digests)


def verify(
    headers: Mapping[str, str],
    body: bytes | bytearray | memoryview,
    secret: str | Sequence[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a webhook's signature and freshness, and return its parsed JSON body.

    Args:
        headers: the request headers; names are matched case-insensitively, so a plain ``dict``,
            aiohttp's ``request.headers`` or any other mapping works.
        body: the raw request body, exactly as received.
        secret: the endpoint's secret, or several (e.g. old and new during a rotation); the
            delivery is accepted when any of them produced any of the listed signatures.
        tolerance: how many seconds ``webhook-timestamp`` may be away from ``now``, either way.
        now: the current Unix time; defaults to the system clock.

    Returns:
        The event envelope (spec §17.1) as a ``dict``.

    Raises:
        WebhookVerificationError: a header is missing or malformed, the timestamp is outside the
            tolerance, no signature matches, or the body is not a JSON object. Malformed input
            never raises anything else.
        ConfigError: ``secret`` is empty or invalid (a configuration mistake, not a bad request).
    """
    keys = _secret_keys(secret)
    # "not >= 0" also refuses NaN, which would make every timestamp look fresh.
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a non-negative number of seconds, got {tolerance!r}")

    msg_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")

    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise WebhookVerificationError("webhook-timestamp is not Unix seconds")
    current = time.time() if now is None else now
    # Checked before the signature: a replayed delivery is refused whatever its signature.
    skew = current - int(timestamp)
    if skew > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {int(skew)} s old, more than the {tolerance} s tolerance"
        )
    if -skew > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {int(-skew)} s in the future, more than the {tolerance} s "
            "tolerance"
        )

    raw = _body_bytes(body)
    try:
        expected = [_digest(key, msg_id, timestamp, raw) for key in keys]
    except UnicodeEncodeError as exc:  # lone surrogates in webhook-id
        raise WebhookVerificationError("webhook-id is not valid text") from exc
    if not _any_signature_matches(signatures, expected):
        raise WebhookVerificationError("no webhook-signature entry matches the secret")

    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WebhookVerificationError("webhook body is not valid JSON") from exc
    if not isinstance(event, dict):
        raise WebhookVerificationError("webhook body is not a JSON object")
    return event


def generate_secret(nbytes: int = 24) -> str:
    """A new random endpoint secret in the ``whsec_<base64>`` form.

    Args:
        nbytes: key length in bytes; Standard Webhooks recommends 24 to 64.
    """
    if nbytes < 16:
        raise ValueError("a webhook secret needs at least 16 random bytes")
    return _SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(nbytes)).decode("ascii")


# Private functions


def _digest(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def _check_timestamp(timestamp: object) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError(f"timestamp must be non-negative Unix seconds, got {timestamp!r}")


def _secret_key(secret: object) -> bytes:
    if not isinstance(secret, str) or not secret:
        raise ConfigError("A webhook secret must be a non-empty string.")
    if secret.startswith(_SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(_SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError("A whsec_ webhook secret must be followed by valid Base64.") from exc
        if not key:
            raise ConfigError("A whsec_ webhook secret must not be empty after decoding.")
        return key
    return secret.encode("utf-8")


def _secret_keys(secrets: str | Sequence[str]) -> list[bytes]:
    if isinstance(secrets, str):
        return [_secret_key(secrets)]
    if isinstance(secrets, bytes | bytearray) or not isinstance(secrets, Sequence):
        raise ConfigError("Webhook secrets must be a string or a sequence of strings.")
    if not secrets:
        raise ConfigError("At least one webhook secret is needed.")
    return [_secret_key(s) for s in secrets]


def _header(headers: Mapping[str, str], name: str) -> str:
    try:
        value = headers.get(name)
        if value is None:
            # Plain dicts are case-sensitive; multidicts and other CI mappings answered above.
            value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    except Exception as exc:  # a broken mapping must not escape as something else
        raise WebhookVerificationError(f"cannot read the {name} header") from exc
    if value is None:
        raise WebhookVerificationError(f"missing {name} header")
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        raise WebhookVerificationError(f"{name} header is not a string")
    value = value.strip()
    if not value:
        raise WebhookVerificationError(f"empty {name} header")
    if len(value) > _MAX_HEADER_CHARS:
        raise WebhookVerificationError(f"{name} header is too long")
    return value


def _body_bytes(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        # Accepted for convenience; the signature then only matches if the text round-trips to
        # the bytes that were sent, which holds for tidings' UTF-8 JSON bodies.
        try:
            return body.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise WebhookVerificationError("webhook body is not valid text") from exc
    raise WebhookVerificationError(f"webhook body must be bytes, got {type(body).__name__}")


def _any_signature_matches(header: str, expected: list[bytes]) -> bool:
    matched = False
    for entry in header.split():
        version, sep, encoded = entry.partition(",")
        # Other versions (e.g. Standard Webhooks' asymmetric "v1a") are skipped, not fatal, so a
        # sender may add schemes this verifier does not know.
        if not sep or version != _VERSION:
            continue
        try:
            provided = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):  # non-ASCII or not Base64: this entry cannot match
            continue
        for digest in expected:
            # Every pair is compared (no early exit) so timing does not reveal which one matched.
            matched |= hmac.compare_digest(provided, digest)
    return matched
