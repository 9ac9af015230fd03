"""Publish messages from a backend through tidings' ``POST /publish`` (spec §15).

Two clients with the same behaviour: :class:`Publisher` is synchronous and needs nothing beyond the
standard library; :class:`AsyncPublisher` uses aiohttp and must be closed::

    publisher = Publisher("https://rt.example.com", api_key)
    result = publisher.publish_message("chat.42", "message", {"text": "hi"})

    async with AsyncPublisher("https://rt.example.com", api_key) as publisher:
        await publisher.publish_message("chat.42", "message", {"text": "hi"})

**Retries.** Connection failures, timeouts, ``429`` and ``5xx`` answers are retried up to
``retries`` times with exponential back-off (``backoff``, ``2 × backoff``, … seconds, jittered,
at least any ``Retry-After`` the server sent, at most 30 s). A request that timed out may still
have been accepted, so every message carries a ``deduplicationId``: the caller's, or one the
publisher generates once per ``publish_*`` call and sends unchanged on every attempt. tidings drops
a repeated ID seen within 5 minutes and answers as for the original (spec §15), so a retry never
delivers a message twice. Other ``4xx`` answers raise :class:`PublishError` at once.

Redirects are never followed: a redirected ``POST`` would be replayed as a ``GET``, possibly to
another host, with the API key attached.
"""

from __future__ import annotations

import asyncio
import http
import http.client
import importlib.metadata
import logging
import random
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit

import aiohttp
import orjson

from tidings.core.ids import new_ulid
from tidings.errors import TidingsError

__all__ = ["USER_AGENT", "AsyncPublisher", "PublishError", "PublishResult", "Publisher"]

logger = logging.getLogger(__name__)


def _package_version() -> str:
    try:
        return importlib.metadata.version("tidings")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


#: The ``User-Agent`` both publishers send.
USER_AGENT: Final = f"tidings-python/{_package_version()}"

_MAX_DELAY: Final = 30.0  # seconds; caps both back-off and Retry-After
_RETRY_STATUSES: Final = frozenset({429}) | frozenset(range(500, 600))

# Keyword names of publish_message() → wire names of spec §15. Any other snake_case name in
# **extra is converted the same way (schedule_expression → scheduleExpression).
_FIELD_NAMES: Final[Mapping[str, str]] = {
    "deduplication_id": "deduplicationId",
    "eager_id_generation": "eagerIdGeneration",
    "emit_pub_sub_event": "emitPubSubEvent",
    "schedule_expression": "scheduleExpression",
    "schedule_expression_timezone": "scheduleExpressionTimezone",
}


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What tidings answered for one accepted message.

    Attributes:
        channel: the channel the message was published on.
        event: the event name.
        id: the message ID (a ULID) when ``eager_id_generation`` was requested, else None. For a
            deduplicated retry it is the original message's ID.
        schedule_arn: the schedule ID (``tidings:schedule:<ULID>``) of a scheduled message, else
            None. Cancel with ``DELETE /schedules/<ULID>``.
    """

    channel: str
    event: str
    id: str | None = None
    schedule_arn: str | None = None


class PublishError(TidingsError):
    """A publish failed for good: it was refused, or every attempt failed.

    Attributes:
        status: the HTTP status of the last answer, or None when no answer arrived (connection
            refused or dropped, timeout).
        code: the error code from the ``{"error": {"code", "message"}}`` body (spec §18.3), for
            example ``INVALID_CHANNEL`` or ``UNAUTHORIZED``. Without such a body: ``HTTP_<status>``,
            ``CONNECTION_ERROR``, ``TIMEOUT``, ``TLS_ERROR`` (certificate refused; not retried)
            or ``INVALID_RESPONSE`` (a 2xx answer that is not what tidings sends).
        message: a human-readable explanation.
    """

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        where = "no response" if self.status is None else f"HTTP {self.status}"
        return f"{self.code} ({where}): {self.message}"


class _BasePublisher:
    """Argument checks, headers and back-off shared by both publishers."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
    ) -> None:
        # The server's root URL; "/publish" is appended.
        self.base_url = _check_base_url(base_url)
        # Seconds allowed for one attempt, connection and answer included.
        self.timeout = _check_number(timeout, "timeout", positive=True)
        # Extra attempts after the first; 0 disables retrying.
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
        self.retries = retries
        # First back-off delay in seconds; doubled for each further retry.
        self.backoff = _check_number(backoff, "backoff", positive=False)
        if not isinstance(api_key, str) or not api_key or not api_key.isprintable():
            raise ValueError("api_key must be a non-empty string of printable characters")
        if api_key != api_key.strip():
            raise ValueError("api_key must not start or end with whitespace")
        self._url = self.base_url + "/publish"
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    def __repr__(self) -> str:
        # The API key is a credential: never part of the repr.
        return f"{type(self).__name__}({self.base_url!r})"

    # Private methods

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        # Jitter spreads out clients that failed together, so they do not retry in lockstep.
        # The exponent is bounded so a huge ``retries`` cannot overflow the float.
        delay = self.backoff * (2.0 ** min(attempt, 32)) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, _MAX_DELAY)

    def _log_retry(self, attempt: int, error: PublishError, delay: float) -> None:
        logger.info(
            "! publish to %s failed (%s); retry %d of %d in %.2f s",
            self._url,
            error,
            attempt + 1,
            self.retries,
            delay,
        )


