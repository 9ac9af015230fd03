"""The ``channels`` claim of a token: parsing (spec §3.6–§3.9) and resolution (§3.11, §3.12).

:class:`Grants` is one token's claim, parsed and checked once when the token is verified.
:class:`Permissions` layers a subscribe token's grants over the connect token's, which is what
every permission check of a connection or subscription goes through.

Resolution, for a channel name (and an event or storage key for two-level directives):

* every entry whose key matches takes part, whatever its order or specificity;
* **booleans**: any explicit ``false`` wins; else ``true`` if any entry says ``true``; else
  undefined (None), which the caller turns into the directive's default;
* **scalars** (``historyStart``, ``resume``, ``store``, ``scheduleBefore``): the most specific
  entry that sets the directive wins (:attr:`Pattern.specificity`, channel key first, then the
  event or storage key), ties going to the entry that comes first in the token;
* **layering**: a directive the subscribe token's matching entries define is resolved over those
  entries alone; otherwise over the connect token's.

A JSON ``null`` directive counts as absent throughout, as it does for the Go JSON decoder
upstream. Keys that can never match are skipped without looking at their directives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypeVar

from tidings.core.names import STORE_MAX_SECONDS, is_valid_channel
from tidings.core.patterns import Pattern, compile_key
from tidings.errors import TokenError

__all__ = ["Grants", "Permissions", "PublishPolicy"]

_T = TypeVar("_T")

_CHANNEL_FLAGS = ("subscribe", "getInfo", "omitFromSubCount", "umdUpdate")
_MESSAGE_FLAGS = ("publish", "broadcast", "echo", "emitPubSubEvent")
_STORAGE_FLAGS = ("observe", "get", "set", "emitPubSubEvent")

# Error messages quote keys; a regex key can be thousands of characters long.
_KEY_QUOTE_MAX = 64

# Sort key of a matching entry: specificities, then token positions (smaller wins).
_Rank = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Entry:
    """The directives of one event key or storage key."""

    pattern: Pattern
    flags: Mapping[str, bool]
    values: Mapping[str, int]
    react: bool | frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class _ChannelEntry:
    """The directives of one channel key."""

    pattern: Pattern
    flags: Mapping[str, bool]
    values: Mapping[str, int]
    messages: tuple[_Entry, ...]
    storage: tuple[_Entry, ...]


class Grants:
    """The parsed ``channels`` claim of one token.

    Build it with :meth:`parse`; instances are immutable. Lookups return None when no matching
    entry defines the directive, so that :class:`Permissions` can fall back to another token.
    """

    EMPTY: ClassVar[Grants]

    __slots__ = ("_alias_of", "_aliases", "_auto", "_channels", "_exact")

    def __init__(
        self,
        channels: tuple[_ChannelEntry, ...],
        aliases: Mapping[str, str],
        auto: tuple[str, ...],
    ) -> None:
        # Entries in token order: the tie-breaker of scalar resolution.
        self._channels = channels
        # alias -> real channel, and its inverse; exact keys only, so both are one-to-one.
        self._aliases = dict(aliases)
        self._alias_of = {channel: alias for alias, channel in aliases.items()}
        # Exact keys with autoSubscribe: true in a connect token, in token order.
        self._auto = auto
        self._exact = frozenset(e.pattern.source for e in channels if e.pattern.is_exact)

    @classmethod
    def parse(cls, channels: object, *, connect_token: bool) -> Grants:
        """Parse and check a ``channels`` claim.

        Args:
            channels: the claim's value as decoded from JSON (None when absent).
            connect_token: True when the token is being used as a connect token; only then are
                ``autoSubscribe`` directives recorded (they are still type-checked otherwise).

        Returns:
            The grants; :attr:`EMPTY` for an absent or empty claim.

        Raises:
            TokenError: the claim breaks a rule of spec §3.9; the whole token must be refused.
        """
        if channels is None:
            return cls.EMPTY
        if not isinstance(channels, dict):
            raise TokenError("channels must be an object")
        entries: list[_ChannelEntry] = []
        aliases: dict[str, str] = {}
        auto: list[str] = []
        for key, spec in channels.items():
            if not isinstance(key, str):
                raise TokenError("channel keys must be strings")
            pattern = compile_key(key)
            if pattern is None:
                continue
            where = f"channels[{_quote(key)}]"
            directives = _object(spec, where)
            values: dict[str, int] = {}
            history_start = _numeric_date(directives, "historyStart", where, math.ceil)
            if history_start is not None:
                values["historyStart"] = history_start
            resume = _resume(directives, where)
            if resume is not None:
                values["resume"] = resume
            alias = directives.get("alias")
            if alias is not None:
                if not pattern.is_exact:
                    raise TokenError(f"{where}.alias is only allowed on an exact channel key")
                if not isinstance(alias, str) or not is_valid_channel(alias):
                    raise TokenError(f"{where}.alias must be a valid channel name")
                if alias in aliases:
                    raise TokenError(f"alias {_quote(alias)} is defined twice")
                aliases[alias] = key
            auto_subscribe = _flag(directives, "autoSubscribe", where)
            if auto_subscribe is not None and not pattern.is_exact:
                raise TokenError(f"{where}.autoSubscribe is only allowed on an exact channel key")
            if auto_subscribe and connect_token:
                auto.append(key)
            entries.append(
                _ChannelEntry(
                    pattern=pattern,
                    flags=_flags(directives, _CHANNEL_FLAGS, where),
                    values=values,
                    messages=_entries(directives.get("messages"), f"{where}.messages", _message),
                    storage=_entries(directives.get("storage"), f"{where}.storage", _storage),
                )
            )
        for alias, channel in aliases.items():
            if alias != channel and alias in channels:
                raise TokenError(f"alias {_quote(alias)} is also a channel key of the token")
        if not entries:
            return cls.EMPTY
        return cls(tuple(entries), aliases, tuple(auto))

    # Public methods: channel directives

    def channel_flag(self, channel: str, name: str) -> bool | None:
        """Resolve a boolean channel directive (``subscribe``, ``getInfo``, ``omitFromSubCount``,
        ``umdUpdate``); None when no matching entry defines it."""
        return _resolve_flag(e.flags[name] for _, e in self._matching(channel) if name in e.flags)

    def channel_value(self, channel: str, name: str) -> int | None:
        """Resolve a scalar channel directive (``historyStart``, ``resume``): most specific entry
        wins."""
        return _resolve_value(
            ((*e.pattern.specificity, i), e.values[name])
            for i, e in self._matching(channel)
            if name in e.values
        )

    # Public methods: message directives

    def message_flag(self, channel: str, event: str, name: str) -> bool | None:
        """Resolve a boolean message directive (``publish``, ``broadcast``, ``echo``,
        ``emitPubSubEvent``) for ``event`` on ``channel``."""
        return _resolve_flag(
            e.flags[name] for _, e in self._nested(channel, event, messages=True) if name in e.flags
        )

    def message_value(self, channel: str, event: str, name: str) -> int | None:
        """Resolve a scalar message directive (``store``, ``scheduleBefore``)."""
        return _resolve_value(
            (rank, e.values[name])
            for rank, e in self._nested(channel, event, messages=True)
            if name in e.values
        )

    def react_allows(self, channel: str, event: str, reaction: str) -> bool | None:
        """Whether ``reaction`` may be added to or removed from a message of ``event``.

        Any matching ``react: false`` denies; otherwise ``react: true`` or an array containing
        the value allows. None when no matching entry defines ``react``.
        """
        defined = allowed = False
        for _, entry in self._nested(channel, event, messages=True):
            react = entry.react
            if react is None:
                continue
            defined = True
            if isinstance(react, bool):
                if not react:
                    return False
                allowed = True
            elif reaction in react:
                allowed = True
        return allowed if defined else None

    # Public methods: storage directives

    def storage_flag(self, channel: str, key: str, name: str) -> bool | None:
        """Resolve a boolean storage directive (``observe``, ``get``, ``set``,
        ``emitPubSubEvent``) for storage ``key`` of ``channel``."""
        return _resolve_flag(
            e.flags[name] for _, e in self._nested(channel, key, messages=False) if name in e.flags
        )

    def storage_value(self, channel: str, key: str, name: str) -> int | None:
        """Resolve a scalar storage directive (``store``, ``scheduleBefore``)."""
        return _resolve_value(
            (rank, e.values[name])
            for rank, e in self._nested(channel, key, messages=False)
            if name in e.values
        )

    def observes_any(self, channel: str) -> bool:
        """Whether some storage key under a channel key matching ``channel`` says
        ``observe: true`` (a cheap test before looking at any entry)."""
        return any(
            e.flags.get("observe") is True
            for _, channel_entry in self._matching(channel)
            for e in channel_entry.storage
        )

    # Public methods: exact-key features

    def auto_subscribe(self) -> list[str]:
        """Exact channel keys with ``autoSubscribe: true``, in token order (connect tokens)."""
        return list(self._auto)

    def is_auto_subscribe(self, channel: str) -> bool:
        """True when ``channel`` is an exact key with ``autoSubscribe: true`` (connect tokens)."""
        return channel in self._auto

    def alias_target(self, alias: str) -> str | None:
        """The channel that ``alias`` names in this token, if any."""
        return self._aliases.get(alias)

    def alias_of(self, channel: str) -> str | None:
        """The alias this token defines for the exact channel key ``channel``, if any."""
        return self._alias_of.get(channel)

    def matching_keys(self, channel: str) -> tuple[int, ...]:
        """Positions of the channel keys selecting ``channel``: every channel and message
        directive for ``channel`` depends on the name only through them."""
        return tuple(i for i, _ in self._matching(channel))

    def has_exact_key(self, channel: str) -> bool:
        """True when ``channel`` appears verbatim as an exact channel key."""
        return channel in self._exact

    def __repr__(self) -> str:
        keys = ", ".join(repr(e.pattern.source) for e in self._channels)
        return f"Grants({keys})"

    # Private methods

    def _matching(self, channel: str) -> Iterator[tuple[int, _ChannelEntry]]:
        for index, entry in enumerate(self._channels):
            if entry.pattern.matches(channel):
                yield index, entry

    def _nested(self, channel: str, name: str, *, messages: bool) -> Iterator[tuple[_Rank, _Entry]]:
        # Rank = both specificities before both positions: a more specific event key under an
        # equally specific channel key beats an earlier one (spec §3.11).
        for i, channel_entry in self._matching(channel):
            children = channel_entry.messages if messages else channel_entry.storage
            for j, entry in enumerate(children):
                if entry.pattern.matches(name):
                    rank = (*channel_entry.pattern.specificity, *entry.pattern.specificity, i, j)
                    yield rank, entry


Grants.EMPTY = Grants((), {}, ())


class PublishPolicy(NamedTuple):
    """Every directive a client message needs, resolved once (spec §3.12)."""

    allowed: bool
    echo: bool  # the sender gets its own copy
    store_seconds: int  # 0 not stored, -1 forever
    emit_event: bool  # emitPubSubEvent


# Distinct (channel, event, subscribed) decisions kept per Permissions; a client that cycles
# through more names than this only loses the cache, never correctness.
_POLICY_CACHE_MAX = 256


class Permissions:
    """The directives in force for one connection or subscription (spec §3.11, §3.12).

    Subscribe-token grants, when given, are layered over the connect token's: per directive, the
    subscribe token decides if any of its matching entries defines the directive; otherwise the
    connect token does; otherwise the directive's default applies. ``broadcast`` and
    ``autoSubscribe`` are only ever read from the connect token.
    """

    __slots__ = ("_by_keys", "_observe", "_policies", "connect", "subscribe")

    def __init__(self, connect: Grants, subscribe: Grants | None = None) -> None:
        # Grants of the connect token; the base layer, and the only source of broadcast.
        self.connect = connect
        # Grants of the subscribe token that created the subscription, if any.
        self.subscribe = subscribe
        # publish_policy() answers: tokens are immutable, so a decision never goes stale.
        self._policies: dict[tuple[str, str, bool], PublishPolicy] = {}
        # the same answers by the token keys the channel matched: a client publishing to many
        # rooms under one ``room.*`` key misses the first cache but hits this one
        self._by_keys: dict[tuple[Any, ...], PublishPolicy] = {}
        # can_observe() answers, consulted for every storage update fanned out to a subscriber
        self._observe: dict[tuple[str, str], bool] = {}

    # Public methods

    def can_subscribe(self, channel: str) -> bool:
        """Whether subscribing to ``channel`` is allowed (spec §6.1 step 4).

        An exact connect-token key with ``autoSubscribe: true`` counts as ``subscribe: true``
        there, unless an explicit ``false`` applies.
        """
        if self.subscribe is not None:
            layered = self.subscribe.channel_flag(channel, "subscribe")
            if layered is not None:
                return layered
        allowed = self.connect.channel_flag(channel, "subscribe")
        if allowed is None:
            return self.connect.is_auto_subscribe(channel)
        return allowed

    def channel_flag(self, channel: str, name: str) -> bool:
        """Resolve a boolean channel directive; False when undefined."""
        return bool(self._layered(lambda g: g.channel_flag(channel, name)))

    def history_start(self, channel: str) -> int | None:
        """The ``historyStart`` in force (Unix seconds), or None for "subscription start"."""
        return self._layered(lambda g: g.channel_value(channel, "historyStart"))

    def resume_seconds(self, channel: str) -> int:
        """The ``resume`` directive in force (seconds before the subscription a ``resumeFrom``
        may reach when no ``historyStart`` is set; a tidings extension), 0 when undefined."""
        return self._layered(lambda g: g.channel_value(channel, "resume")) or 0

    def can_publish(self, channel: str, event: str, *, subscribed: bool) -> bool:
        """Whether ``event`` may be published to ``channel`` (spec §3.12).

        Args:
            channel: the real channel name (aliases already resolved).
            event: the event name.
            subscribed: whether the publishing connection has an active subscription.
        """
        publish = self._layered(lambda g: g.message_flag(channel, event, "publish"))
        if publish is False:
            return False
        if self.connect.message_flag(channel, event, "broadcast"):
            return True
        return bool(publish) and subscribed

    def publish_policy(self, channel: str, event: str, *, subscribed: bool) -> PublishPolicy:
        """``can_publish``, ``echo``, ``store_seconds`` and ``emit_pubsub`` at once, cached: a
        chat client sends the same event to the same channel over and over, and each of these
        is a pattern match over the token's keys."""
        key = (channel, event, subscribed)
        policy = self._policies.get(key)
        if policy is None:
            layered = None if self.subscribe is None else self.subscribe.matching_keys(channel)
            by_keys = (self.connect.matching_keys(channel), layered, event, subscribed)
            policy = self._by_keys.get(by_keys)
            if policy is None:
                allowed = self.can_publish(channel, event, subscribed=subscribed)
                policy = PublishPolicy(
                    allowed,
                    allowed and self.echo(channel, event),
                    self.store_seconds(channel, event) if allowed else 0,
                    allowed and self.emit_pubsub(channel, event),
                )
                _bounded_put(self._by_keys, by_keys, policy)
            _bounded_put(self._policies, key, policy)
        return policy

    def echo(self, channel: str, event: str) -> bool:
        """Whether the sender receives its own message (meaningful once publishing is allowed)."""
        return bool(self._layered(lambda g: g.message_flag(channel, event, "echo")))

    def emit_pubsub(self, channel: str, event: str) -> bool:
        """Whether publishing ``event`` emits the ``hotsock.messagePublished`` backend event."""
        return bool(self._layered(lambda g: g.message_flag(channel, event, "emitPubSubEvent")))

    def store_seconds(self, channel: str, event: str) -> int:
        """Retention of published messages: 0 not stored (default), -1 forever, else seconds."""
        value = self._layered(lambda g: g.message_value(channel, event, "store"))
        return 0 if value is None else value

    def schedule_before(self, channel: str, event: str) -> int:
        """Latest allowed schedule instant for messages (Unix seconds); 0 = not allowed."""
        value = self._layered(lambda g: g.message_value(channel, event, "scheduleBefore"))
        return 0 if value is None else value

    def storage_flag(self, channel: str, key: str, name: str) -> bool:
        """Resolve ``observe``, ``get``, ``set`` or ``emitPubSubEvent`` for a storage key."""
        return bool(self._layered(lambda g: g.storage_flag(channel, key, name)))

    def may_observe(self, channel: str) -> bool:
        """False when no storage key of ``channel`` can resolve ``observe`` to true, so a new
        subscription needs no look at the channel's entries."""
        if self.subscribe is not None and self.subscribe.observes_any(channel):
            return True
        return self.connect.observes_any(channel)

    def can_observe(self, channel: str, key: str) -> bool:
        """``observe`` for a storage key (spec §3.8), cached like ``publish_policy``."""
        cache_key = (channel, key)
        allowed = self._observe.get(cache_key)
        if allowed is None:
            allowed = self.storage_flag(channel, key, "observe")
            _bounded_put(self._observe, cache_key, allowed)
        return allowed

    def storage_store_seconds(self, channel: str, key: str) -> int:
        """TTL of storage entries this connection writes: -1 forever (default), else seconds."""
        value = self._layered(lambda g: g.storage_value(channel, key, "store"))
        return -1 if value is None else value

    def storage_schedule_before(self, channel: str, key: str) -> int:
        """Latest allowed scheduled-write instant for a storage key; 0 = not allowed."""
        value = self._layered(lambda g: g.storage_value(channel, key, "scheduleBefore"))
        return 0 if value is None else value

    def react_allows(self, channel: str, event: str, reaction: str) -> bool:
        """Whether ``reaction`` is allowed on a message of ``event``; False when undefined."""
        return bool(self._layered(lambda g: g.react_allows(channel, event, reaction)))

    # Private methods

    def _layered(self, lookup: Callable[[Grants], _T | None]) -> _T | None:
        if self.subscribe is not None:
            value = lookup(self.subscribe)
            if value is not None:
                return value
        return lookup(self.connect)


