"""What every tidings table in PostgreSQL shares: the migration lock, the identifier rule for
names spliced into SQL, and the sorting of driver errors into outages and bugs."""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from tidings.errors import ConfigError, StoreError, StoreUnavailable

__all__ = [
    "MIGRATION_LOCK_KEY",
    "begin_migration",
    "check_identifiers",
    "decode_text",
    "encode_text",
    "map_error",
    "reencode_sql",
]

# One lock for every tidings migration in the database ("tidings\0" as a big-endian int8), the
# store's and the webhook outbox's alike: migrations are rare and short, and one key also
# serializes CREATE SCHEMA across prefixes.
MIGRATION_LOCK_KEY: Final = int.from_bytes(b"tidings\x00", "big")

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


async def begin_migration(conn: Any, schema: str | None) -> None:
    """Take the migration lock inside ``conn``'s open transaction and create ``schema`` if it
    is missing. The lock is held until commit, so concurrent openers wait here and then see the
    finished tables."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
    if schema is not None:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


# PostgreSQL text cannot hold U+0000, which is legal in a JSON string (a signed uid may have
# it). Such a string, and one that begins with the marker itself, is stored as the marker and
# its JSON text; every other string as itself. Injective, so equality and keys still work.
_MARKER = "\x01"


def encode_text(value: str | None) -> str | None:
    """The form of ``value`` a text column can hold (see ``decode_text``)."""
    if value is None or ("\x00" not in value and not value.startswith(_MARKER)):
        return value
    return _MARKER + orjson.dumps(value).decode()


def decode_text(value: str) -> str:
    """The string ``encode_text`` was given."""
    if not value.startswith(_MARKER):
        return value
    decoded: str = orjson.loads(value[1:])
    return decoded


def reencode_sql(table: str, column: str) -> str:
    """The migration that brings rows written before ``encode_text`` existed to its form: only
    values that begin with the marker change (none could hold U+0000)."""
    return (
        f"UPDATE {table} SET {column} = E'\\x01' || to_json({column})::text "
        f"WHERE starts_with({column}, E'\\x01')"
    )


def check_identifiers(**names: str | None) -> None:
    """Refuse names that are spliced into SQL unless they are lower-case SQL identifiers (an
    empty or None name is allowed: it means the default)."""
    for what, name in names.items():
        if name and not _IDENTIFIER.fullmatch(name):
            raise ConfigError(
                f"PostgreSQL {what} {name!r} must be lower-case letters, digits and "
                "underscores, not starting with a digit."
            )


def map_error(exc: BaseException, action: str) -> StoreError:
    """Sort a driver error into "cannot reach the server now" and "anything else"."""
    if isinstance(exc, StoreError):
        return exc
    import asyncpg

    message = f"PostgreSQL {action} failed: {type(exc).__name__}: {exc}"
    unavailable = (
        OSError,  # refused, unreachable, DNS failure, reset
        TimeoutError,  # connect_timeout or command_timeout
        asyncpg.PostgresConnectionError,  # class 08, incl. ConnectionDoesNotExistError
        asyncpg.CannotConnectNowError,  # starting up or shutting down
        asyncpg.AdminShutdownError,
        asyncpg.CrashShutdownError,
        asyncpg.TooManyConnectionsError,
        asyncpg.ReadOnlySQLTransactionError,  # a failover left us on a standby
    )
    # InternalClientError: what asyncpg raises when the server kills a connection in the middle
    # of a message exchange; the pool discards that connection, so a retry can succeed.
    if isinstance(exc, unavailable) or isinstance(exc, asyncpg.InternalClientError):
        return StoreUnavailable(message)
    # A closed pool or connection is an InterfaceError; argument errors are too, but they also
    # subclass ValueError and are our bug, not an outage.
    if isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, ValueError):
        return StoreUnavailable(message)
    return StoreError(message)