class Publisher(_BasePublisher):
    """Synchronous client for ``POST /publish``, built on ``urllib.request``.

    Safe to share between threads; each call opens its own connection.

    Args:
        base_url: the server's root URL, e.g. ``http://127.0.0.1:8080`` (a path prefix is kept).
        api_key: one of the server's API keys (``TIDINGS_API_KEY1``/``2``).
        timeout: seconds allowed for one attempt.
        retries: extra attempts after a connection error, timeout, ``429`` or ``5xx``.
        backoff: the first retry delay in seconds; it doubles for each further retry.

    Raises:
        ValueError: an argument is invalid.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, retries=retries, backoff=backoff)
        self._opener = urllib.request.build_opener(_NoRedirect)

    # Public methods

    def publish_message(
        self,
        channel: str,
        event: str,
        data: Any = None,
        *,
        store: int | None = None,
        deduplication_id: str | None = None,
        eager_id_generation: bool = False,
        emit_pub_sub_event: bool = False,
        **extra: Any,
    ) -> PublishResult:
        """Publish one message to every subscriber of ``channel``.

        Args:
            channel: the channel name.
            event: the event name.
            data: any JSON-serialisable value (at most 32 KiB encoded); omitted when None.
            store: retention in seconds (``-1`` forever, ``0`` not stored); server default when
                None.
            deduplication_id: a non-empty ID; tidings drops a repeat within 5 minutes. Generated
                when None, so that retries are safe.
            eager_id_generation: ask for the message ID in the answer.
            emit_pub_sub_event: emit a ``hotsock.messagePublished`` webhook.
            **extra: other body fields of spec §15, in snake_case or as on the wire
                (``schedule_expression="at(2030-01-01T00:00:00)"``, ``key="status"``, ``uid=...``).

        Returns:
            The accepted message's channel, event and, when requested, its ID or schedule ID.

        Raises:
            PublishError: tidings refused the message (``4xx``), or every attempt failed.
            ValueError: an argument is invalid or ``data`` is not JSON-serialisable.
        """
        message = _message(
            channel,
            event,
            data,
            store=store,
            deduplication_id=deduplication_id,
            eager_id_generation=eager_id_generation,
            emit_pub_sub_event=emit_pub_sub_event,
            extra=extra,
        )
        status, body = self._send(_encode(message))
        return _parse_result(status, body, message)

    def publish_many(self, messages: Iterable[Mapping[str, Any]]) -> list[PublishResult]:
        """Publish several messages in one request (a JSON array body).

        Args:
            messages: mappings with ``channel`` and ``event`` and, optionally, the other arguments
                of :meth:`publish_message` (``data``, ``store``, ``deduplication_id``, … or their
                wire names).

        Returns:
            One result per message, in order. An empty input sends nothing and returns ``[]``.

        Raises:
            PublishError: tidings refused the batch, or every attempt failed.
            ValueError: a message is invalid.
        """
        batch = _batch(messages)
        if not batch:
            return []
        status, body = self._send(_encode(batch))
        return _parse_results(status, body, batch)

    def cancel_schedule(self, schedule_arn: str) -> bool:
        """Cancel a scheduled message or storage write (``DELETE /schedules/{id}``).

        Args:
            schedule_arn: the ``schedule_arn`` of its :class:`PublishResult` (or the bare ULID).

        Returns:
            True when it was pending and will never run; False when there was nothing to cancel
            (unknown, already run or running, or cancelled by an earlier attempt).

        Raises:
            PublishError: tidings refused the call (``401``), or every attempt failed.
        """
        try:
            self._send(None, method="DELETE", url=_schedule_url(self.base_url, schedule_arn))
        except PublishError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # Private methods

    def _send(
        self, payload: bytes | None, *, method: str = "POST", url: str | None = None
    ) -> tuple[int, bytes]:
        """Send ``payload`` (to ``/publish`` unless ``url``), retrying as the module docstring
        describes; returns a 2xx answer."""
        attempt = 0
        while True:
            retry_after: float | None = None
            cause: BaseException | None = None
            try:
                status, retry_after_header, body = self._post(payload, method, url or self._url)
            except (OSError, http.client.HTTPException) as exc:
                # URLError (connect failures, wrapping the real reason), timeouts and dropped
                # connections are all OSErrors or HTTPExceptions.
                cause = exc
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                if isinstance(reason, ssl.SSLCertVerificationError):
                    # Retrying cannot fix a certificate the client refuses.
                    raise PublishError(None, "TLS_ERROR", f"{self._url}: {reason}") from exc
                if isinstance(reason, TimeoutError):
                    error = PublishError(None, "TIMEOUT", f"no answer within {self.timeout} s")
                else:
                    error = PublishError(None, "CONNECTION_ERROR", f"{self._url}: {reason!r}")
            else:
                if 200 <= status < 300:
                    return status, body
                error = _error_from_answer(status, body)
                if status not in _RETRY_STATUSES:
                    raise error
                retry_after = _retry_after(retry_after_header)
            if attempt >= self.retries:
                raise error from cause
            delay = self._delay(attempt, retry_after)
            self._log_retry(attempt, error, delay)
            time.sleep(delay)
            attempt += 1

    def _post(self, payload: bytes | None, method: str, url: str) -> tuple[int, str | None, bytes]:
        """One attempt: the status, the ``Retry-After`` header and the body of the answer."""
        request = urllib.request.Request(url, data=payload, headers=self._headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.headers.get("Retry-After"), response.read()
        except urllib.error.HTTPError as exc:
            # urllib raises non-2xx answers; they are answers all the same.
            try:
                return exc.code, exc.headers.get("Retry-After"), exc.read()
            finally:
                exc.close()


class AsyncPublisher(_BasePublisher):
    """Asynchronous client for ``POST /publish``, built on aiohttp.

    It owns one ``aiohttp.ClientSession`` (created on first use, so connections are reused):
    use it as ``async with AsyncPublisher(...) as publisher:`` or call :meth:`aclose` when done.
    Arguments and behaviour are those of :class:`Publisher`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, retries=retries, backoff=backoff)
        # Created lazily: aiohttp wants a running event loop when a session is made.
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # Public methods

    async def publish_message(
        self,
        channel: str,
        event: str,
        data: Any = None,
        *,
        store: int | None = None,
        deduplication_id: str | None = None,
        eager_id_generation: bool = False,
        emit_pub_sub_event: bool = False,
        **extra: Any,
    ) -> PublishResult:
        """Publish one message; see :meth:`Publisher.publish_message`.

        Raises:
            PublishError: tidings refused the message (``4xx``), or every attempt failed.
            ValueError: an argument is invalid or ``data`` is not JSON-serialisable.
            RuntimeError: the publisher is closed.
        """
        message = _message(
            channel,
            event,
            data,
            store=store,
            deduplication_id=deduplication_id,
            eager_id_generation=eager_id_generation,
            emit_pub_sub_event=emit_pub_sub_event,
            extra=extra,
        )
        status, body = await self._send(_encode(message))
        return _parse_result(status, body, message)

    async def publish_many(self, messages: Iterable[Mapping[str, Any]]) -> list[PublishResult]:
        """Publish several messages in one request; see :meth:`Publisher.publish_many`."""
        batch = _batch(messages)
        if not batch:
            return []
        status, body = await self._send(_encode(batch))
        return _parse_results(status, body, batch)

    async def cancel_schedule(self, schedule_arn: str) -> bool:
        """Cancel a scheduled message or storage write; see :meth:`Publisher.cancel_schedule`."""
        try:
            await self._send(None, method="DELETE", url=_schedule_url(self.base_url, schedule_arn))
        except PublishError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def aclose(self) -> None:
        """Close the HTTP session. Idempotent; the publisher cannot be used afterwards."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # Private methods

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this AsyncPublisher is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def _send(
        self, payload: bytes | None, *, method: str = "POST", url: str | None = None
    ) -> tuple[int, bytes]:
        """Send ``payload`` (to ``/publish`` unless ``url``), retrying as the module docstring
        describes; returns a 2xx answer."""
        session = self._get_session()
        attempt = 0
        while True:
            retry_after: float | None = None
            cause: BaseException | None = None
            try:
                async with session.request(
                    method,
                    url or self._url,
                    data=payload,
                    headers=self._headers,
                    allow_redirects=False,
                ) as response:
                    status, headers, body = response.status, response.headers, await response.read()
            except aiohttp.ClientConnectorCertificateError as exc:
                # Retrying cannot fix a certificate the client refuses.
                raise PublishError(None, "TLS_ERROR", f"{self._url}: {exc}") from exc
            except TimeoutError as exc:
                cause = exc
                error = PublishError(None, "TIMEOUT", f"no answer within {self.timeout} s")
            except aiohttp.ClientError as exc:
                cause = exc
                error = PublishError(None, "CONNECTION_ERROR", f"{self._url}: {exc!r}")
            else:
                if 200 <= status < 300:
                    return status, body
                error = _error_from_answer(status, body)
                if status not in _RETRY_STATUSES:
                    raise error
                retry_after = _retry_after(headers.get("Retry-After"))
            if attempt >= self.retries:
                raise error from cause
            delay = self._delay(attempt, retry_after)
            self._log_retry(attempt, error, delay)
            await asyncio.sleep(delay)
            attempt += 1


def _schedule_url(base_url: str, schedule_arn: object) -> str:
    if not isinstance(schedule_arn, str) or not schedule_arn:
        raise ValueError(f"schedule_arn must be a non-empty string, got {schedule_arn!r}")
    return f"{base_url}/schedules/{urllib.parse.quote(schedule_arn, safe='')}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Returning None makes urllib raise the 3xx as an HTTPError instead of following it.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# Request bodies


def _message(
    channel: object,
    event: object,
    data: object,
    *,
    store: object,
    deduplication_id: object,
    eager_id_generation: object,
    emit_pub_sub_event: object,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON object of one message, with a deduplication ID (generated when not given)."""
    if not isinstance(channel, str) or not channel:
        raise ValueError("channel must be a non-empty string")
    if not isinstance(event, str) or not event:
        raise ValueError("event must be a non-empty string")
    body: dict[str, Any] = {"channel": channel, "event": event}
    if data is not None:
        body["data"] = data
    if store is not None:
        if isinstance(store, bool) or not isinstance(store, int):
            raise ValueError(f"store must be an integer number of seconds, got {store!r}")
        body["store"] = store
    if deduplication_id is None:
        # Generated once per logical publish and reused by every retry of it.
        deduplication_id = new_ulid(int(time.time() * 1000))
    elif not isinstance(deduplication_id, str) or not deduplication_id:
        raise ValueError("deduplication_id must be a non-empty string or None")
    body["deduplicationId"] = deduplication_id
    for name, flag in (
        ("eagerIdGeneration", eager_id_generation),
        ("emitPubSubEvent", emit_pub_sub_event),
    ):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}")
        if flag:
            body[name] = True
    for name, value in extra.items():
        wire = _wire_name(name)
        if wire in body or wire in ("channel", "event", "data"):
            raise ValueError(f"{name!r} is given twice")
        body[wire] = value
    return body


