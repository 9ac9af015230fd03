"""Benchmark channel storage writes beside plain publishes (issue 10; not a test).

One ``tidings serve`` (SQLite store by default), ``--observers`` WebSocket subscribers on one
channel, all allowed to ``observe`` every storage key. ``--clients`` HTTP clients then send, in
alternating rounds of ``--duration`` seconds each (so the machine's background load hits both
alike):

* **plain publish**: ``POST /publish`` of an unstored message on that channel (fan-out to every
  subscriber);
* **storage write**: ``POST /publish`` with ``event: hotsock.channelStorageSet``, a changed value
  on one of ``--keys`` keys (store round trip in the channel's lane, then fan-out to every
  observer).

Reported: accepted requests per second, p50/p99 latency, frames the observers received per
second, server CPU seconds, and the ratio of storage writes to plain publishes.

    python bench/storage_bench.py [--store sqlite|memory|postgres] [--observers 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
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
    SIGNING_SECRET,
    ServerProcess,
    ServerSpec,
    percentile,
    proc_cpu_seconds,
    raise_nofile,
    tidings_command,
    tidings_env,
)

CHANNEL = "bench.lobby"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def observer_token(n: int) -> str:
    from joserfc import jwt
    from joserfc.jwk import OctKey

    claims = {
        "scope": "connect",
        "exp": int(time.time()) + 3600,
        "jti": f"obs{os.getpid()}-{n}",
        "channels": {CHANNEL: {"subscribe": True, "storage": {"*": {"observe": True}}}},
    }
    return jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, OctKey.import_key(SIGNING_SECRET))


class Observers:
    """``count`` subscribed WebSocket clients counting the frames they receive."""

    def __init__(self) -> None:
        self.frames = 0
        self._sockets: list[aiohttp.ClientWebSocketResponse] = []
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, session: aiohttp.ClientSession, port: int, count: int) -> None:
        for n in range(count):
            ws = await session.ws_connect(
                f"ws://{HOST}:{port}/?token={observer_token(n)}", max_msg_size=0
            )
            await ws.receive()  # hotsock.connected
            await ws.send_str(
                orjson.dumps({"event": "hotsock.subscribe", "channel": CHANNEL}).decode()
            )
            subscribed = orjson.loads((await ws.receive()).data)
            assert subscribed["event"] == "hotsock.subscribed", subscribed
            self._sockets.append(ws)
            self._readers.append(asyncio.create_task(self._read(ws)))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in ws:
            self.frames += 1

    async def aclose(self) -> None:
        for ws in self._sockets:
            await ws.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def load(
    session: aiohttp.ClientSession, url: str, kind: str, args: argparse.Namespace, round_: int
) -> tuple[float, float, float, int]:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + args.duration

    async def client(n: int) -> None:
        nonlocal errors
        i = 0
        while time.monotonic() < stop:
            value = {"n": i, "client": n, "round": round_, "pad": "x" * 80}
            if kind == "publish":
                body: dict[str, Any] = {"channel": CHANNEL, "event": "tick", "data": value}
            else:  # every value differs from the stored one, so each write fans out
                body = {
                    "channel": CHANNEL,
                    "event": "hotsock.channelStorageSet",
                    "key": f"key-{(n * 7919 + i) % args.keys}",
                    "data": value,
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
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="tidings-storage-bench-") as scratch:
        schema = f"tidings_bench_s_{secrets.token_hex(4)}"
        store = {
            "sqlite": f"sqlite:///{scratch}/s.db",
            "memory": "memory://",
            "postgres": f"{args.postgres_url}?schema={schema}",
        }[args.store]
        cmd = tidings_command()
        assert cmd is not None
        spec = ServerSpec(
            name=f"tidings-storage-{args.store}",
            cmd=[*cmd, "serve", "--host", HOST, "--port", "{port}"],
            env=tidings_env({"TIDINGS_STORE": store}),
            publish="http",
            auth=True,
        )
        server = ServerProcess(spec).start()
        url = f"http://{HOST}:{server.port}/publish"
        totals: dict[str, list[float]] = {"publish": [0, 0, 0], "storage": [0, 0, 0]}
        samples: dict[str, list[tuple[float, float, float]]] = {"publish": [], "storage": []}
        errors = {"publish": 0, "storage": 0}
        observers = Observers()
        try:
            connector = aiohttp.TCPConnector(limit=args.clients + args.observers + 8)
            async with aiohttp.ClientSession(connector=connector) as session:
                await observers.start(session, server.port, args.observers)
                await load(
                    session, url, "storage", argparse.Namespace(**{**vars(args), "duration": 1}), -1
                )
                await asyncio.sleep(0.5)
                for round_ in range(args.rounds):
                    for kind in ("publish", "storage"):
                        frames0, cpu0, t0 = (
                            observers.frames,
                            proc_cpu_seconds(server.pid),
                            time.monotonic(),
                        )
                        rate, p50, p99, errs = await load(session, url, kind, args, round_)
                        await asyncio.sleep(0.3)  # let the fan-out of the round drain
                        elapsed = time.monotonic() - t0
                        samples[kind].append((rate, p50, p99))
                        totals[kind][0] += (observers.frames - frames0) / elapsed
                        totals[kind][1] += proc_cpu_seconds(server.pid) - cpu0
                        totals[kind][2] += 1
                        errors[kind] += errs
                await observers.aclose()
        finally:
            server.stop()
            if args.store == "postgres":
                import asyncpg

                conn = await asyncpg.connect(args.postgres_url)
                try:
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                finally:
                    await conn.close()
    rows = []
    for kind in ("publish", "storage"):
        n = len(samples[kind])
        rate = sum(s[0] for s in samples[kind]) / n
        p50 = sorted(s[1] for s in samples[kind])[n // 2]
        p99 = max(s[2] for s in samples[kind])
        frames = totals[kind][0] / totals[kind][2]
        cpu = totals[kind][1] / totals[kind][2]
        rows.append((kind, rate, p50, p99, frames, cpu, errors[kind]))
    ratio = rows[1][1] / rows[0][1]
    out = [
        "## Storage writes beside plain publishes",
        "",
        f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}. One `tidings serve` "
        f"({args.store} store), {args.observers} WebSocket observers on one channel, "
        f"{args.clients} HTTP clients, {args.rounds} alternating rounds of {args.duration:.0f} s "
        f"per kind; storage writes rotate over {args.keys} keys, every value changed.",
        "",
        "| request | 202/s | p50 ms | worst p99 ms | observer frames/s | server CPU ms/request "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, rate, p50, p99, frames, cpu, errs in rows:
        label = "plain publish (unstored)" if kind == "publish" else "storage write (changed)"
        out.append(
            f"| {label} | **{rate:,.0f}** | {p50:.2f} | {p99:.2f} | {frames:,.0f} "
            f"| {cpu * 1000 / (rate * args.duration):.3f} | {errs} |"
        )
    out += ["", f"Storage writes/s ÷ plain publishes/s: **{ratio:.2f}**."]
    print("\n".join(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "memory", "postgres"), default="sqlite")
    parser.add_argument("--observers", type=int, default=100)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--postgres-url", default=DEFAULT_PG)
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
