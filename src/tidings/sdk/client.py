"""An asyncio WebSocket client for tidings (and any Hotsock server): the counterpart of the
official JS client, for backends, bots and workers::

    async with tidings.Client("wss://rt.example.com/", token_provider=fetch_token) as client:
        await client.subscribe("chat.42")
        await client.send_message("chat.42", "message", {"text": "hi"})
        async for message in client.channel("chat.42"):
            print(message.id, message.data)

**Reconnects.** A dropped connection is re-opened with jittered exponential back-off (``backoff``,
``2 × backoff``, … seconds, each drawn between half and all of it, at most ``max_backoff``); a
fresh token is asked of ``token_provider`` for every attempt. Once connected again, every channel
is subscribed again with ``data.resumeFrom`` set to the last message ID seen on it (the tidings
resume extension, docs/extensions.md): the server replays the stored messages missed meanwhile
and says in ``hotsock.subscribed`` whether it could (``resumed``). A server that does not know
the extension ignores it. The client never reconnects after :meth:`Client.aclose` or a close code
in 4000–4999 (a server-side disconnect by moderation).

**Flow control.** Messages for ``async for … in client.channel(name)`` wait in a bounded queue per
iterator; while one is full, the client stops reading the socket, so a consumer that cannot keep
up is eventually disconnected by the server as a slow consumer and catches up by resuming.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import orjson

from tidings.errors import TidingsError

__all__ = ["ChannelStream", "Client", "ClientError", "Member", "Message", "Subscribed"]

logger = logging.getLogger(__name__)

TokenSource = str | Callable[[], Awaitable[str]]
Handler = Callable[["Message"], Awaitable[None] | None]

_ALL = "*"  # handler key for every event


class ClientError(TidingsError):
    """The server refused a request: ``code`` is its error code (``INVALID_CONNECT_TOKEN``,
    ``SUBSCRIBE_PERMISSION_DENIED``, …, or an HTTP status as text), ``message`` its reason."""

    def __init__(self, code: str, message: str, *, channel: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.channel = channel


@dataclass(frozen=True, slots=True)
class Message:
    """One frame from the server. Channel messages have an ``id``; ``hotsock.*`` events have
    none. ``raw`` is the whole frame as decoded."""

    event: str
    channel: str | None
    data: Any
    id: str | None = None
    meta: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> Message:
        meta = frame.get("meta")
        return cls(
            event=str(frame.get("event", "")),
            channel=frame.get("channel"),
            data=frame.get("data"),
            id=frame.get("id"),
            meta=meta if isinstance(meta, dict) else None,
            raw=frame,
        )


@dataclass(frozen=True, slots=True)
class Member:
    """A presence channel member."""

    uid: str
    umd: Any = None


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A confirmed subscription. ``resumed`` is None unless the subscribe asked to resume;
    False means messages may have been missed (page them with :meth:`Client.list_messages`)."""

    channel: str
    resumed: bool | None
    replayed: int
    members: list[Member] | None


class ChannelStream:
    """An async iterator over one channel's messages, registered from its creation on (so
    nothing published between ``client.channel()`` and the first ``await`` is missed)."""

    def __init__(self, streams: set[asyncio.Queue[Message]], size: int) -> None:
        self._streams = streams  # the client's queues for this channel
        self._queue: asyncio.Queue[Message] = asyncio.Queue(size)
        streams.add(self._queue)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        message = await self._queue.get()
        if not message.event:  # the client closed
            self._streams.discard(self._queue)
            raise StopAsyncIteration
        return message

    async def aclose(self) -> None:
        """Stop receiving; messages not yet taken are dropped."""
        self._streams.discard(self._queue)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Channel:
    """What the client remembers of a channel it keeps subscribed."""

    __slots__ = ("last_id", "members", "token", "waiter")

    def __init__(self, token: TokenSource | None) -> None:
        self.token = token  # subscribe token, or a provider asked on every (re)subscribe
        self.last_id: str | None = None  # newest message ID seen: where a resume starts
        self.members: list[Member] | None = None
        self.waiter: asyncio.Future[Subscribed] | None = None  # the pending subscribe


