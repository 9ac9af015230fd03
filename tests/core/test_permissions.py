"""Tests for tidings.core.permissions: parsing and resolution of ``channels`` (spec §3.6–§3.12)."""

from __future__ import annotations

from typing import Any

import pytest

from tidings.core.names import STORE_MAX_SECONDS
from tidings.core.permissions import Grants, Permissions
from tidings.errors import TokenError


def grants(channels: Any, *, connect_token: bool = True) -> Grants:
    """Parse a ``channels`` claim."""
    return Grants.parse(channels, connect_token=connect_token)


def messages(event_key: str = "*", **directives: Any) -> dict[str, Any]:
    """A channel entry granting ``directives`` on one event key."""
    return {"messages": {event_key: directives}}


def perms(connect: Any, subscribe: Any = None) -> Permissions:
    """Layered permissions from two ``channels`` claims."""
    sub = None if subscribe is None else grants(subscribe, connect_token=False)
    return Permissions(grants(connect), sub)


# Parsing: shapes


@pytest.mark.parametrize("channels", [None, {}])
def test_grants_parse_returns_empty_when_claim_is_absent_or_empty(channels: Any) -> None:
    """A missing or empty claim is the shared EMPTY grants."""
    assert grants(channels) is Grants.EMPTY


@pytest.mark.parametrize("channels", [[], "chat", 1, True])
def test_grants_parse_refuses_non_object_claim(channels: Any) -> None:
    """``channels`` must be an object."""
    with pytest.raises(TokenError, match="channels must be an object"):
        grants(channels)


def test_grants_parse_refuses_non_string_channel_key() -> None:
    """Keys must be strings (only reachable from Python callers)."""
    with pytest.raises(TokenError, match="keys must be strings"):
        grants({1: {}})


def test_grants_parse_refuses_non_string_event_key() -> None:
    """Event keys must be strings (only reachable from Python callers)."""
    with pytest.raises(TokenError, match="keys must be strings"):
        grants({"c": {"messages": {1: {}}}})


@pytest.mark.parametrize(
    "channels",
    [
        {"c": []},
        {"c": {"messages": []}},
        {"c": {"messages": {"e": "yes"}}},
        {"c": {"storage": 1}},
        {"c": {"storage": {"k": [True]}}},
    ],
)
def test_grants_parse_refuses_non_object_entries(channels: Any) -> None:
    """Channel, message and storage entries must be objects."""
    with pytest.raises(TokenError, match="must be an object"):
        grants(channels)


def test_grants_parse_accepts_null_entries_as_empty() -> None:
    """A null entry or directive counts as absent."""
    parsed = grants({"c": None, "d": {"subscribe": None, "messages": None, "storage": {"k": None}}})
    assert parsed.channel_flag("c", "subscribe") is None
    assert parsed.channel_flag("d", "subscribe") is None
    assert parsed.has_exact_key("c")


def test_grants_parse_ignores_never_matching_keys_entirely() -> None:
    """Keys starting with '#' (not '#regex:') are skipped, directives unchecked (spec §3.9)."""
    parsed = grants({"#chat": {"subscribe": "yes", "alias": 5}, "c": messages("#e", publish="no")})
    assert parsed.channel_flag("#chat", "subscribe") is None
    assert parsed.message_flag("c", "#e", "publish") is None


def test_grants_parse_ignores_unknown_directives() -> None:
    """Unknown directive names are ignored (spec §3.9)."""
    parsed = grants({"c": {"subscribe": True, "frobnicate": "x", "messages": {"e": {"zap": 1}}}})
    assert parsed.channel_flag("c", "subscribe") is True


# Parsing: directive types


@pytest.mark.parametrize("name", ["subscribe", "getInfo", "omitFromSubCount", "umdUpdate"])
def test_grants_parse_refuses_non_boolean_channel_flag(name: str) -> None:
    """Boolean channel directives must be booleans (``subscribe: "yes"`` in §3.9)."""
    with pytest.raises(TokenError, match=f"{name} must be a boolean"):
        grants({"c": {name: "yes"}})


@pytest.mark.parametrize("name", ["publish", "broadcast", "echo", "emitPubSubEvent"])
def test_grants_parse_refuses_non_boolean_message_flag(name: str) -> None:
    """Boolean message directives must be booleans."""
    with pytest.raises(TokenError, match=f"{name} must be a boolean"):
        grants({"c": messages("e", **{name: 1})})


