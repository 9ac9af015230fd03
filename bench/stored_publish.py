"""Stored-publish throughput end to end: ``POST /publish`` → 202, with the message on disk.

Starts ``tidings serve`` with its SQLite store in a scratch folder, then for each concurrency
level runs the same load twice in one run: unstored messages (``store`` absent, the baseline)
and stored ones (``store: 3600``, each 202 sent only after the SQLite commit with
``synchronous=FULL``). Reports 202s per second, request latency, and the stored/unstored ratio.

    python bench/stored_publish.py [--duration 8] [--concurrency 1,16,128]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    API_KEY,
    HOST,
    ServerProcess,
    ServerSpec,
    percentile,
    proc_cpu_seconds,
    raise_nofile,
    tidings_command,
    tidings_env,
)


async def load(port: int, store: int, concurrency: int, duration: float) -> dict[str, float]:
    """``concurrency`` clients each POST one ~100-byte message at a time for ``duration`` s."""
    url = f"http://{HOST}:{port}/publish"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + duration

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal errors
        i = 0
        while time.monotonic() < stop:
            body: dict[str, object] = {
                "channel": f"bench-{n % 8}",
                "event": "tick",
                "data": {"n": i, "pad": "x" * 80},
            }
            if store:
                body["store"] = store
            t0 = time.perf_counter()
            async with session.post(url, data=orjson.dumps(body), headers=headers) as resp:
                await resp.read()
                if resp.status == 202:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
            i += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        await asyncio.gather(*(client(session, n) for n in range(concurrency)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "ok": len(latencies),
        "errors": errors,
        "per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000 if latencies else 0.0,
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else 0.0,
    }


async def amain(args: argparse.Namespace) -> str:
    raise_nofile()
    levels = [int(x) for x in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="tidings-stored-") as scratch:
        db = Path(scratch) / "bench.db"
        cmd = tidings_command()
        assert cmd is not None
        spec = ServerSpec(
            name="tidings-sqlite",
            cmd=[*cmd, "serve", "--host", HOST, "--port", "{port}"],
            env=tidings_env({"TIDINGS_STORE": f"sqlite:///{db}"}),
            publish="http",
            auth=True,
        )
        server = ServerProcess(spec).start()
        rows = []
        try:
            for concurrency in levels:
                for store in (0, 3600):  # baseline first, then stored, in the same run
                    cpu0 = proc_cpu_seconds(server.pid)
                    result = await load(server.port, store, concurrency, args.duration)
                    result["cpu_s"] = proc_cpu_seconds(server.pid) - cpu0
                    rows.append((concurrency, store, result))
        finally:
            server.stop()
        size_mib = db.stat().st_size / 2**20 if db.exists() else 0.0
    load_avg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = [
        "# Stored publish, end to end",
        "",
        f"- command: `python bench/stored_publish.py --duration {args.duration} "
        f"--concurrency {args.concurrency}`",
        f"- machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load avg at end {load_avg}; SQLite file grew to {size_mib:.1f} MiB",
        "",
        "| clients | store | 202/s | p50 ms | p99 ms | server CPU s | errors | stored ÷ unstored |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base: dict[int, float] = {}
    for concurrency, store, r in rows:
        if store == 0:
            base[concurrency] = r["per_s"]
            ratio = ""
        else:
            ratio = f"{r['per_s'] / base[concurrency]:.0%}" if base.get(concurrency) else ""
        label = "3600 (SQLite, FULL)" if store else "none"
        out.append(
            f"| {concurrency} | {label} | **{r['per_s']:,.0f}** | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['cpu_s']:.1f} | {int(r['errors'])} | {ratio} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--concurrency", default="1,16,128", help="comma-separated client counts")
    print(asyncio.run(amain(parser.parse_args())))


if __name__ == "__main__":
    main()
