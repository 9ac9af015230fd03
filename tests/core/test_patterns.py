"""Tests for tidings.core.patterns: key syntax, matching and specificity (spec §3.10, §3.11)."""

from __future__ import annotations

import pytest

from tidings.core import patterns
from tidings.core.patterns import Pattern, PatternKind, compile_key
from tidings.errors import TokenError


def key(source: str) -> Pattern:
    """Compile a key that must be usable."""
    pattern = compile_key(source)
    assert pattern is not None
    return pattern


# Exact keys


def test_exact_key_matches_identical_name_only() -> None:
    """An exact key matches the identical name and nothing else."""
    pattern = key("chat.room")
    assert pattern.kind is PatternKind.EXACT
    assert pattern.is_exact
    assert pattern.matches("chat.room")
    assert not pattern.matches("chat.roomx")
    assert not pattern.matches("chat")


def test_exact_key_with_inner_hash_is_exact() -> None:
    """A '#' after the first character keeps the key exact (events may contain '#')."""
    assert key("a#b").matches("a#b")


@pytest.mark.parametrize("source", ["", "#", "#foo", "#regex", "#REGEX:x"])
def test_compile_key_returns_none_when_key_never_matches(source: str) -> None:
    """Empty keys and '#'-prefixed keys without '#regex:' are ignored (spec §3.9)."""
    assert compile_key(source) is None


# Wildcards


@pytest.mark.parametrize(
    ("source", "name", "expected"),
    [
        ("chat.*", "chat.123", True),
        ("chat.*", "chat.a.b", True),
        ("chat.*", "chat.", True),
        ("chat.*", "chat", False),
        ("chat.*", "xchat.1", False),
        ("*", "", True),
        ("*", "anything.at.all", True),
        ("*.room", "a.b.room", True),
        ("*.room", "a.b.roomy", False),
        ("a*b*c", "abc", True),
        ("a*b*c", "a-b-c", True),
        ("a*b*c", "acb", False),
        ("a**b", "ab", True),
        ("a**b", "axxb", True),
        ("**", "x", True),
        ("chat.*", "chat.line\nbreak", True),
    ],
)
def test_wildcard_key_matches_any_run_of_characters(source: str, name: str, expected: bool) -> None:
    """Each '*' matches zero or more of any character, '.' and newline included."""
    pattern = key(source)
    assert pattern.kind is PatternKind.WILDCARD
    assert not pattern.is_exact
    assert pattern.matches(name) is expected


@pytest.mark.parametrize(
    ("source", "literal_match", "regex_lookalike"),
    [
        ("a.b*", "a.bz", "axbz"),
        ("a+(b)*", "a+(b)!", "aab!"),
        ("[ab]*", "[ab]1", "a1"),
        ("x|y*", "x|y", "x"),
        ("^$\\*", "^$\\", "$"),
        ("é?*", "é?z", "z"),
    ],
)
def test_wildcard_key_treats_other_characters_literally(
    source: str, literal_match: str, regex_lookalike: str
) -> None:
    """Regex metacharacters in a wildcard key are matched literally."""
    pattern = key(source)
    assert pattern.matches(literal_match)
    assert not pattern.matches(regex_lookalike)


def test_wildcard_key_is_fast_on_adversarial_names() -> None:
    """Five stars against a 256-character near-miss returns (RE2 is linear)."""
    pattern = key("*a*a*a*a*a*b")
    assert not pattern.matches("a" * 256)
    assert pattern.matches("a" * 255 + "b")


def test_wildcard_key_refused_when_too_large_to_compile() -> None:
    """A wildcard whose program exceeds RE2's memory budget is refused, not truncated."""
    with pytest.raises(TokenError, match="too large"):
        compile_key("a" * 1_000_000 + "*b*")


def test_one_star_wildcard_needs_no_program_and_agrees_with_re2() -> None:
    """A one-star key is a prefix and suffix test (no size limit), and selects exactly the
    names the RE2 program of the same key does, overlapping prefix and suffix included."""
    import itertools

    import re2

    assert key("a" * 1_000_000 + "*").matches("a" * 1_000_001)
    alphabet = ["a", "b", ".", "\n"]
    for size in range(4):
        for parts in itertools.product(alphabet, repeat=size):
            text = "".join(parts)
            for cut in range(len(text) + 1):
                source = text[:cut] + "*" + text[cut:]
                program = re2.compile(
                    re2.escape(text[:cut]) + ".*" + re2.escape(text[cut:]),
                    patterns._options(dot_nl=True),
                )
                for n in range(4):
                    for name in map("".join, itertools.product(alphabet, repeat=n)):
                        expected = program.fullmatch(name) is not None
                        assert key(source).matches(name) is expected, (source, name)


# Regex keys


@pytest.mark.parametrize(
    ("source", "name", "expected"),
    [
        ("#regex:^chat\\.[0-9]+$", "chat.42", True),
        ("#regex:^chat\\.[0-9]+$", "chat.42x", False),
        ("#regex:room", "my.room.1", True),
        ("#regex:room", "ROOM", False),
        ("#regex:(?i)room", "ROOM", True),
        ("#regex:", "anything", True),
        ("#regex:^a.b$", "a\nb", False),
        ("#regex:\\d{3}", "x123", True),
    ],
)
def test_regex_key_searches_unanchored_with_re2_semantics(
    source: str, name: str, expected: bool
) -> None:
    """A '#regex:' key is an unanchored RE2 search, like Go's MatchString."""
    pattern = key(source)
    assert pattern.kind is PatternKind.REGEX
    assert pattern.matches(name) is expected


@pytest.mark.parametrize(
    "source",
    [
        "#regex:(",
        "#regex:[a-",
        "#regex:a{2,1}",
        "#regex:(?=x)",
        "#regex:(?!x)y",
        "#regex:(?<=x)y",
        "#regex:(a)\\1",
        "#regex:a{1001}",
    ],
)
def test_regex_key_refused_when_re2_rejects_it(source: str) -> None:
    """Syntax errors, look-around and back-references make the token invalid."""
    with pytest.raises(TokenError, match="invalid regex key"):
        compile_key(source)


def test_regex_key_error_quotes_long_keys_briefly() -> None:
    """Error messages quote at most the start of a long key."""
    with pytest.raises(TokenError) as info:
        compile_key("#regex:(" + "a" * 500)
    assert len(str(info.value)) < 200


# Specificity and caching


def test_pattern_specificity_orders_exact_wildcard_regex() -> None:
    """Exact < wildcard with more literals < wildcard with fewer < regex (smaller = stronger)."""
    ranked = sorted(
        [key("#regex:^chat"), key("c*"), key("chat.*"), key("chat.room"), key("ch*t.*")],
        key=lambda p: p.specificity,
    )
    assert [p.source for p in ranked] == ["chat.room", "chat.*", "ch*t.*", "c*", "#regex:^chat"]


def test_compile_key_caches_compiled_patterns() -> None:
    """The same key string yields the same shared Pattern object."""
    assert compile_key("cache.*") is compile_key("cache.*")


def test_pattern_repr_names_source_and_kind() -> None:
    """The repr shows the key and its kind."""
    assert repr(key("a.*")) == "Pattern('a.*', WILDCARD)"


def test_reason_falls_back_when_re2_gives_no_detail() -> None:
    """An RE2 error without a message still yields a readable reason."""
    assert patterns._reason(ValueError()) == "rejected by RE2"
    assert patterns._reason(ValueError("plain text")) == "plain text"