@pytest.mark.parametrize("name", ["observe", "get", "set", "emitPubSubEvent"])
def test_grants_parse_refuses_non_boolean_storage_flag(name: str) -> None:
    """Boolean storage directives must be booleans."""
    with pytest.raises(TokenError, match=f"{name} must be a boolean"):
        grants({"c": {"storage": {"k": {name: "true"}}}})


@pytest.mark.parametrize("value", ["0", True, [1]])
def test_grants_parse_refuses_non_numeric_history_start(value: Any) -> None:
    """historyStart must be a NumericDate."""
    with pytest.raises(TokenError, match="historyStart must be a number"):
        grants({"c": {"historyStart": value}})


@pytest.mark.parametrize("value", [-1, STORE_MAX_SECONDS + 1, 1.5, "60", True])
def test_grants_parse_refuses_bad_resume(value: Any) -> None:
    """resume (tidings extension) is an integer number of seconds in 0..3155695200."""
    with pytest.raises(TokenError, match="resume must be"):
        grants({"c": {"resume": value}})


def test_permissions_resume_seconds_layers_and_defaults_to_zero() -> None:
    """resume resolves like historyStart: the subscribe token's value wins; undefined is 0."""
    assert perms({"c": {}}).resume_seconds("c") == 0
    assert perms({"c": {"resume": STORE_MAX_SECONDS}}).resume_seconds("c") == STORE_MAX_SECONDS
    assert perms({"c": {"resume": 60}}, {"c": {"resume": 5}}).resume_seconds("c") == 5
    assert perms({"c": {"resume": 60}}, {"c": {}}).resume_seconds("c") == 60


def test_grants_parse_refuses_non_finite_numeric_date() -> None:
    """Infinity (reachable from Python callers) is not a NumericDate."""
    with pytest.raises(TokenError, match="finite"):
        grants({"c": {"historyStart": float("inf")}})


def test_grants_parse_rounds_fractional_dates_to_the_safe_side() -> None:
    """historyStart (a lower bound) rounds up; scheduleBefore (an upper bound) rounds down."""
    parsed = grants({"c": {"historyStart": 10.2, **messages("e", scheduleBefore=20.8)}})
    assert parsed.channel_value("c", "historyStart") == 11
    assert parsed.message_value("c", "e", "scheduleBefore") == 20


@pytest.mark.parametrize("value", [-2, STORE_MAX_SECONDS + 1, 1.5, "60", True])
def test_grants_parse_refuses_message_store_out_of_range(value: Any) -> None:
    """Message store is an integer -1 or 0..3155695200."""
    with pytest.raises(TokenError, match="store must be"):
        grants({"c": messages("e", store=value)})


@pytest.mark.parametrize("value", [-1, 0, 60, STORE_MAX_SECONDS])
def test_grants_parse_accepts_message_store_in_range(value: int) -> None:
    """Message store accepts -1, 0 and up to the maximum."""
    assert grants({"c": messages("e", store=value)}).message_value("c", "e", "store") == value


@pytest.mark.parametrize("value", [0, -2, STORE_MAX_SECONDS + 1])
def test_grants_parse_refuses_storage_store_out_of_range(value: int) -> None:
    """Storage store is -1 or 1..3155695200; 0 is invalid."""
    with pytest.raises(TokenError, match="store must be -1 or 1"):
        grants({"c": {"storage": {"k": {"store": value}}}})


@pytest.mark.parametrize("value", ["👍", [1], ["👍", None], {"👍": True}])
def test_grants_parse_refuses_malformed_react(value: Any) -> None:
    """react is a boolean or an array of strings."""
    with pytest.raises(TokenError, match="react must be"):
        grants({"c": messages("e", react=value)})


def test_grants_parse_refuses_bad_regex_key_at_any_level() -> None:
    """A '#regex:' key RE2 rejects fails the whole token, whatever its level."""
    bad: list[dict[str, Any]] = [
        {"#regex:(": {}},
        {"c": messages("#regex:(?=x)")},
        {"c": {"storage": {"#regex:(a)\\1": {}}}},
    ]
    for channels in bad:
        with pytest.raises(TokenError, match="invalid regex key"):
            grants(channels)


# Parsing: aliases and autoSubscribe


