"""Real services for integration tests: is PostgreSQL or Redis here, a unique PostgreSQL schema,
and a private ``redis-server``.

PostgreSQL is ``TIDINGS_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``), Redis ``TIDINGS_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``). A test that needs one that is unreachable is skipped with the
reason, unless ``TIDINGS_REQUIRE_SERVICES=1``, which turns that into a failure. Each service is
probed once per session.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import pytest
from tests.conftest import MS

POSTGRES_URL = os.environ.get(
    "TIDINGS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TIDINGS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("TIDINGS_REQUIRE_SERVICES") == "1"

# Availability

_unreachable: dict[str, str] = {}  # URL -> "" when reachable, else why not


def unavailable(message: str, hint: str = "") -> NoReturn:
    """Skip the test with ``message`` (and ``hint``), or fail it when
    ``TIDINGS_REQUIRE_SERVICES=1``."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} and TIDINGS_REQUIRE_SERVICES=1")
    pytest.skip(f"{message}; {hint}" if hint else message)


async def _probe_postgres() -> str:
    import asyncpg

    try:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
    except Exception as exc:  # any failure means "cannot run these tests here"
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return ""


async def _probe_redis() -> str:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # any failure means "cannot run these tests here"
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return ""


async def _require(service: str, url: str, env: str, probe: Callable[[], Awaitable[str]]) -> None:
    if url not in _unreachable:
        _unreachable[url] = await probe()
    if reason := _unreachable[url]:
        unavailable(
            f"{service} at {url} is unreachable ({reason})", f"start it or point {env} at one"
        )


async def require_postgres() -> None:
    """Skip (or fail) the calling test unless PostgreSQL at ``POSTGRES_URL`` answers."""
    await _require("PostgreSQL", POSTGRES_URL, "TIDINGS_TEST_POSTGRES_URL", _probe_postgres)


async def require_redis() -> None:
    """Skip (or fail) the calling test unless Redis at ``REDIS_URL`` answers."""
    await _require("Redis", REDIS_URL, "TIDINGS_TEST_REDIS_URL", _probe_redis)


# PostgreSQL


async def postgres_execute(sql: str) -> None:
    """Run one statement on ``POSTGRES_URL`` on a connection of its own."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def postgres_schema(label: str = "") -> AsyncIterator[str]:
    """After ``require_postgres()``: a unique schema name ``tidings_test_<label><hex>`` (the
    code under test creates it), dropped with everything in it afterwards."""
    await require_postgres()
    name = f"tidings_test_{label}{secrets.token_hex(6)}"
    try:
        yield name
    finally:
        await postgres_execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


async def drop_store_tables(table_prefix: str) -> None:
    """Drop the tables a ``PostgresStore`` with ``table_prefix`` made in the default schema."""
    await postgres_execute(
        f'DROP TABLE IF EXISTS "{table_prefix}messages", "{table_prefix}reactions", '
        f'"{table_prefix}schedules", "{table_prefix}revocations", '
        f'"{table_prefix}storage", "{table_prefix}dedup", "{table_prefix}schema_version"'
    )


# A private redis-server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` of our own on a fixed free port, to stop, pause and restart (the
    machine's shared Redis must never be stopped). ``start()`` after ``stop()`` restarts it on
    the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(10 * MS)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise AssertionError(f"redis-server did not listen on {self.port}")

    def stop(self) -> None:
        """Kill it (no clean shutdown) and reap the process."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        self.proc = None

    async def command(self, *args: str) -> Any:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url, socket_timeout=5)
        try:
            return await client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()


@asynccontextmanager
async def redis_server() -> AsyncIterator[RedisServer]:
    """A started private ``RedisServer``, stopped afterwards; skipped (or failed) when
    ``redis-server`` is not on PATH."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is unavailable (not on PATH)")
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        server.stop()
