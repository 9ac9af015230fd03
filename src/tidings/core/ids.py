"""Identifiers: per-channel monotonic ULIDs, connection IDs and secrets (spec §2.2).

Pure: callers pass the clock reading (``now_ms``); randomness comes from ``secrets``, except for
the random part of message IDs, which are public and only need to be hard to collide.
"""

from __future__ import annotations

import base64
import random
import secrets
import string

from ulid import ULID

__all__ = [
    "ChannelIdMinter",
    "new_connection_id",
    "new_connection_secret",
    "new_ulid",
    "ulid_floor",
    "ulid_ms",
    "ulid_time_ms",
    "ulid_to_int",
    "is_ulid",
]

_RANDOM_BITS = 80
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD = frozenset(_ALPHABET)
# two base32 digits per 10 bits: 13 look-ups encode 130 bits, the 128 of a ULID and 2 zero bits
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_PAIR_SHIFTS = tuple(range(120, -1, -10))
_SECRET_ALPHABET = string.ascii_letters + string.digits


def new_ulid(now_ms: int) -> str:
    """A fresh ULID for ``now_ms`` (not ordered against other IDs of the same millisecond)."""
    return _encode((now_ms << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS))


def ulid_floor(ms: int) -> str:
    """The smallest ULID of millisecond ``ms``: ``id >= ulid_floor(t)`` iff id's time >= t."""
    return _encode(max(0, ms) << _RANDOM_BITS)


def ulid_ms(value: str) -> int:
    """The millisecond timestamp encoded in a ULID."""
    return ulid_to_int(value) >> _RANDOM_BITS


_TO_BASE32 = bytes.maketrans(
    b"0123456789ABCDEFGHJKMNPQRSTVWXYZ", b"0123456789abcdefghijklmnopqrstuv"
)


def ulid_time_ms(head: bytes) -> int:
    """The millisecond timestamp of a ULID from its first 10 characters, as bytes: a few
    hundred ns, for the fan-out's latency histogram (``ulid_ms`` parses the whole ID)."""
    return int(head.translate(_TO_BASE32), 32)


def ulid_to_int(value: str) -> int:
    return int(ULID.from_str(value))


def is_ulid(value: object) -> bool:
    """True for a 26-character upper-case Crockford base32 ULID that fits 128 bits."""
    return (
        isinstance(value, str)
        and len(value) == 26
        and value[0] in "01234567"
        and all(ch in _CROCKFORD for ch in value)
    )


def _encode(value: int) -> str:
    if value < 0 or value >> 128:
        raise ValueError(f"{value} does not fit a ULID's 128 bits")
    return "".join([_PAIRS[(value >> s) & 1023] for s in _PAIR_SHIFTS])


class ChannelIdMinter:
    """Mints strictly increasing ULIDs per channel.

    Within a millisecond the random part is incremented; a clock that steps backwards reuses the
    last timestamp, so order never inverts. State for a channel is forgotten once its last ID is
    older than ``forget_after_ms`` (a later clock reading alone then guarantees the order).
    """

    def __init__(self, *, forget_after_ms: int = 60_000, max_channels: int = 100_000) -> None:
        self._last: dict[str, int] = {}  # channel -> last minted ULID as an int
        # message IDs are public, so their random part needs no CSPRNG: a seeded Mersenne
        # Twister draws in a tenth of the time of secrets.randbits (a getrandom() call each)
        self._random = random.Random(secrets.randbits(128))
        self._forget_after_ms = forget_after_ms
        self._max_channels = max_channels

    # Public methods

    def mint(self, channel: str, now_ms: int) -> str:
        last = self._last.get(channel)
        candidate = (now_ms << _RANDOM_BITS) | self._random.getrandbits(_RANDOM_BITS - 1)
        if last is not None and candidate <= last:
            candidate = last + 1 + self._random.getrandbits(16)
        if len(self._last) >= self._max_channels and channel not in self._last:
            self._forget(now_ms)
        self._last[channel] = candidate
        return _encode(candidate)

    def observe(self, channel: str, ulid: str) -> None:
        """Raise the channel's floor to ``ulid`` (e.g. an eager ID minted elsewhere)."""
        value = ulid_to_int(ulid)
        if value > self._last.get(channel, -1):
            self._last[channel] = value

    # Private methods

    def _forget(self, now_ms: int) -> None:
        horizon = (now_ms - self._forget_after_ms) << _RANDOM_BITS
        self._last = {ch: v for ch, v in self._last.items() if v >= horizon}


def new_connection_id() -> str:
    """11 random bytes, URL-safe base64 with padding: 16 characters ending in ``=``."""
    return base64.urlsafe_b64encode(secrets.token_bytes(11)).decode("ascii")


def new_connection_secret() -> str:
    """20 alphanumeric characters from a CSPRNG (62**20, about 119 bits)."""
    # one 128-bit draw cut into base-62 digits (20 calls to secrets.choice cost a visible share
    # of a handshake); 2**128 / 62**20 > 470, so no secret is more than 0.3 % likelier than another
    value = secrets.randbits(128)
    digits = []
    for _ in range(20):
        value, digit = divmod(value, 62)
        digits.append(_SECRET_ALPHABET[digit])
    return "".join(digits)
