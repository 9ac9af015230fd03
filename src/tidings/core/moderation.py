"""Validation of moderation requests (spec §24.2): close codes and reasons, channel bodies, and
the directives of a server-side subscribe. Pure.

Close codes. hotsock-js 1.4.0 never reads a close code: whatever the server sends, it
reconnects with back-off unless the app itself closed the connection. tidings therefore splits
the private range 4000–4999 into a convention that apps implement in their ``@@disconnect``
binding (the binding receives the ``CloseEvent``):

* 4000–4499 "reconnect": the server wants this connection gone, a new one is welcome (to pick
  up a new token, to move to another node). Apps need do nothing.
* 4500–4999 "terminal": do not come back. Apps call ``suspend()`` (keeps bindings) or
  ``terminate()`` from the binding, which stops the client's reconnect loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidings.core.json import dumps
from tidings.core.names import UID_MAX_CHARS, UMD_MAX_BYTES, validate_channel
from tidings.core.permissions import Grants
from tidings.errors import CloseCode, ErrorCode, ProtocolError, TokenError

__all__ = [
    "CLOSE_REASON_MAX_BYTES",
    "DEFAULT_DISCONNECT_CODE",
    "RECONNECT_CODES",
    "TERMINAL_CODES",
    "Disconnect",
    "ServerSubscribe",
    "parse_channel_body",
    "parse_disconnect",
    "parse_server_subscribe",
]

RECONNECT_CODES = range(4000, 4500)
TERMINAL_CODES = range(4500, 5000)
DEFAULT_DISCONNECT_CODE = CloseCode.DISCONNECTED
CLOSE_REASON_MAX_BYTES = 123  # RFC 6455 §5.5: a close frame's payload is at most 125 bytes


@dataclass(frozen=True, slots=True)
class Disconnect:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ServerSubscribe:
    """A validated server-side subscribe: the channel and the directives the subscription gets,
    layered over the connection's connect token exactly as a subscribe token's would be."""

    channel: str
    grants: Grants
    uid: str | None
    has_uid: bool  # ``uid`` given (even null): it replaces the connection's for this channel
    umd: Any
    has_umd: bool


def parse_disconnect(body: Any) -> Disconnect:
    """A disconnect body: ``{"code"?: 4000-4999, "reason"?: str}``; None (no body) takes the
    defaults (4500, "disconnected by the server").

    Raises:
        ProtocolError: ``INVALID_MESSAGE`` naming the field at fault.
    """
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object")
    code = body.get("code", DEFAULT_DISCONNECT_CODE)
    if isinstance(code, bool) or not isinstance(code, int) or not 4000 <= code <= 4999:
        raise _invalid("code must be an integer from 4000 to 4999")
    reason = body.get("reason", "disconnected by the server")
    if not isinstance(reason, str):
        raise _invalid("reason must be a string")
    if len(reason.encode("utf-8", "surrogatepass")) > CLOSE_REASON_MAX_BYTES:
        raise _invalid(f"reason must be at most {CLOSE_REASON_MAX_BYTES} bytes of UTF-8")
    return Disconnect(code, reason)


def parse_channel_body(body: Any) -> str:
    """The ``channel`` of an unsubscribe body, validated (``INVALID_CHANNEL``)."""
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object")
    return validate_channel(body.get("channel"))


def parse_server_subscribe(body: Any) -> ServerSubscribe:
    """A server-side subscribe body: ``{"channel", "directives"?: {…}, "uid"?, "umd"?}``.

    ``directives`` are the channel directives of spec §3.6 (``messages``, ``historyStart``,
    ``omitFromSubCount``, ``alias``…) for this one channel; they are checked as a token's would
    be. ``subscribe`` needs no granting: the operator's call is the permission.

    Raises:
        ProtocolError: ``INVALID_CHANNEL``, or ``INVALID_MESSAGE`` naming the field at fault.
    """
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object")
    channel = validate_channel(body.get("channel"))
    directives = body.get("directives", {})
    if not isinstance(directives, dict):
        raise _invalid("directives must be a JSON object")
    try:
        grants = Grants.parse({channel: directives}, connect_token=False)
    except TokenError as exc:
        raise _invalid(f"directives: {exc}") from exc
    uid = body.get("uid")
    if uid is not None and (not isinstance(uid, str) or len(uid) > UID_MAX_CHARS):
        raise _invalid(f"uid must be a string of at most {UID_MAX_CHARS} characters")
    umd = body.get("umd")
    if len(dumps(umd)) > UMD_MAX_BYTES:
        raise _invalid(f"umd must be at most {UMD_MAX_BYTES} bytes of JSON")
    return ServerSubscribe(
        channel=channel,
        grants=grants,
        uid=uid or None,
        has_uid="uid" in body and uid != "",
        umd=umd,
        has_umd="umd" in body,
    )


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, message)