def _batch(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, Mapping | str | bytes):
        raise ValueError("messages must be an iterable of message mappings")
    batch = []
    for index, item in enumerate(messages):
        if not isinstance(item, Mapping):
            raise ValueError(f"message {index} must be a mapping, got {type(item).__name__}")
        fields = {_wire_name(str(k)): v for k, v in item.items()}
        if len(fields) != len(item):
            raise ValueError(f"message {index} gives a field twice (snake_case and camelCase)")
        try:
            batch.append(
                _message(
                    fields.pop("channel", None),
                    fields.pop("event", None),
                    fields.pop("data", None),
                    store=fields.pop("store", None),
                    deduplication_id=fields.pop("deduplicationId", None),
                    eager_id_generation=fields.pop("eagerIdGeneration", False),
                    emit_pub_sub_event=fields.pop("emitPubSubEvent", False),
                    extra=fields,
                )
            )
        except ValueError as exc:
            raise ValueError(f"message {index}: {exc}") from exc
    return batch


def _wire_name(name: str) -> str:
    if name in _FIELD_NAMES:
        return _FIELD_NAMES[name]
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _encode(body: object) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise ValueError(f"message is not JSON-serialisable: {exc}") from exc


# Answers


def _parse_result(status: int, body: bytes, sent: Mapping[str, Any]) -> PublishResult:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = None
    result = _result_from(answer, sent)
    if result is None:
        raise PublishError(status, "INVALID_RESPONSE", "the answer is not a tidings publish result")
    return result


