"""Token keys as patterns: exact names, ``*`` wildcards and ``#regex:`` keys (spec §3.10).

Channel keys, event keys and storage keys of a token share one syntax:

* **exact** — no ``*`` and no ``#regex:`` prefix; matches the identical name;
* **wildcard** — contains ``*``; each ``*`` matches zero or more of *any* character, ``.``
  included (``chat.*`` matches ``chat.a.b``);
* **regex** — ``#regex:<RE2 pattern>``, evaluated as an unanchored search, like Go's
  ``MatchString``.

Wildcards and regexes both run on RE2, never on Python's backtracking ``re``: key and name are
both attacker-chosen, and ``re`` takes seconds on a 256-character name against a key with a
handful of stars. RE2 is linear in the name and rejects look-around and back-references, which
is exactly the syntax the spec allows.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Any

import re2

from tidings.errors import TokenError

__all__ = ["REGEX_PREFIX", "Pattern", "PatternKind", "compile_key"]

REGEX_PREFIX = "#regex:"

# Keys repeat across every token an application issues, so a modest cache catches nearly all
# of them; RE2 keeps each program within its own default 8 MiB budget (bigger ones fail to compile
# and the token is refused).
_CACHE_SIZE = 1024
_QUOTE_MAX = 64


def _options(*, dot_nl: bool) -> Any:
    options = re2.Options()
    # RE2 otherwise writes every syntax error to stderr; the caller turns it into a TokenError.
    options.log_errors = False
    options.dot_nl = dot_nl
    return options


class PatternKind(enum.IntEnum):
    """The three key syntaxes, valued by specificity rank (lower = more specific)."""

    EXACT = 0
    WILDCARD = 1
    REGEX = 2


class Pattern:
    """One compiled key of a token.

    Instances are immutable and shared through the cache of :func:`compile_key`; build them with
    that function.

    Attributes:
        source: the key exactly as written in the token.
        kind: exact, wildcard or regex.
        specificity: sort key of spec §3.11, smaller = more specific: exact keys, then wildcards
            with more literal (non-``*``) characters, then regexes. Ties are left to token order.
    """

    __slots__ = ("_match", "kind", "source", "specificity")

    source: str
    kind: PatternKind
    specificity: tuple[int, int]

    def __init__(self, source: str, kind: PatternKind, match: Callable[[str], bool]) -> None:
        self.source = source
        self.kind = kind
        literal = -(len(source) - source.count("*")) if kind is PatternKind.WILDCARD else 0
        self.specificity = (int(kind), literal)
        self._match = match

    # Public methods

    @property
    def is_exact(self) -> bool:
        """True for a plain name (no ``*``, no ``#regex:`` prefix)."""
        return self.kind is PatternKind.EXACT

    def matches(self, name: str) -> bool:
        """Return True when ``name`` is selected by this key."""
        return self._match(name)

    def __repr__(self) -> str:
        return f"Pattern({self.source!r}, {self.kind.name})"


@functools.lru_cache(maxsize=_CACHE_SIZE)
def compile_key(key: str) -> Pattern | None:
    """Compile one token key.

    Args:
        key: a channel, event or storage key as written in the token.

    Returns:
        The pattern, or None for a key that can never match any name: the empty key, and keys
        starting with ``#`` without the ``#regex:`` prefix (no channel, event or storage name may
        begin with ``#``). Callers ignore such keys (spec §3.9).

    Raises:
        TokenError: the key is a ``#regex:`` RE2 rejects (bad syntax, look-around,
            back-references, too large), or a wildcard too large to compile.
    """
    if key.startswith(REGEX_PREFIX):
        expression = key[len(REGEX_PREFIX) :]
        try:
            # Go's regexp, which upstream uses, does not let '.' match a newline either.
            regexp = re2.compile(expression, _options(dot_nl=False))
        except re2.error as exc:
            raise TokenError(f"invalid regex key {_quote(key)}: {_reason(exc)}") from exc
        return Pattern(key, PatternKind.REGEX, lambda name: regexp.search(name) is not None)
    if not key or key.startswith("#"):
        return None
    if "*" not in key:
        return Pattern(key, PatternKind.EXACT, key.__eq__)
    # Consecutive stars mean the same as one; collapsing them keeps the program small.
    first, *middle, last = key.split("*")
    middle = [part for part in middle if part]
    if not middle:
        # one star (the common ``room.*``): a prefix and a suffix test, linear like RE2 and
        # several times cheaper than a call into it, which every message to a random room pays
        least = len(first) + len(last)
        return Pattern(
            key,
            PatternKind.WILDCARD,
            lambda name: len(name) >= least and name.startswith(first) and name.endswith(last),
        )
    expression = ".*".join(re2.escape(part) for part in (first, *middle, last))
    try:
        regexp = re2.compile(expression, _options(dot_nl=True))
    except re2.error as exc:
        raise TokenError(f"wildcard key {_quote(key)} is too large") from exc
    return Pattern(key, PatternKind.WILDCARD, lambda name: regexp.fullmatch(name) is not None)


# Private functions


def _reason(exc: Exception) -> str:
    # The RE2 binding raises with the C++ message as bytes; the message repeats the pattern.
    detail = exc.args[0] if exc.args else b""
    text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    return _clip(text) or "rejected by RE2"


def _quote(key: str) -> str:
    return repr(_clip(key))


def _clip(text: str) -> str:
    # Keys can be thousands of characters long; error messages quote only their start.
    return text if len(text) <= _QUOTE_MAX else text[:_QUOTE_MAX] + "…"