def test_grants_alias_resolves_both_ways() -> None:
    """An alias on an exact key maps alias -> channel and channel -> alias."""
    parsed = grants({"room.7f3a": {"alias": "lobby"}})
    assert parsed.alias_target("lobby") == "room.7f3a"
    assert parsed.alias_of("room.7f3a") == "lobby"
    assert parsed.alias_target("room.7f3a") is None
    assert parsed.alias_of("lobby") is None


def test_grants_alias_may_equal_its_own_key() -> None:
    """Aliasing a channel to its own name is harmless and accepted."""
    assert grants({"lobby": {"alias": "lobby"}}).alias_target("lobby") == "lobby"


@pytest.mark.parametrize("source", ["room.*", "#regex:^room"])
def test_grants_parse_refuses_alias_on_pattern_key(source: str) -> None:
    """alias is only allowed on exact keys."""
    with pytest.raises(TokenError, match="alias is only allowed on an exact"):
        grants({source: {"alias": "lobby"}})


@pytest.mark.parametrize("alias", ["", "has space", "a*", "x#y", "a,b", "x" * 257, 7, False])
def test_grants_parse_refuses_invalid_alias(alias: Any) -> None:
    """An alias must be a valid channel name."""
    with pytest.raises(TokenError, match="valid channel name"):
        grants({"room": {"alias": alias}})


def test_grants_parse_refuses_duplicated_alias() -> None:
    """Two channels cannot share an alias."""
    with pytest.raises(TokenError, match="defined twice"):
        grants({"a": {"alias": "lobby"}, "b": {"alias": "lobby"}})


def test_grants_parse_refuses_alias_equal_to_another_channel_key() -> None:
    """An alias may not shadow another channel key of the same token."""
    with pytest.raises(TokenError, match="also a channel key"):
        grants({"a": {"alias": "b"}, "b": {"subscribe": True}})


def test_grants_auto_subscribe_lists_exact_keys_in_token_order() -> None:
    """autoSubscribe: true keys come back in token order; false ones do not."""
    parsed = grants(
        {
            "z": {"autoSubscribe": True},
            "a": {"autoSubscribe": False},
            "m": {"autoSubscribe": True},
        }
    )
    assert parsed.auto_subscribe() == ["z", "m"]
    assert parsed.is_auto_subscribe("m")
    assert not parsed.is_auto_subscribe("a")


def test_grants_auto_subscribe_ignored_outside_connect_tokens() -> None:
    """A subscribe token's autoSubscribe is checked but never recorded."""
    parsed = grants({"z": {"autoSubscribe": True}}, connect_token=False)
    assert parsed.auto_subscribe() == []
    assert not parsed.is_auto_subscribe("z")


@pytest.mark.parametrize("source", ["room.*", "#regex:^room"])
def test_grants_parse_refuses_auto_subscribe_on_pattern_key(source: str) -> None:
    """autoSubscribe is only allowed on exact keys (tidings rejects, spec §3.9)."""
    with pytest.raises(TokenError, match="autoSubscribe is only allowed on an exact"):
        grants({source: {"autoSubscribe": True}})


def test_grants_parse_refuses_non_boolean_auto_subscribe() -> None:
    """autoSubscribe must be a boolean."""
    with pytest.raises(TokenError, match="autoSubscribe must be a boolean"):
        grants({"room": {"autoSubscribe": 1}})


def test_grants_has_exact_key_ignores_patterns() -> None:
    """Only exact keys count as exact keys."""
    parsed = grants({"room": {}, "chat.*": {}, "#regex:x": {}})
    assert parsed.has_exact_key("room")
    assert not parsed.has_exact_key("chat.*")
    assert not parsed.has_exact_key("chat.1")
    assert not parsed.has_exact_key("#regex:x")


def test_grants_repr_lists_keys() -> None:
    """The repr lists the channel keys in token order."""
    assert repr(grants({"a": {}, "b.*": {}})) == "Grants('a', 'b.*')"


# Resolution: booleans


@pytest.mark.parametrize(
    "channels",
    [
        {"chat.1": {"subscribe": True}, "chat.*": {"subscribe": False}},
        {"chat.*": {"subscribe": False}, "chat.1": {"subscribe": True}},
        {"chat.1": {"subscribe": False}, "*": {"subscribe": True}},
        {"#regex:^chat": {"subscribe": False}, "chat.1": {"subscribe": True}},
        {"chat.1": {"subscribe": True}, "#regex:1$": {"subscribe": False}},
    ],
)
def test_grants_channel_flag_explicit_false_wins(channels: dict[str, Any]) -> None:
    """Any matching false wins, whatever the order or specificity (spec §3.11)."""
    assert grants(channels).channel_flag("chat.1", "subscribe") is False


