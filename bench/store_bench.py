"""Benchmark the message stores (not a test).

1. **Stored-publish throughput**: N concurrent appenders, one ~100-byte record per ``append()``
   call, on a fresh store: records acknowledged (durable) per second.
2. **``list_messages`` latency**: 100-message pages at random positions, both directions, on one
   channel holding ``--channel-rows`` records among ``--total-rows`` over ``--channels``
   channels. The data set is bulk-loaded outside the store (big transactions, ``synchronous=OFF``
   for SQLite and ``COPY`` for PostgreSQL, during the load only), interleaved in time order like
   real traffic, then queried through the store's public API.

Results are printed as markdown tables on stdout; progress goes to stderr. Example::

    python bench/store_bench.py --backends sqlite,postgres \\
        --total-rows 10000000 --channel-rows 1000000 --dir /tmp/tidings-bench

The SQLite data set is kept in ``--dir`` and reused by later runs with the same sizes (delete the
file, or pass ``--rebuild``, to load it again).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import secrets
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tidings.core.ids import ChannelIdMinter
from tidings.store.base import MessageRecord, Store
from tidings.store.postgres import PostgresStore
from tidings.store.sqlite import SqliteStore

T0 = 1_700_000_000_000
TARGET = "bench.big"
DEFAULT_PG = os.environ.get(
    "TIDINGS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
COLUMNS = (
    "id",
    "channel",
    "event",
    "data",
    "uid",
    "umd",
    "created_ms",
    "expires_ms",
    "trigger",
    "connection_id",
    "source_ip",
    "user_agent",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def payload(n: int) -> str:
    """About 100 bytes of JSON text."""
    text = (
        f'{{"text":"message number {n} lorem ipsum dolor sit amet consectetur","n":{n},"ok":true}}'
    )
    return text + " " * max(0, 100 - len(text))


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


# 1. Throughput


async def throughput(store: Store, appenders: int, messages: int) -> tuple[float, float]:
    """(records per second, mean records per commit when known)."""
    minter = ChannelIdMinter()
    counter = iter(range(messages))
    commits_before = store.commits if isinstance(store, SqliteStore) else 0

    async def appender(worker: int) -> None:
        channel = f"bench.tp.{worker % 100}"
        for n in counter:  # shared iterator: workers split the total
            now = int(time.time() * 1000)
            record = MessageRecord(
                id=minter.mint(channel, now),
                channel=channel,
                event="chat",
                data=payload(n),
                uid=f"user-{worker}",
                umd="null",
                created_ms=now,
                expires_ms=None,
                trigger="server.http",
            )
            await store.append([record])

    started = time.perf_counter()
    await asyncio.gather(*(appender(w) for w in range(appenders)))
    elapsed = time.perf_counter() - started
    per_commit = 0.0
    if isinstance(store, SqliteStore):
        per_commit = messages / max(1, store.commits - commits_before)
    return messages / elapsed, per_commit


async def run_throughput(
    name: str, make: Callable[[], Store], levels: list[int], messages: int
) -> list[tuple[str, int, float, float]]:
    rows = []
    for appenders in levels:
        store = make()
        await store.open()
        try:
            count = messages if appenders > 1 else max(500, messages // 10)
            rate, per_commit = await throughput(store, appenders, count)
        finally:
            await store.aclose()
        log(f"  {name}: {appenders} appenders -> {rate:,.0f} msg/s")
        rows.append((name, appenders, rate, per_commit))
    return rows


# 2. Data set


def generate(
    total: int, channel_rows: int, channels: int, seed: int = 7
) -> Iterator[tuple[Any, ...]]:
    """Rows in publish order: one message per millisecond on a random channel; the target
    channel gets ``channel_rows`` of them, the other ``channels - 1`` share the rest."""
    rng = random.Random(seed)
    others = [f"bench.ch.{c:04d}" for c in range(channels - 1)]
    target_share = channel_rows / total
    remaining_target = channel_rows
    getrandbits = rng.getrandbits
    rand = rng.random
    data = payload(0)
    for i in range(total):
        left = total - i
        if remaining_target and (remaining_target >= left or rand() < target_share):
            channel = TARGET
            remaining_target -= 1
        else:
            channel = others[int(rand() * len(others))]
        ms = T0 + i
        value = (ms << 80) | getrandbits(80)
        expires = ms + 10 * 365 * 86_400_000 if i % 10 == 0 else None  # a tenth have a TTL
        yield (
            _ulid(value),
            channel,
            "chat",
            data,
            "user-1",
            "null",
            ms,
            expires,
            "server.http",
            None,
            None,
            None,
        )


_TO_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def _ulid(value: int) -> str:
    # Same text as str(ULID.from_int(value)), fast enough for millions of rows: 160 bits with
    # the 130-bit ULID (2 zero bits + 128) on top, base32 in C, Crockford alphabet by translate.
    return (
        base64.b32encode((value << 30).to_bytes(20, "big"))[:26].translate(_TO_CROCKFORD).decode()
    )


def chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def load_sqlite(path: Path, total: int, channel_rows: int, channels: int) -> float:
    """Create the schema through the store, then bulk-load; return seconds spent."""
    started = time.perf_counter()
    store = SqliteStore(path)
    await store.open()  # creates the real schema
    await store.aclose()
    conn = sqlite3.connect(path, isolation_level=None)
    # Loader only: no journal and no fsync. The file goes back to WAL before the store reads it.
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1048576")  # 1 GiB
    names = ", ".join(f'"{c}"' for c in COLUMNS)
    sql = f"INSERT INTO messages ({names}) VALUES ({', '.join('?' * len(COLUMNS))})"
    loaded = 0
    for chunk in chunks(generate(total, channel_rows, channels), 200_000):
        conn.execute("BEGIN")
        conn.executemany(sql, chunk)
        conn.execute("COMMIT")
        loaded += len(chunk)
        if loaded % 1_000_000 < 200_000:
            log(f"  sqlite load: {loaded:,} rows, {time.perf_counter() - started:.0f} s")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - started


async def load_postgres(
    url: str, schema: str, total: int, channel_rows: int, channels: int
) -> float:
    import asyncpg

    started = time.perf_counter()
    store = PostgresStore(url, schema=schema)
    await store.open()
    await store.aclose()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET synchronous_commit = off")
        loaded = 0
        for chunk in chunks(generate(total, channel_rows, channels), 200_000):
            await conn.copy_records_to_table(
                "tidings_messages", schema_name=schema, records=chunk, columns=COLUMNS
            )
            loaded += len(chunk)
            if loaded % 1_000_000 < 200_000:
                log(f"  postgres load: {loaded:,} rows, {time.perf_counter() - started:.0f} s")
        await conn.execute(f'VACUUM ANALYZE "{schema}"."tidings_messages"')
    finally:
        await conn.close()
    return time.perf_counter() - started


# 3. Latency


async def latency(
    store: Store, total: int, queries: int, concurrency: int, seed: int = 11
) -> dict[str, Any]:
    rng = random.Random(seed)
    now = T0 + total + 1
    span = total

    def cursor() -> tuple[str, bool]:
        # A random instant in the channel's history; as a cursor it sits between two IDs.
        ms = T0 + int(rng.random() * span)
        return _ulid(ms << 80), rng.random() < 0.5

    async def one() -> tuple[float, int]:
        position, reverse = cursor()
        started = time.perf_counter()
        if reverse:
            page = await store.list_messages(TARGET, now_ms=now, before=position, reverse=True)
        else:
            page = await store.list_messages(TARGET, now_ms=now, after=position)
        return time.perf_counter() - started, len(page)

    for _ in range(min(200, queries)):  # warm-up: connections, statement caches
        await one()
    samples: list[float] = []
    sizes: list[int] = []
    for _ in range(queries):
        elapsed, size = await one()
        samples.append(elapsed)
        sizes.append(size)
    # Throughput with several concurrent readers.
    done = 0
    started = time.perf_counter()

    async def reader() -> None:
        nonlocal done
        while done < queries:
            done += 1
            await one()

    await asyncio.gather(*(reader() for _ in range(concurrency)))
    qps = queries / (time.perf_counter() - started)
    ms = [s * 1000 for s in samples]
    return {
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "max": max(ms),
        "mean": statistics.fmean(ms),
        "full_pages": sum(1 for s in sizes if s == 100) / len(sizes),
        "qps": qps,
    }


# Main


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--total-rows", type=int, default=10_000_000)
    parser.add_argument("--channel-rows", type=int, default=1_000_000)
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--readers", type=int, default=8, help="concurrent readers for q/s")
    parser.add_argument("--appenders", default="1,16,128,512")
    parser.add_argument("--publish-messages", type=int, default=20_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/tidings-bench"))
    parser.add_argument("--postgres-url", default=DEFAULT_PG)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    if not 0 < args.channel_rows <= args.total_rows or args.channels < 2:
        parser.error("need 0 < --channel-rows <= --total-rows and --channels >= 2")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    levels = [int(n) for n in args.appenders.split(",")]
    args.dir.mkdir(parents=True, exist_ok=True)

    postgres_ok = False
    if "postgres" in backends:
        import asyncpg

        try:
            conn = await asyncpg.connect(args.postgres_url, timeout=3)
            await conn.close()
            postgres_ok = True
        except Exception as exc:
            log(f"PostgreSQL at {args.postgres_url} unreachable ({exc}); skipping it")

    print(
        f"# Store benchmark\n\nMachine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"SQLite {sqlite3.sqlite_version}.\n"
    )

    if not args.skip_throughput:
        rows = []
        if "sqlite" in backends:
            tp_dir = args.dir / "throughput"
            shutil.rmtree(tp_dir, ignore_errors=True)
            tp_dir.mkdir()
            counter = iter(range(1_000_000))
            rows += await run_throughput(
                "SQLite (WAL, synchronous=FULL)",
                lambda: SqliteStore(tp_dir / f"tp{next(counter)}.db"),
                levels,
                args.publish_messages,
            )
            shutil.rmtree(tp_dir, ignore_errors=True)
        if postgres_ok:
            schema = f"tidings_bench_tp_{secrets.token_hex(4)}"
            try:
                rows += await run_throughput(
                    "PostgreSQL (synchronous_commit default)",
                    lambda: PostgresStore(args.postgres_url, schema=schema),
                    levels,
                    args.publish_messages,
                )
            finally:
                await drop_schema(args.postgres_url, schema)
        print("## Stored-publish throughput (one ~100-byte record per append call)\n")
        print("| Backend | Concurrent appenders | Records/s (durable) | Records per commit |")
        print("|---|---:|---:|---:|")
        for name, appenders, rate, per_commit in rows:
            batch = f"{per_commit:.1f}" if per_commit else "n/a"
            print(f"| {name} | {appenders} | {rate:,.0f} | {batch} |")
        print()

    if not args.skip_latency:
        results = []
        size = (
            f"{args.total_rows:,} rows over {args.channels:,} channels; "
            f"queried channel holds {args.channel_rows:,}"
        )
        if "sqlite" in backends:
            path = args.dir / f"big-{args.total_rows}-{args.channel_rows}-{args.channels}.db"
            if args.rebuild or not path.exists():
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
                log(f"loading {path} ...")
                seconds = await load_sqlite(path, args.total_rows, args.channel_rows, args.channels)
                log(f"  loaded in {seconds:.0f} s")
            else:
                log(f"reusing {path}")
            file_mb = path.stat().st_size / 1e6
            store: Store = SqliteStore(path)
            await store.open()
            try:
                result = await latency(store, args.total_rows, args.queries, args.readers)
            finally:
                await store.aclose()
            results.append((f"SQLite ({file_mb:,.0f} MB file)", result))
        if postgres_ok:
            schema = f"tidings_bench_{secrets.token_hex(4)}"
            try:
                log(f"loading PostgreSQL schema {schema} ...")
                seconds = await load_postgres(
                    args.postgres_url, schema, args.total_rows, args.channel_rows, args.channels
                )
                log(f"  loaded in {seconds:.0f} s")
                store = PostgresStore(args.postgres_url, schema=schema)
                await store.open()
                try:
                    result = await latency(store, args.total_rows, args.queries, args.readers)
                finally:
                    await store.aclose()
                results.append(("PostgreSQL", result))
            finally:
                await drop_schema(args.postgres_url, schema)
        print(
            f"## list_messages latency, 100-message pages\n\nData set: {size}. "
            f"{args.queries:,} sequential queries at random positions, half `after` "
            f"(ascending), half `before` + `reverse`, after 200 warm-up queries; "
            f"q/s with {args.readers} concurrent readers. Page cache warm.\n"
        )
        print("| Backend | p50 ms | p99 ms | max ms | mean ms | full pages | q/s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, r in results:
            print(
                f"| {name} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} | "
                f"{r['mean']:.2f} | {r['full_pages']:.1%} | {r['qps']:,.0f} |"
            )
        print()


async def drop_schema(url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