class Client:
    """A reconnecting client for one tidings WebSocket endpoint.

    Args:
        url: the WebSocket endpoint (``wss://host/``); the token is added as ``?token=``.
        token: a connect token, or ``token_provider``: an async callable returning a fresh one
            for every connection attempt (give exactly one of them).
        http_url: base URL of the Client HTTP API (default: ``url`` with ``http(s)``).
        backoff: first reconnect delay in seconds; doubles per failed attempt.
        max_backoff: the longest reconnect delay, seconds.
        heartbeat_seconds: send ``hotsock.heartbeat`` this often (for tokens with
            ``heartbeatTimeout``); None sends none.
        ping_seconds: WebSocket ping interval used to notice a dead connection; None disables.
        queue_size: messages buffered per :meth:`channel` iterator.
        resume: re-subscribe with ``resumeFrom`` after a reconnect.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_provider: Callable[[], Awaitable[str]] | None = None,
        http_url: str | None = None,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        heartbeat_seconds: float | None = None,
        ping_seconds: float | None = 20.0,
        queue_size: int = 1000,
        resume: bool = True,
    ) -> None:
        if (token is None) == (token_provider is None):
            raise ValueError("give exactly one of token and token_provider")
        if backoff <= 0 or max_backoff < backoff:
            raise ValueError("backoff must be positive and at most max_backoff")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._url = url
        self._token: TokenSource = token if token is not None else token_provider  # type: ignore[assignment]
        self._http_url = (http_url or _http_base(url)).rstrip("/")
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._heartbeat_seconds = heartbeat_seconds
        self._ping_seconds = ping_seconds
        self._queue_size = queue_size
        self._resume = resume
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()  # set while a connection is up and subscribed again
        self._first: asyncio.Future[None] | None = None  # outcome of the first connection
        self._closing = False
        self._channels: dict[str, _Channel] = {}  # name as subscribed (may be an alias)
        self._handlers: dict[tuple[str, str | None], list[Handler]] = {}
        self._streams: dict[str, set[asyncio.Queue[Message]]] = {}
        self.connection_id: str | None = None
        self.connection_secret: str | None = None
        self.reconnects = 0  # connections opened after the first one
        self._terminal = False  # the server closed with 4000-4999: do not reconnect

    # Lifecycle

    async def connect(self) -> None:
        """Open the connection and wait for ``hotsock.connected``; afterwards the client keeps
        itself connected until :meth:`aclose`.

        Raises:
            ClientError: the first connection was refused (a bad token); nothing keeps running.
        """
        if self._runner is not None:
            raise RuntimeError("already connected")
        self._session = aiohttp.ClientSession()
        self._first = asyncio.get_running_loop().create_future()
        self._runner = asyncio.get_running_loop().create_task(self._run())
        try:
            await asyncio.shield(self._first)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the connection for good; pending subscribes fail and iterators end."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._end_all(ClientError("CLOSED", "client closed"))
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def connected(self) -> bool:
        """Whether a connection is up (and its channels subscribed again)."""
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once a connection is up."""
        await self._connected.wait()

    # Channels

    async def subscribe(self, channel: str, *, token: TokenSource | None = None) -> Subscribed:
        """Subscribe and wait for ``hotsock.subscribed``; the channel is subscribed again after
        every reconnect. ``token`` is a subscribe token, or an async callable returning one
        (asked again on every re-subscribe). While disconnected, this waits for the next
        connection.

        Raises:
            ClientError: the server refused the subscription (``hotsock.error``); the channel
                is forgotten.
        """
        if channel in self._channels:
            raise ClientError("ALREADY_SUBSCRIBED", "already subscribed", channel=channel)
        state = self._channels[channel] = _Channel(token)
        waiter = _new_waiter(state)
        if self._connected.is_set():  # else the next connection subscribes it
            with contextlib.suppress(ClientError):  # dropped meanwhile: the same
                await self._send_subscribe(channel, state)
        return await waiter

    async def unsubscribe(self, channel: str) -> None:
        """Stop a subscription (and its re-subscription after reconnects)."""
        if self._channels.pop(channel, None) is None:
            raise ClientError("NOT_SUBSCRIBED", "not subscribed", channel=channel)
        if self._ws is not None and not self._ws.closed:
            await self._send({"event": "hotsock.unsubscribe", "channel": channel})

    def members(self, channel: str) -> list[Member] | None:
        """The current members of a subscribed presence channel, else None."""
        state = self._channels.get(channel)
        return None if state is None or state.members is None else list(state.members)

    async def send_message(self, channel: str, event: str, data: Any = None) -> None:
        """Publish a client message over the WebSocket (the token must allow it). A refusal
        arrives as a ``hotsock.error`` event."""
        await self._connected.wait()
        await self._send({"event": event, "channel": channel, "data": data})

    def on(self, event: str, handler: Handler, *, channel: str | None = None) -> Callable[[], None]:
        """Call ``handler(message)`` (sync or async) for every frame of ``event`` (``"*"`` for
        all), on ``channel`` only when given. Returns a function that removes the handler."""
        handlers = self._handlers.setdefault((event, channel), [])
        handlers.append(handler)
        return lambda: handlers.remove(handler) if handler in handlers else None

    def channel(self, name: str) -> ChannelStream:
        """The channel messages of ``name`` (not ``hotsock.*`` events) from this call on, across
        reconnects, until the client closes: ``async for message in client.channel(name)``.
        Subscribe separately. Leaving the loop early: call ``aclose()`` on the stream (or use it
        as ``async with``) so it stops holding messages."""
        return ChannelStream(self._streams.setdefault(name, set()), self._queue_size)

    # Client HTTP API (spec §10)

    async def list_messages(
        self,
        channel: str,
        *,
        after: str | None = None,
        before: str | None = None,
        reverse: bool = False,
        expand_reactions: bool = False,
    ) -> list[Message]:
        """One page (at most 100) of stored messages the subscription may read."""
        body: dict[str, Any] = {"channel": channel, "reverse": reverse}
        if after is not None:
            body["after"] = after
        if before is not None:
            body["before"] = before
        if expand_reactions:
            body["expandReactions"] = True
        answer = await self._call("listMessages", body)
        return [Message.from_frame(item) for item in answer.get("messages", [])]

    async def iter_messages(
        self, channel: str, *, after: str | None = None
    ) -> AsyncIterator[Message]:
        """Every stored message after ``after`` (or the oldest visible), oldest first, paging
        through :meth:`list_messages`."""
        while True:
            page = await self.list_messages(channel, after=after)
            if not page:
                return
            for message in page:
                yield message
            after = page[-1].id

    async def publish_message(self, channel: str, event: str, data: Any = None) -> dict[str, Any]:
        """Publish through ``publishMessage``; returns the server's answer (with ``id`` when
        the message is stored)."""
        return await self._call(
            "publishMessage", {"channel": channel, "event": event, "data": data}
        )

    # Private methods: the connection loop

    async def _run(self) -> None:
        failures = 0
        try:
            while not self._closing:
                try:
                    await self._connect_once()
                    failures = 0
                    await self._read()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a token provider's own failure included
                    if self._first is not None and not self._first.done():
                        self._first.set_exception(exc)
                        return
                    refused = isinstance(exc, ClientError) and exc.code == "INVALID_CONNECT_TOKEN"
                    if refused and isinstance(self._token, str):
                        self._terminal = True  # the same token will be refused every time
                    logger.warning("! connection lost: %s", exc)
                finally:
                    self._connected.clear()
                    self._ws = None
                if self._closing or self._terminal:
                    return
                failures += 1
                delay = min(self._max_backoff, self._backoff * 2 ** (failures - 1))
                await asyncio.sleep(random.uniform(delay / 2, delay))
        finally:
            if not self._closing:  # given up: nothing will arrive any more
                self._end_all(ClientError("CLOSED", "the client stopped reconnecting"))

    def _end_all(self, exc: ClientError) -> None:
        for state in self._channels.values():
            _fail(state.waiter, exc)
        for queues in self._streams.values():
            for queue in queues:
                _put_end(queue)

    async def _connect_once(self) -> None:
        assert self._session is not None
        token = await _resolve(self._token)
        url = _with_query(self._url, token=token)
        try:
            ws = await self._session.ws_connect(
                url, heartbeat=self._ping_seconds, max_msg_size=0, autoping=True
            )
        except aiohttp.ClientResponseError as exc:
            # aiohttp's message carries the URL, and with it the token: never pass it on
            code = "INVALID_CONNECT_TOKEN" if exc.status == 401 else f"HTTP_{exc.status}"
            raise ClientError(code, f"handshake answered {exc.status}") from None
        self._ws = ws
        connected = await self._next_frame(ws)
        if connected.get("event") != "hotsock.connected":
            raise ValueError(f"expected hotsock.connected, got {connected.get('event')!r}")
        data = connected.get("data") or {}
        self.connection_id = data.get("connectionId")
        self.connection_secret = data.get("connectionSecret")
        if self._first is not None and self._first.done():
            self.reconnects += 1
        self._dispatch(Message.from_frame(connected))
        # re-subscribe while reading, since the answers arrive through _read; the channels are
        # taken in the same step as the connection is announced, so a concurrent subscribe()
        # sends its own frame exactly when it is not among them
        channels = list(self._channels.items())
        resubscribing = asyncio.get_running_loop().create_task(self._resubscribe(channels))
        resubscribing.add_done_callback(_log_failure)
        self._connected.set()
        if self._first is not None and not self._first.done():
            self._first.set_result(None)

    async def _resubscribe(self, channels: list[tuple[str, _Channel]]) -> None:
        for channel, state in channels:
            _new_waiter(state)
            try:
                await self._send_subscribe(channel, state)
            except ClientError:  # the connection dropped again; the next one retries
                return

    async def _send_subscribe(self, channel: str, state: _Channel) -> None:
        data: dict[str, Any] = {}
        if state.token is not None:
            data["token"] = await _resolve(state.token)
        if self._resume and state.last_id is not None:
            data["resumeFrom"] = state.last_id
        frame: dict[str, Any] = {"event": "hotsock.subscribe", "channel": channel}
        if data:
            frame["data"] = data
        await self._send(frame)

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        heartbeat = None
        if self._heartbeat_seconds is not None:
            heartbeat = asyncio.get_running_loop().create_task(self._heartbeats(ws))
        try:
            while True:
                frame = await self._next_frame(ws)
                await self._handle(Message.from_frame(frame))
        finally:
            if heartbeat is not None:
                heartbeat.cancel()

    async def _next_frame(self, ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        msg = await ws.receive()
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            value = orjson.loads(msg.data)
            if not isinstance(value, dict):
                raise ValueError("server frame is not a JSON object")
            return value
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            code = ws.close_code or 0
            if 4000 <= code <= 4999:
                self._terminal = True
            raise aiohttp.ClientConnectionError(f"connection closed ({code})")
        raise aiohttp.ClientConnectionError(f"connection failed: {msg.data!r}")

    async def _heartbeats(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        assert self._heartbeat_seconds is not None
        while not ws.closed:
            await asyncio.sleep(self._heartbeat_seconds)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str('{"event":"hotsock.heartbeat"}')

    async def _handle(self, message: Message) -> None:
        state = self._channels.get(message.channel or "")
        if state is None and message.channel is not None:
            alias = (message.meta or {}).get("channelAlias")
            state = self._channels.get(alias) if isinstance(alias, str) else None
        event = message.event
        if event == "hotsock.subscribed" and state is not None:
            data = message.data if isinstance(message.data, dict) else {}
            state.members = _members(data.get("members"))
            subscribed = Subscribed(
                channel=str(message.channel),
                resumed=data.get("resumed"),
                replayed=int(data.get("replayed", 0)),
                members=state.members,
            )
            if subscribed.resumed is False:
                logger.warning("! %s resumed with a gap: not every missed message", message.channel)
            _resolve_future(state.waiter, subscribed)
        elif event == "hotsock.error" and state is not None and _pending(state.waiter):
            error = message.raw.get("error") or {}
            refusal = ClientError(
                str(error.get("code")), str(error.get("message")), channel=message.channel
            )
            logger.warning("! subscribing %s refused: %s", message.channel, refusal)
            self._forget(state)
            _fail(state.waiter, refusal)
        elif event in ("hotsock.memberAdded", "hotsock.memberRemoved", "hotsock.memberUpdated"):
            if state is not None and isinstance(message.data, dict):
                state.members = _members(message.data.get("members"))
        elif message.id is not None and not event.startswith("hotsock."):
            if state is not None:
                state.last_id = message.id
            for queue in list(self._streams.get(message.channel or "", ())):
                await queue.put(message)  # a full queue stops the reading: back-pressure
        self._dispatch(message)

    def _dispatch(self, message: Message) -> None:
        keys: list[tuple[str, str | None]] = [(message.event, None), (_ALL, None)]
        if message.channel is not None:
            keys += [(message.event, message.channel), (_ALL, message.channel)]
        for key in keys:
            for handler in list(self._handlers.get(key, ())):
                try:
                    result = handler(message)
                    if inspect.isawaitable(result):
                        asyncio.ensure_future(result).add_done_callback(_log_failure)
                except Exception:
                    logger.exception("! handler for %s failed", message.event)

    def _forget(self, state: _Channel) -> None:
        for name, known in list(self._channels.items()):
            if known is state:
                del self._channels[name]

    async def _send(self, frame: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise ClientError("NOT_CONNECTED", "the connection is down; try again once connected")
        await ws.send_str(orjson.dumps(frame).decode())

    async def _call(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._connected.wait()
        assert self._session is not None
        params = {
            "connectionId": self.connection_id or "",
            "connectionSecret": self.connection_secret or "",
        }
        async with self._session.post(
            f"{self._http_url}/connection/{operation}", params=params, data=orjson.dumps(body)
        ) as resp:
            answer = await resp.json(content_type=None)
        if resp.status >= 400:
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            raise ClientError(
                str(error.get("code", resp.status)),
                str(error.get("message", "")),
                channel=body.get("channel"),
            )
        return answer if isinstance(answer, dict) else {}


# Private functions


async def _resolve(source: TokenSource) -> str:
    return source if isinstance(source, str) else await source()


def _http_base(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", query, ""))


def _members(value: Any) -> list[Member] | None:
    if not isinstance(value, list):
        return None
    return [Member(str(m.get("uid")), m.get("umd")) for m in value if isinstance(m, dict)]


def _resolve_future(future: asyncio.Future[Subscribed] | None, value: Subscribed) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def _new_waiter(state: _Channel) -> asyncio.Future[Subscribed]:
    """The future the next ``hotsock.subscribed`` (or refusal) of ``state`` settles."""
    if state.waiter is None or state.waiter.done():
        state.waiter = asyncio.get_running_loop().create_future()
        # a re-subscribe nobody awaits may be refused: that is logged, not an unretrieved error
        state.waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
    return state.waiter


def _pending(future: asyncio.Future[Subscribed] | None) -> bool:
    return future is not None and not future.done()


def _fail(future: asyncio.Future[Subscribed] | None, exc: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(exc)


def _put_end(queue: asyncio.Queue[Message]) -> None:
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(Message(event="", channel=None, data=None))


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("! background client task failed: %s", task.exception())