def test_grants_channel_flag_true_when_any_true_and_none_false() -> None:
    """True from any matching entry when no entry says false."""
    parsed = grants({"chat.*": {"subscribe": True}, "chat.1": {"getInfo": True}})
    assert parsed.channel_flag("chat.1", "subscribe") is True
    assert parsed.channel_flag("chat.1", "getInfo") is True
    assert parsed.channel_flag("chat.2", "getInfo") is None


def test_grants_channel_flag_none_when_nothing_matches() -> None:
    """Undefined directives resolve to None, leaving the default to the caller."""
    assert grants({"other": {"subscribe": True}}).channel_flag("chat.1", "subscribe") is None
    assert Grants.EMPTY.channel_flag("chat.1", "subscribe") is None


def test_grants_message_flag_collects_entries_across_channel_keys() -> None:
    """Two-level booleans gather every matching event key under every matching channel key."""
    parsed = grants(
        {
            "chat.*": messages("*", publish=True),
            "chat.1": messages("#regex:^typ", publish=False),
        }
    )
    assert parsed.message_flag("chat.1", "typing", "publish") is False
    assert parsed.message_flag("chat.1", "msg", "publish") is True
    assert parsed.message_flag("chat.2", "typing", "publish") is True
    assert parsed.message_flag("other", "msg", "publish") is None


def test_grants_storage_flag_resolves_per_storage_key() -> None:
    """Storage booleans resolve over matching storage keys."""
    parsed = grants(
        {"doc.*": {"storage": {"*": {"get": True, "observe": True}, "secret": {"get": False}}}}
    )
    assert parsed.storage_flag("doc.1", "title", "get") is True
    assert parsed.storage_flag("doc.1", "secret", "get") is False
    assert parsed.storage_flag("doc.1", "secret", "observe") is True
    assert parsed.storage_flag("doc.1", "title", "set") is None


# Resolution: scalars


@pytest.mark.parametrize(
    "channels",
    [
        {
            "#regex:chat": {"historyStart": 3},
            "c*": {"historyStart": 2},
            "chat.1": {"historyStart": 1},
        },
        {
            "chat.1": {"historyStart": 1},
            "c*": {"historyStart": 2},
            "#regex:chat": {"historyStart": 3},
        },
        {"c*": {"historyStart": 2}, "chat.1": {"historyStart": 1}, "*": {"historyStart": 4}},
    ],
)
def test_grants_channel_value_exact_key_wins_regardless_of_order(channels: dict[str, Any]) -> None:
    """Exact beats wildcard beats regex for scalars (spec §3.11)."""
    assert grants(channels).channel_value("chat.1", "historyStart") == 1


def test_grants_channel_value_prefers_wildcard_with_more_literals() -> None:
    """Among wildcards, more literal characters win; then wildcard beats regex."""
    parsed = grants(
        {"#regex:.": {"historyStart": 9}, "c*": {"historyStart": 2}, "chat.*": {"historyStart": 5}}
    )
    assert parsed.channel_value("chat.1", "historyStart") == 5
    assert parsed.channel_value("cx", "historyStart") == 2
    assert parsed.channel_value("zz", "historyStart") == 9


def test_grants_channel_value_ties_go_to_token_order() -> None:
    """Equally specific keys: the first in the token wins."""
    parsed = grants({"a*": {"historyStart": 1}, "*b": {"historyStart": 2}})
    assert parsed.channel_value("ab", "historyStart") == 1
    parsed = grants({"*b": {"historyStart": 2}, "a*": {"historyStart": 1}})
    assert parsed.channel_value("ab", "historyStart") == 2


def test_grants_channel_value_skips_entries_that_do_not_set_it() -> None:
    """The most specific entry *that sets the directive* wins."""
    parsed = grants({"chat.1": {"subscribe": True}, "chat.*": {"historyStart": 0}})
    assert parsed.channel_value("chat.1", "historyStart") == 0
    assert parsed.channel_value("nope", "historyStart") is None