def _parse_results(status: int, body: bytes, sent: list[dict[str, Any]]) -> list[PublishResult]:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, list) or len(answer) != len(sent):
        raise PublishError(
            status, "INVALID_RESPONSE", f"expected a JSON array of {len(sent)} publish results"
        )
    results = [_result_from(item, message) for item, message in zip(answer, sent, strict=True)]
    if any(r is None for r in results):
        raise PublishError(status, "INVALID_RESPONSE", "the answer is not a list of results")
    return [r for r in results if r is not None]


def _result_from(answer: object, sent: Mapping[str, Any]) -> PublishResult | None:
    if not isinstance(answer, dict):
        return None
    channel = answer.get("channel", sent["channel"])
    event = answer.get("event", sent["event"])
    message_id = answer.get("id")
    schedule_arn = answer.get("scheduleArn")
    if not isinstance(channel, str) or not isinstance(event, str):
        return None
    if not isinstance(message_id, str | None) or not isinstance(schedule_arn, str | None):
        return None
    return PublishResult(channel=channel, event=event, id=message_id, schedule_arn=schedule_arn)


def _error_from_answer(status: int, body: bytes) -> PublishError:
    """The §18.3 error of a non-2xx answer, or a generic one when the body is not that shape."""
    code = f"HTTP_{status}"
    try:
        message = http.HTTPStatus(status).phrase
    except ValueError:
        message = "unexpected status"
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = None
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        if isinstance(error.get("code"), str) and error["code"]:
            code = error["code"]
        if isinstance(error.get("message"), str) and error["message"]:
            message = error["message"]
    return PublishError(status, code, message)


def _retry_after(value: str | None) -> float | None:
    # Only the delta-seconds form; an HTTP-date is rare from tidings or proxies and is ignored.
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


def _check_base_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("base_url must be a string such as 'http://127.0.0.1:8080'")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError("base_url must not have a query string or fragment")
    return value.rstrip("/")


def _check_number(value: object, name: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        sign = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a finite {sign} number of seconds, got {value!r}")
    return float(value)
