"""Exceptions and wire error codes.

Tree::

    TidingsError
    ├── ConfigError (also ValueError)      invalid settings; stops start-up
    ├── TokenError                         a JWT was refused (reason in .message)
    ├── ProtocolError                      a request broke a protocol rule; carries an ErrorCode
    ├── StoreError                         the storage backend failed
    │   └── StoreUnavailable               the backend cannot be reached right now (HTTP 503)
    │       └── StoreOutcomeUnknown        it went away mid-commit: maybe stored (HTTP 503)
    └── BrokerUnavailable                  the broker (Redis) cannot be reached (HTTP 503)

``ProtocolError`` is what every adapter turns into the wire: a ``hotsock.error`` frame on the
WebSocket, or an HTTP status with ``{"error": {"code", "message"}}`` (spec §18).
"""

from __future__ import annotations

import enum

__all__ = [
    "BrokerUnavailable",
    "CloseCode",
    "ConfigError",
    "ErrorCode",
    "ProtocolError",
    "StoreError",
    "StoreOutcomeUnknown",
    "StoreUnavailable",
    "TidingsError",
    "TokenError",
    "UNAVAILABLE",
    "wire_error",
    "wire_status",
]


class ErrorCode(enum.StrEnum):
    """Error codes of spec §18.2. ``http_status`` is the status used on HTTP routes."""

    ALREADY_SUBSCRIBED = "ALREADY_SUBSCRIBED"
    NOT_SUBSCRIBED = "NOT_SUBSCRIBED"
    SUBSCRIBE_PERMISSION_DENIED = "SUBSCRIBE_PERMISSION_DENIED"
    INVALID_SUBSCRIBE_TOKEN = "INVALID_SUBSCRIBE_TOKEN"
    PRESENCE_CHANNEL_USER_ID_REQUIRED = "PRESENCE_CHANNEL_USER_ID_REQUIRED"
    PRESENCE_CHANNEL_CAPACITY_REACHED = "PRESENCE_CHANNEL_CAPACITY_REACHED"
    INVALID_CONNECT_TOKEN = "INVALID_CONNECT_TOKEN"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    INVALID_EVENT = "INVALID_EVENT"
    INVALID_CHANNEL = "INVALID_CHANNEL"
    DATA_TOO_LARGE = "DATA_TOO_LARGE"
    INVALID_STORAGE_KEY = "INVALID_STORAGE_KEY"
    INVALID_SCHEDULE = "INVALID_SCHEDULE"
    INVALID_REACTION = "INVALID_REACTION"
    PUBLISH_PERMISSION_DENIED = "PUBLISH_PERMISSION_DENIED"
    SCHEDULE_PERMISSION_DENIED = "SCHEDULE_PERMISSION_DENIED"
    STORAGE_PERMISSION_DENIED = "STORAGE_PERMISSION_DENIED"
    REACTION_PERMISSION_DENIED = "REACTION_PERMISSION_DENIED"
    GET_INFO_PERMISSION_DENIED = "GET_INFO_PERMISSION_DENIED"
    SUBSCRIPTION_REQUIRED = "SUBSCRIPTION_REQUIRED"
    USER_ID_REQUIRED = "USER_ID_REQUIRED"
    INVALID_UMD_TOKEN = "INVALID_UMD_TOKEN"
    UMD_UPDATE_PERMISSION_DENIED = "UMD_UPDATE_PERMISSION_DENIED"
    MESSAGE_NOT_FOUND = "MESSAGE_NOT_FOUND"
    UNAUTHORIZED = "UNAUTHORIZED"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    # tidings extension: a 503 after which the message may be stored; retry with the same
    # deduplicationId (the retry is answered as a duplicate if it was)
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    RATE_LIMITED = "RATE_LIMITED"  # a limit of spec §24.3 (tidings extension)

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self, 400)


_HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_CONNECT_TOKEN: 401,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.PUBLISH_PERMISSION_DENIED: 403,
    ErrorCode.SCHEDULE_PERMISSION_DENIED: 403,
    ErrorCode.STORAGE_PERMISSION_DENIED: 403,
    ErrorCode.REACTION_PERMISSION_DENIED: 403,
    ErrorCode.GET_INFO_PERMISSION_DENIED: 403,
    ErrorCode.SUBSCRIPTION_REQUIRED: 403,
    ErrorCode.USER_ID_REQUIRED: 403,
    ErrorCode.INVALID_UMD_TOKEN: 403,
    ErrorCode.UMD_UPDATE_PERMISSION_DENIED: 403,
    ErrorCode.SUBSCRIBE_PERMISSION_DENIED: 403,
    ErrorCode.INVALID_SUBSCRIBE_TOKEN: 403,
    ErrorCode.MESSAGE_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.ALREADY_SUBSCRIBED: 409,
    ErrorCode.NOT_SUBSCRIBED: 409,
    ErrorCode.PRESENCE_CHANNEL_CAPACITY_REACHED: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.OUTCOME_UNKNOWN: 503,
}


class CloseCode(enum.IntEnum):
    """WebSocket close codes tidings sends (spec §4.4, §4.8)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # lifetime cap, idle, heartbeat timeout, server drain: reconnect
    POLICY_VIOLATION = 1008  # kept flooding after many RATE_LIMITED refusals
    MESSAGE_TOO_BIG = 1009  # inbound frame over 128 KiB
    INTERNAL_ERROR = 1011
    SLOW_CONSUMER = 1013  # outbound queue over its bound: reconnect later
    # 4000-4499 "reconnect", 4500-4999 "terminal": a convention apps implement, since
    # hotsock-js reconnects whatever the code (core/moderation.py)
    DISCONNECTED = 4500  # an operator's disconnect without a code of its own
    REVOKED = 4501  # the connect token was revoked: reconnecting with it is refused anyway


class TidingsError(Exception):
    """Root of every exception tidings raises on purpose."""


class ConfigError(TidingsError, ValueError):
    """A setting is invalid. The message is one full sentence naming the setting."""


class TokenError(TidingsError):
    """A JWT was refused. ``str(exc)`` is a reason safe to show the client."""


class ProtocolError(TidingsError):
    """A request broke a protocol rule.

    Attributes:
        code: the wire error code.
        message: a human-readable explanation, safe to show the client.
        channel: the channel name as the client sent it, when the request named one.
        status: the HTTP status when it is not the code's usual one (a server reaction
            without ``uid`` is ``USER_ID_REQUIRED`` with 400, spec §18.2).
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        channel: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.channel = channel
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class StoreError(TidingsError):
    """The storage backend failed."""


class StoreUnavailable(StoreError):
    """The storage backend cannot be reached; callers answer 503 and must not acknowledge."""


class StoreOutcomeUnknown(StoreUnavailable):
    """The connection to the backend died while a write was committing: it may or may not have
    been stored. Answered 503 ``OUTCOME_UNKNOWN``; retrying the same write is the right move."""


class BrokerUnavailable(TidingsError):
    """The broker cannot be reached, or another node did not answer in time (HTTP 503)."""


UNAVAILABLE = (StoreUnavailable, BrokerUnavailable)
"""Backend outages: answered with 503 ``SERVICE_UNAVAILABLE``, logged without a traceback."""


def wire_error(exc: BaseException) -> tuple[ErrorCode, str]:
    """The error code and client-safe message every adapter sends for ``exc`` (spec §18):
    refusals keep their own, backend outages are 503s, anything else is an internal error."""
    if isinstance(exc, ProtocolError):
        return exc.code, exc.message
    if isinstance(exc, StoreOutcomeUnknown):
        return (
            ErrorCode.OUTCOME_UNKNOWN,
            "storage went away while committing; the message may be stored: retry with the "
            "same deduplicationId",
        )
    if isinstance(exc, StoreUnavailable):
        return ErrorCode.SERVICE_UNAVAILABLE, "storage is unavailable; retry later"
    if isinstance(exc, BrokerUnavailable):
        # the reason (addresses, Redis replies, script digests) is in the log, never in a body
        return ErrorCode.SERVICE_UNAVAILABLE, "the message broker is unavailable; retry later"
    return ErrorCode.INTERNAL_ERROR, "internal error"


def wire_status(exc: BaseException) -> int:
    """The HTTP status answering ``exc``: the refusal's own when it carries one, else its
    code's."""
    if isinstance(exc, ProtocolError) and exc.status is not None:
        return exc.status
    return wire_error(exc)[0].http_status