def test_grants_message_value_ranks_channel_key_before_event_key() -> None:
    """An exact channel key with a wildcard event beats a wildcard channel with an exact event."""
    parsed = grants(
        {
            "chat.*": messages("msg", store=100),
            "chat.1": messages("*", store=5),
        }
    )
    assert parsed.message_value("chat.1", "msg", "store") == 5
    assert parsed.message_value("chat.2", "msg", "store") == 100


def test_grants_message_value_ranks_event_key_within_channel_rank() -> None:
    """Under equally specific channel keys, the more specific event key wins over token order."""
    parsed = grants(
        {
            "a*": messages("*", store=1),
            "*b": messages("msg", store=2),
        }
    )
    assert parsed.message_value("ab", "msg", "store") == 2
    assert parsed.message_value("ab", "other", "store") == 1


def test_grants_message_value_ties_go_to_token_order() -> None:
    """Equal ranks at both levels: the entry written first wins."""
    parsed = grants({"c": {"messages": {"a*": {"store": 1}, "*b": {"store": 2}}}})
    assert parsed.message_value("c", "ab", "store") == 1


def test_grants_storage_value_uses_most_specific_storage_key() -> None:
    """Storage scalars follow the same specificity rule."""
    parsed = grants(
        {"doc": {"storage": {"*": {"store": -1, "scheduleBefore": 50}, "tmp": {"store": 60}}}}
    )
    assert parsed.storage_value("doc", "tmp", "store") == 60
    assert parsed.storage_value("doc", "x", "store") == -1
    assert parsed.storage_value("doc", "tmp", "scheduleBefore") == 50
    assert parsed.storage_value("other", "tmp", "store") is None


# Resolution: react


def test_grants_react_allows_true_and_listed_values() -> None:
    """react: true allows any value; an array allows its members (union over entries)."""
    parsed = grants(
        {
            "c": messages("chat", react=["👍"]),
            "c*": messages("*", react=["❤️"]),
            "open": messages("*", react=True),
        }
    )
    assert parsed.react_allows("c", "chat", "👍") is True
    assert parsed.react_allows("c", "chat", "❤️") is True
    assert parsed.react_allows("c", "chat", "😡") is False
    assert parsed.react_allows("open", "x", "😡") is True


def test_grants_react_false_wins_over_true_and_lists() -> None:
    """Any matching react: false denies every value."""
    parsed = grants(
        {
            "c": {
                "messages": {
                    "*": {"react": True},
                    "chat": {"react": ["👍"]},
                    "ch*": {"react": False},
                }
            }
        }
    )
    assert parsed.react_allows("c", "chat", "👍") is False
    assert parsed.react_allows("c", "other", "👍") is True


def test_grants_react_undefined_is_none() -> None:
    """No matching react directive: None."""
    parsed = grants({"c": messages("chat", publish=True)})
    assert parsed.react_allows("c", "chat", "👍") is None
    assert grants({"c": messages("chat", react=[])}).react_allows("c", "chat", "👍") is False


# Permissions: layering


def test_permissions_layering_subscribe_token_overrides_connect_token() -> None:
    """A directive the subscribe token defines is resolved over its entries alone."""
    layered = perms(
        {"chat.*": {"subscribe": False, **messages("msg", store=60, echo=True)}},
        {"chat.1": {"subscribe": True, **messages("*", store=-1)}},
    )
    assert layered.can_subscribe("chat.1") is True
    assert layered.store_seconds("chat.1", "msg") == -1
    # echo is undefined in the subscribe token, so the connect token decides.
    assert layered.echo("chat.1", "msg") is True
    # Outside the subscribe token's keys the connect token still applies.
    assert layered.can_subscribe("chat.2") is False


def test_permissions_layering_subscribe_false_overrides_connect_true() -> None:
    """An explicit false in the subscribe token is not overruled by the connect token."""
    layered = perms(
        {"*": {"getInfo": True, "storage": {"*": {"get": True}}}},
        {"c": {"getInfo": False, "storage": {"k": {"get": False}}}},
    )
    assert layered.channel_flag("c", "getInfo") is False
    assert layered.storage_flag("c", "k", "get") is False
    assert layered.storage_flag("c", "j", "get") is True


