"""Benchmark scheduled messages (issue 10; not a test).

1. **Lateness**: one ``tidings serve`` (SQLite or PostgreSQL store), one WebSocket subscriber
   on ``--channels`` channels. Baseline, same run: ``--count`` messages published at once
   (``POST /publish`` arrays of 1000, concurrently), latency = arrival - send. Then the same
   ``--count`` messages scheduled for one second (``at(…)``, accepted ``--lead`` seconds ahead),
   lateness = arrival - due. p50/p99/max in ms.
2. **Memory**: the server's RSS after ``--pending`` stored publishes, after ``--pending`` more
   (the baseline: what the same request handling and database page cache grow by), then after
   ``--pending`` schedules due in a day, and after ``--pending`` more. Growth per schedule would
   show as a second step as large as the first; schedules live in the store.

    python bench/schedule_bench.py [--backends sqlite,postgres] [--count 10000] [--pending 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    API_KEY,
    HOST,
    ServerProcess,
    ServerSpec,
    make_tokens,
    percentile,
    proc_rss_kib,
    tidings_command,
    tidings_env,
)
from store_bench import DEFAULT_PG, drop_schema

BATCH = 1000  # messages per POST /publish array


def at(due_s: int) -> str:
    return f"at({datetime.fromtimestamp(due_s, UTC).strftime('%Y-%m-%dT%H:%M:%S')})"


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": percentile(ordered, 50),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
    }


async def post_all(http: aiohttp.ClientSession, base: str, bodies: list[dict[str, Any]]) -> None:
    async def post(chunk: list[dict[str, Any]]) -> None:
        async with http.post(
            f"{base}/publish",
            data=orjson.dumps(chunk),
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp:
            if resp.status != 202:
                raise RuntimeError(f"publish answered {resp.status}: {(await resp.text())[:300]}")

    await asyncio.gather(*(post(bodies[i : i + BATCH]) for i in range(0, len(bodies), BATCH)))


async def receive(ws: websockets.ClientConnection, count: int) -> list[float]:
    """Arrival times (Unix ms) of the next ``count`` channel messages."""
    arrivals: list[float] = []
    async with asyncio.timeout(120):
        while len(arrivals) < count:
            frame = orjson.loads(await ws.recv())
            if not frame.get("event", "").startswith("hotsock."):
                arrivals.append(time.time() * 1000)
    return arrivals


def server_for(backend: str, workdir: Path, pg_url: str, schema: str) -> ServerProcess:
    store = (
        f"sqlite:///{workdir}/bench.db"
        if backend == "sqlite"
        else f"{pg_url}{'&' if '?' in pg_url else '?'}schema={schema}"
    )
    command = tidings_command()
    assert command is not None
    spec = ServerSpec(
        name=f"schedule-{backend}",
        cmd=[*command, "serve", "--port", "{port}"],
        env=tidings_env({"TIDINGS_STORE": store}),
    )
    return ServerProcess(spec).start()


async def lateness(backend: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    schema = f"bench_sched_{secrets.token_hex(4)}"
    server = server_for(backend, workdir, args.postgres_url, schema)
    base = f"http://{HOST}:{server.port}"
    channels = [f"bench.{n}" for n in range(args.channels)]
    try:
        [token] = make_tokens(1, channel="bench.*")
        async with (
            aiohttp.ClientSession() as http,
            websockets.connect(
                f"ws://{HOST}:{server.port}/?token={token}", max_size=None, compression=None
            ) as ws,
        ):
            await ws.recv()  # hotsock.connected
            for channel in channels:
                await ws.send(
                    orjson.dumps({"event": "hotsock.subscribe", "channel": channel}).decode()
                )
                await ws.recv()
            bodies = [
                {"channel": channels[n % len(channels)], "event": "tick", "data": n}
                for n in range(args.count)
            ]
            receiving = asyncio.create_task(receive(ws, args.count))
            sent = time.time() * 1000
            await post_all(http, base, bodies)
            immediate = [arrival - sent for arrival in await receiving]

            due_s = math.ceil(time.time() + args.lead)
            scheduled = [{**body, "scheduleExpression": at(due_s)} for body in bodies]
            accepting = time.monotonic()
            await post_all(http, base, scheduled)
            accept_s = time.monotonic() - accepting
            if time.time() >= due_s:
                raise RuntimeError(f"accepting took {accept_s:.1f} s; raise --lead")
            late = [arrival - due_s * 1000 for arrival in await receive(ws, args.count)]
    finally:
        server.stop()
        if backend == "postgres":
            await drop_schema(args.postgres_url, schema)
    return {
        "backend": backend,
        "immediate": stats(immediate),
        "scheduled": stats(late),
        "accept_s": accept_s,
    }


async def memory(backend: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    schema = f"bench_sched_{secrets.token_hex(4)}"
    server = server_for(backend, workdir, args.postgres_url, schema)
    base = f"http://{HOST}:{server.port}"
    rss: dict[str, float] = {}

    async def load(http: aiohttp.ClientSession, bodies: list[dict[str, Any]]) -> float:
        started = time.monotonic()
        for i in range(0, len(bodies), 10 * BATCH):  # 10 requests in flight at most
            await post_all(http, base, bodies[i : i + 10 * BATCH])
        return time.monotonic() - started

    try:
        async with aiohttp.ClientSession() as http:
            rss["idle"] = proc_rss_kib(server.pid) / 1024
            due = at(int(time.time()) + 86400)
            n = args.pending
            # stored, so the baseline fills the same kind of database pages and caches
            stored = [
                {"channel": f"bench.{i % 100}", "event": "tick", "data": i, "store": 3600}
                for i in range(n)
            ]
            for phase, bodies in (
                ("stored", stored),
                ("stored_again", [{**b, "data": -b["data"] - 1} for b in stored]),
                ("schedules", [{**b, "scheduleExpression": due} for b in stored]),
                (
                    "schedules_again",
                    [{**b, "data": -b["data"] - 1, "scheduleExpression": due} for b in stored],
                ),
            ):
                seconds = await load(http, bodies)
                await asyncio.sleep(2)
                rss[phase] = proc_rss_kib(server.pid) / 1024
                rss[f"{phase}_per_s"] = n / seconds
    finally:
        server.stop()
        if backend == "postgres":
            await drop_schema(args.postgres_url, schema)
    return {"backend": backend, "pending": args.pending, "rss_mib": rss}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--lead", type=float, default=8.0)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--postgres-url", default=DEFAULT_PG)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    backends = args.backends.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            workdir = Path(tmp) / f"l-{backend}"
            workdir.mkdir()
            result = await lateness(backend, args, workdir)
            print(orjson.dumps(result).decode(), flush=True)
        if not args.skip_memory:
            for backend in backends:
                workdir = Path(tmp) / f"m-{backend}"
                workdir.mkdir()
                result = await memory(backend, args, workdir)
                print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
