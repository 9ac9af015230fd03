"""Benchmark reactions (issue 9; not a test).

1. **``listMessages`` with ``expandReactions``**: on one channel holding ``--channel-rows``
   stored messages (bulk-loaded like ``store_bench.py``), ``--pages`` 100-message pages at random
   positions where every message has ``--per-message`` reactions from different users. One query
   is what the hub does for a page: ``list_messages`` + ``list_reactions`` (or
   ``reaction_counts`` without ``expandReactions``) + building the JSON body. SQLite and
   PostgreSQL.
2. **Reaction throughput**: one ``tidings serve`` (SQLite store), N HTTP clients; in the same run,
   stored plain publishes (``store: 3600``) and server reactions (``POST /publish`` with
   ``hotsock.messageReaction``, each a real add), 202s per second.

    python bench/reactions_bench.py [--backends sqlite,postgres] [--channel-rows 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    API_KEY,
    HOST,
    ServerProcess,
    ServerSpec,
    proc_cpu_seconds,
    raise_nofile,
    tidings_command,
    tidings_env,
)
from store_bench import (
    COLUMNS,
    DEFAULT_PG,
    T0,
    TARGET,
    chunks,
    drop_schema,
    generate,
    log,
    percentile,
)

from tidings.core.reactions import counts_json, expanded_json
from tidings.hub.history import history_item
from tidings.store.base import Store
from tidings.store.postgres import PostgresStore
from tidings.store.sqlite import SqliteStore

REACTION_COLUMNS = (
    "id",
    "channel",
    "message_id",
    "reaction",
    "uid",
    "umd",
    "created_ms",
    "expires_ms",
    "trigger",
    "request_id",
    "connection_id",
    "source_ip",
    "user_agent",
)
VALUES = ("👍", "❤️", "😂", "🎉", "👀")


def data_set(
    channel_rows: int, pages: int, per_message: int, seed: int = 5
) -> tuple[list[tuple[Any, ...]], list[str], list[tuple[Any, ...]]]:
    """(message rows, one cursor per reacted page, reaction rows). Pages start at random
    positions; each of their 100 messages gets ``per_message`` reactions from distinct users."""
    messages = list(generate(channel_rows, channel_rows, 2))
    rng = random.Random(seed)
    # pages never overlap, so no (message, uid, value) is reacted twice
    starts = sorted(
        200 * k + rng.randrange(1, 100) for k in rng.sample(range(channel_rows // 200 - 1), pages)
    )
    cursors = []
    reactions = []
    n = 0
    for start in starts:
        cursors.append(messages[start - 1][0])  # `after` this ID: the page begins at `start`
        for row in messages[start : start + 100]:
            for u in range(per_message):
                n += 1
                created = row[6] + 1 + u
                reactions.append(
                    (
                        f"{n:026d}",  # creation order is all that matters here
                        TARGET,
                        row[0],
                        VALUES[u % len(VALUES)],
                        f"user-{u}",
                        '{"name":"bench user"}' if u % 2 else "null",
                        created,
                        row[7],
                        "client.websocket",
                        None,
                        None,
                        None,
                        None,
                    )
                )
    return messages, cursors, reactions


async def load_sqlite(path: Path, messages: list[Any], reactions: list[Any]) -> None:
    store = SqliteStore(path)
    await store.open()
    await store.aclose()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")  # loader only; the store reopens it in WAL
    conn.execute("PRAGMA synchronous = OFF")
    for table, columns, rows in (
        ("messages", COLUMNS, messages),
        ("reactions", REACTION_COLUMNS, reactions),
    ):
        names = ", ".join(f'"{c}"' for c in columns)
        sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
        for chunk in chunks(iter(rows), 200_000):
            conn.execute("BEGIN")
            conn.executemany(sql, chunk)
            conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("ANALYZE")
    conn.close()


async def load_postgres(url: str, schema: str, messages: list[Any], reactions: list[Any]) -> None:
    import asyncpg

    store = PostgresStore(url, schema=schema)
    await store.open()
    await store.aclose()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET synchronous_commit = off")
        for table, columns, rows in (
            ("tidings_messages", COLUMNS, messages),
            ("tidings_reactions", REACTION_COLUMNS, reactions),
        ):
            for chunk in chunks(iter(rows), 200_000):
                await conn.copy_records_to_table(
                    table, schema_name=schema, records=chunk, columns=columns
                )
            await conn.execute(f'VACUUM ANALYZE "{schema}"."{table}"')
    finally:
        await conn.close()


async def page_latency(
    store: Store, cursors: list[str], queries: int, expand: bool, now: int
) -> dict[str, float]:
    rng = random.Random(3)

    async def one() -> tuple[float, int, int]:
        cursor = rng.choice(cursors)
        started = time.perf_counter()
        records = await store.list_messages(TARGET, now_ms=now, after=cursor, limit=100)
        ids = [r.id for r in records]
        if expand:
            found = await store.list_reactions(TARGET, ids, now_ms=now)
            bodies = {
                m: expanded_json((r.reaction, r.uid, r.umd) for r in items)
                for m, items in found.items()
            }
        else:
            counted = await store.reaction_counts(TARGET, ids, now_ms=now)
            bodies = {m: counts_json(c) for m, c in counted.items()}
        body = b",".join(history_item(r, bodies.get(r.id, b"{}")) for r in records)
        return time.perf_counter() - started, len(records), len(body)

    for _ in range(100):
        await one()
    samples = []
    sizes = []
    for _ in range(queries):
        elapsed, count, _ = await one()
        samples.append(elapsed * 1000)
        sizes.append(count)
    samples.sort()
    return {
        "p50": percentile(samples, 50),
        "p99": percentile(samples, 99),
        "max": samples[-1],
        "full": sum(1 for s in sizes if s == 100) / len(sizes),
    }


async def latency_part(args: argparse.Namespace) -> list[str]:
    log(f"generating {args.channel_rows:,} messages, {args.pages} reacted pages ...")
    messages, cursors, reactions = data_set(args.channel_rows, args.pages, args.per_message)
    now = T0 + args.channel_rows + 1
    rows = []
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory(prefix="tidings-reactions-", dir=args.dir) as scratch:
            path = Path(scratch) / "r.db"
            log("loading SQLite ...")
            await load_sqlite(path, messages, reactions)
            store: Store = SqliteStore(path)
            await store.open()
            try:
                for expand in (True, False):
                    r = await page_latency(store, cursors, args.queries, expand, now)
                    rows.append(("SQLite", expand, r))
            finally:
                await store.aclose()
    if "postgres" in backends:
        schema = f"tidings_bench_r_{secrets.token_hex(4)}"
        try:
            log("loading PostgreSQL ...")
            await load_postgres(args.postgres_url, schema, messages, reactions)
            store = PostgresStore(args.postgres_url, schema=schema)
            await store.open()
            try:
                for expand in (True, False):
                    r = await page_latency(store, cursors, args.queries, expand, now)
                    rows.append(("PostgreSQL", expand, r))
            finally:
                await store.aclose()
        finally:
            await drop_schema(args.postgres_url, schema)
    out = [
        "## listMessages page with reactions",
        "",
        f"Channel of {args.channel_rows:,} stored messages; {args.pages} pages at random "
        f"positions where each of the 100 messages has {args.per_message} reactions from "
        f"different users ({len(reactions):,} reactions); {args.queries} sequential queries "
        "after 100 warm-up ones; a query = messages + reactions + JSON body.",
        "",
        "| backend | expandReactions | p50 ms | p99 ms | max ms | full pages |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, expand, r in rows:
        out.append(
            f"| {name} | {str(expand).lower()} | {r['p50']:.2f} | **{r['p99']:.2f}** | "
            f"{r['max']:.2f} | {r['full']:.0%} |"
        )
    return out


async def throughput_part(args: argparse.Namespace) -> list[str]:
    raise_nofile()
    url_path = "/publish"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    with tempfile.TemporaryDirectory(prefix="tidings-reactions-tp-", dir=args.dir) as scratch:
        cmd = tidings_command()
        assert cmd is not None
        spec = ServerSpec(
            name="tidings-sqlite",
            cmd=[*cmd, "serve", "--host", HOST, "--port", "{port}"],
            env=tidings_env({"TIDINGS_STORE": f"sqlite:///{scratch}/tp.db"}),
            publish="http",
            auth=True,
        )
        server = ServerProcess(spec).start()
        base = f"http://{HOST}:{server.port}"
        rows = []
        try:
            connector = aiohttp.TCPConnector(limit=args.clients)
            async with aiohttp.ClientSession(connector=connector) as session:
                targets = []
                for c in range(8):
                    body = {
                        "channel": f"bench-{c}",
                        "event": "chat",
                        "data": "target",
                        "store": 3600,
                        "eagerIdGeneration": True,
                    }
                    async with session.post(
                        base + url_path, data=orjson.dumps(body), headers=headers
                    ) as resp:
                        targets.append((await resp.json())["id"])
                for kind in ("publish", "reaction"):
                    cpu0 = proc_cpu_seconds(server.pid)
                    rate, p50, p99, errors = await _load(
                        session, base + url_path, headers, kind, targets, args
                    )
                    rows.append((kind, rate, p50, p99, errors, proc_cpu_seconds(server.pid) - cpu0))
        finally:
            server.stop()
    out = [
        "## Reaction throughput beside plain publishes",
        "",
        f"One `tidings serve` (SQLite, `synchronous=FULL`), {args.clients} HTTP clients, "
        f"{args.duration:.0f} s each, 8 channels; stored publishes (`store: 3600`) then server "
        "reactions (each a new (uid, value) on a stored message), same run.",
        "",
        "| request | 202/s | p50 ms | p99 ms | errors | server CPU s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, rate, p50, p99, errors, cpu in rows:
        label = "stored publish" if kind == "publish" else "reaction (add)"
        out.append(f"| {label} | **{rate:,.0f}** | {p50:.2f} | {p99:.2f} | {errors} | {cpu:.1f} |")
    return out


async def _load(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    kind: str,
    targets: list[str],
    args: argparse.Namespace,
) -> tuple[float, float, float, int]:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + args.duration

    async def client(n: int) -> None:
        nonlocal errors
        i = 0
        while time.monotonic() < stop:
            channel = n % 8
            if kind == "publish":
                body: dict[str, Any] = {
                    "channel": f"bench-{channel}",
                    "event": "chat",
                    "data": {"n": i, "pad": "x" * 80},
                    "store": 3600,
                }
            else:
                body = {
                    "channel": f"bench-{channel}",
                    "event": "hotsock.messageReaction",
                    "data": {"messageId": targets[channel], "reaction": f"r{i}", "action": "add"},
                    "uid": f"client-{n}",
                }
            t0 = time.perf_counter()
            async with session.post(url, data=orjson.dumps(body), headers=headers) as resp:
                await resp.read()
                if resp.status == 202:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
            i += 1

    started = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(args.clients)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return (
        len(latencies) / elapsed,
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
        errors,
    )


async def amain(args: argparse.Namespace) -> None:
    args.dir.mkdir(parents=True, exist_ok=True)
    out = [
        "# Reactions benchmark",
        "",
        f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"SQLite {sqlite3.sqlite_version}.",
        "",
    ]
    if not args.skip_latency:
        out += await latency_part(args) + [""]
    if not args.skip_throughput:
        out += await throughput_part(args)
    print("\n".join(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--channel-rows", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--per-message", type=int, default=10)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/tidings-bench"))
    parser.add_argument("--postgres-url", default=DEFAULT_PG)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