def test_permissions_defaults_apply_when_nothing_defines_a_directive() -> None:
    """Booleans default to False, store 0, storage store -1, scheduleBefore 0."""
    layered = Permissions(Grants.EMPTY)
    assert layered.can_subscribe("c") is False
    assert layered.channel_flag("c", "getInfo") is False
    assert layered.history_start("c") is None
    assert layered.can_publish("c", "e", subscribed=True) is False
    assert layered.echo("c", "e") is False
    assert layered.emit_pubsub("c", "e") is False
    assert layered.store_seconds("c", "e") == 0
    assert layered.schedule_before("c", "e") == 0
    assert layered.storage_flag("c", "k", "observe") is False
    assert layered.storage_store_seconds("c", "k") == -1
    assert layered.storage_schedule_before("c", "k") == 0
    assert layered.react_allows("c", "e", "👍") is False


def test_permissions_values_layer_like_booleans() -> None:
    """Scalars and react come from the subscribe token when it sets them."""
    layered = perms(
        {
            "c": {
                "historyStart": 100,
                **messages("e", scheduleBefore=10, emitPubSubEvent=True, react=True),
                "storage": {"k": {"store": 5, "scheduleBefore": 7}},
            }
        },
        {"c": {"historyStart": 0, "storage": {"k": {"store": 9}}, **messages("e", react=["👍"])}},
    )
    assert layered.history_start("c") == 0
    assert layered.schedule_before("c", "e") == 10
    assert layered.emit_pubsub("c", "e") is True
    assert layered.storage_store_seconds("c", "k") == 9
    assert layered.storage_schedule_before("c", "k") == 7
    assert layered.react_allows("c", "e", "👍") is True
    assert layered.react_allows("c", "e", "❤️") is False


# Permissions: subscribe and autoSubscribe


def test_permissions_can_subscribe_when_auto_subscribe_is_set() -> None:
    """An exact autoSubscribe: true key of the connect token counts as subscribe: true."""
    assert perms({"lobby": {"autoSubscribe": True}}).can_subscribe("lobby") is True


def test_permissions_can_subscribe_denied_when_explicit_false_beats_auto_subscribe() -> None:
    """A matching explicit subscribe: false still wins over autoSubscribe."""
    connect = {"lobby": {"autoSubscribe": True}, "lob*": {"subscribe": False}}
    assert perms(connect).can_subscribe("lobby") is False
    assert (
        perms({"lobby": {"autoSubscribe": True}}, {"lobby": {"subscribe": False}}).can_subscribe(
            "lobby"
        )
        is False
    )


def test_permissions_can_subscribe_ignores_subscribe_token_auto_subscribe() -> None:
    """autoSubscribe is read from the connect token only."""
    assert perms({}, {"lobby": {"autoSubscribe": True}}).can_subscribe("lobby") is False


# Permissions: publish vs broadcast (spec §3.12)


@pytest.mark.parametrize(
    ("publish", "broadcast", "when_subscribed", "when_not_subscribed"),
    [
        (True, None, True, False),
        (True, False, True, False),
        (None, True, True, True),
        (True, True, True, True),
        (False, True, False, False),
        (False, None, False, False),
        (None, None, False, False),
        (None, False, False, False),
    ],
)
def test_permissions_can_publish_follows_publish_broadcast_table(
    publish: bool | None, broadcast: bool | None, when_subscribed: bool, when_not_subscribed: bool
) -> None:
    """Each row of the §3.12 table, subscribed and not."""
    directives = {
        name: value
        for name, value in (("publish", publish), ("broadcast", broadcast))
        if value is not None
    }
    layered = perms({"c": messages("e", **directives)})
    assert layered.can_publish("c", "e", subscribed=True) is when_subscribed
    assert layered.can_publish("c", "e", subscribed=False) is when_not_subscribed


def test_permissions_can_publish_reads_broadcast_from_connect_token_only() -> None:
    """A subscribe token's broadcast is ignored; the connect token's applies."""
    layered = perms({}, {"c": messages("e", broadcast=True)})
    assert layered.can_publish("c", "e", subscribed=False) is False
    layered = perms({"c": messages("e", broadcast=True)}, {"c": messages("other", publish=True)})
    assert layered.can_publish("c", "e", subscribed=False) is True


def test_permissions_can_publish_denied_when_subscribe_token_says_false() -> None:
    """A subscribe-token publish: false beats a connect-token broadcast: true."""
    layered = perms({"c": messages("e", broadcast=True)}, {"c": messages("e", publish=False)})
    assert layered.can_publish("c", "e", subscribed=True) is False
    assert layered.can_publish("c", "e", subscribed=False) is False