# Private functions: resolution


def _bounded_put(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _POLICY_CACHE_MAX:
        cache.clear()
    cache[key] = value


def _resolve_flag(values: Iterator[bool]) -> bool | None:
    result: bool | None = None
    for value in values:
        if not value:
            return False
        result = True
    return result


def _resolve_value(candidates: Iterator[tuple[_Rank, int]]) -> int | None:
    # Ranks are unique (they end in token positions), so min() never compares the values.
    best = min(candidates, default=None)
    return None if best is None else best[1]


# Private functions: parsing


def _quote(key: str) -> str:
    if len(key) > _KEY_QUOTE_MAX:
        key = key[:_KEY_QUOTE_MAX] + "…"
    return '"' + key + '"'


def _object(value: object, where: str) -> dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TokenError(f"{where} must be an object")
    return value


def _flag(directives: Mapping[str, object], name: str, where: str) -> bool | None:
    value = directives.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise TokenError(f"{where}.{name} must be a boolean")


def _flags(directives: Mapping[str, object], names: tuple[str, ...], where: str) -> dict[str, bool]:
    flags: dict[str, bool] = {}
    for name in names:
        value = _flag(directives, name, where)
        if value is not None:
            flags[name] = value
    return flags


def _numeric_date(
    directives: Mapping[str, object], name: str, where: str, to_int: Callable[[float], int]
) -> int | None:
    # NumericDate may carry a fraction (RFC 7519 §2); ``to_int`` rounds it towards the safe side
    # (up for a lower bound such as historyStart, down for an upper bound like scheduleBefore).
    value = directives.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"{where}.{name} must be a number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TokenError(f"{where}.{name} must be a finite number")
        return to_int(value)
    return value


def _resume(directives: Mapping[str, object], where: str) -> int | None:
    value = directives.get("resume")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenError(f"{where}.resume must be an integer")
    if not 0 <= value <= STORE_MAX_SECONDS:
        raise TokenError(f"{where}.resume must be 0..{STORE_MAX_SECONDS}")
    return value


def _store(directives: Mapping[str, object], where: str, *, minimum: int) -> int | None:
    value = directives.get("store")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenError(f"{where}.store must be an integer")
    if value != -1 and not minimum <= value <= STORE_MAX_SECONDS:
        raise TokenError(f"{where}.store must be -1 or {minimum}..{STORE_MAX_SECONDS}")
    return value


def _entries(
    value: object, where: str, build: Callable[[Pattern, dict[str, object], str], _Entry]
) -> tuple[_Entry, ...]:
    entries: list[_Entry] = []
    for key, spec in _object(value, where).items():
        if not isinstance(key, str):
            raise TokenError(f"{where} keys must be strings")
        pattern = compile_key(key)
        if pattern is None:
            continue
        path = f"{where}[{_quote(key)}]"
        entries.append(build(pattern, _object(spec, path), path))
    return tuple(entries)


def _message(pattern: Pattern, directives: dict[str, object], where: str) -> _Entry:
    values: dict[str, int] = {}
    store = _store(directives, where, minimum=0)
    if store is not None:
        values["store"] = store
    schedule_before = _numeric_date(directives, "scheduleBefore", where, math.floor)
    if schedule_before is not None:
        values["scheduleBefore"] = schedule_before
    react = directives.get("react")
    parsed_react: bool | frozenset[str] | None
    if react is None or isinstance(react, bool):
        parsed_react = react
    elif isinstance(react, list) and all(isinstance(item, str) for item in react):
        parsed_react = frozenset(react)
    else:
        raise TokenError(f"{where}.react must be a boolean or an array of strings")
    return _Entry(pattern, _flags(directives, _MESSAGE_FLAGS, where), values, parsed_react)


def _storage(pattern: Pattern, directives: dict[str, object], where: str) -> _Entry:
    values: dict[str, int] = {}
    store = _store(directives, where, minimum=1)
    if store is not None:
        values["store"] = store
    schedule_before = _numeric_date(directives, "scheduleBefore", where, math.floor)
    if schedule_before is not None:
        values["scheduleBefore"] = schedule_before
    return _Entry(pattern, _flags(directives, _STORAGE_FLAGS, where), values)