def test_permissions_can_publish_with_subscribe_token_publish_grant() -> None:
    """publish granted by the subscribe token allows publishing while subscribed."""
    layered = perms({}, {"c": messages("*", publish=True)})
    assert layered.can_publish("c", "e", subscribed=True) is True


def test_permissions_publish_policy_resolves_everything_once() -> None:
    """publish_policy agrees with the single-directive answers and is cached per key."""
    layered = perms({"c.*": messages("e", publish=True, echo=True, store=60, emitPubSubEvent=True)})
    policy = layered.publish_policy("c.1", "e", subscribed=True)
    assert policy == (True, True, 60, True)
    assert layered.publish_policy("c.1", "e", subscribed=True) is policy
    assert layered.publish_policy("c.1", "e", subscribed=False) == (False, False, 0, False)
    assert layered.publish_policy("c.1", "other", subscribed=True).allowed is False


def test_permissions_publish_policy_cache_stays_bounded() -> None:
    """A client cycling through many channels never grows the cache past its bound."""
    layered = perms({"c.*": messages("e", publish=True)})
    for n in range(600):
        assert layered.publish_policy(f"c.{n}", "e", subscribed=True).allowed is True
        assert layered.publish_policy("c.1", f"e{n}", subscribed=True).allowed is False
    assert len(layered._policies) <= 256 and len(layered._by_keys) <= 256


def test_permissions_publish_policy_shared_by_channels_matching_the_same_keys() -> None:
    """Channels selected by the same token keys share one decision; a channel that also
    matches another key (here an exact deny, or a subscribe-token key) gets its own."""
    connect = {
        "room.*": messages("chat", publish=True, echo=True),
        "room.vip": messages("chat", publish=False),
    }
    plain = perms(connect)
    first = plain.publish_policy("room.1", "chat", subscribed=True)
    assert first == (True, True, 0, False)
    assert plain.publish_policy("room.2", "chat", subscribed=True) is first
    assert plain.publish_policy("room.vip", "chat", subscribed=True).allowed is False
    assert plain.publish_policy("room.3", "chat", subscribed=False).allowed is False
    assert plain.publish_policy("lobby", "chat", subscribed=True).allowed is False
    layered = perms(connect, {"room.7": messages("chat", store=30)})
    assert layered.publish_policy("room.7", "chat", subscribed=True) == (True, True, 30, False)
    assert layered.publish_policy("room.8", "chat", subscribed=True) == (True, True, 0, False)
    assert layered.publish_policy("room.9", "chat", subscribed=True) is (
        layered.publish_policy("room.8", "chat", subscribed=True)
    )
    assert len(layered._by_keys) == 2


def test_grants_parse_error_quotes_long_keys_briefly() -> None:
    """Errors name the offending key by its start only."""
    long_key = "room." + "x" * 200 + "*"
    with pytest.raises(TokenError) as info:
        grants({long_key: {"alias": "lobby"}})
    assert len(str(info.value)) < 150
    assert str(info.value).startswith('channels["room.xxx')


def test_permissions_may_observe_only_when_some_key_observes() -> None:
    """A subscription without any ``observe: true`` on its channel needs no storage look."""
    connect = {"game.*": {"storage": {"settings": {"observe": True}, "log": {"get": True}}}}
    assert perms(connect).may_observe("game.1") is True
    assert perms(connect).may_observe("chat.1") is False
    assert perms({"*": {"storage": {"k": {"observe": False}}}}).may_observe("c") is False
    assert perms({}, {"c": {"storage": {"k": {"observe": True}}}}).may_observe("c") is True
    assert perms({}, {"c": {"subscribe": True}}).may_observe("c") is False


def test_permissions_can_observe_resolves_and_caches_per_key() -> None:
    """``observe`` per key, with explicit false winning; the answer is cached."""
    layered = perms({"c": {"storage": {"*": {"observe": True}, "secret": {"observe": False}}}})
    assert layered.can_observe("c", "title") is True
    assert layered.can_observe("c", "secret") is False
    assert layered.can_observe("c", "title") is True  # from the cache
    for n in range(300):  # past the cache bound the cache starts over, answers stay right
        assert layered.can_observe("c", f"k{n}") is True
    assert layered.can_observe("other", "title") is False
