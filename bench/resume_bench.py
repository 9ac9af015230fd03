"""Benchmark resume on subscribe (issue 11; not a test).

1. **One subscriber, ``--missed`` messages missed**: it reconnects and (a) subscribes with
   ``resumeFrom`` and takes the replay, or (b) makes a plain subscribe and pages the gap with
   ``listMessages`` (what a Hotsock client does by hand). Time from the new socket to the last
   missed message in hand; interleaved, ``--rounds`` each, median.
2. **The thundering herd**: ``--herd`` subscribers have each seen the same message; the server
   restarts (SIGTERM, start again on the same port and SQLite file); ``--herd-missed`` stored
   messages are published while they are away; then all reconnect at once, (a) with
   ``resumeFrom`` or (b) plainly. A publisher sends a live message every 10 ms from the moment
   the herd starts. Reported: time until every subscriber is subscribed (and, with resume, holds
   every missed message), server CPU seconds over that span, and the p99 over subscribers of the
   time from the reconnect to the first live message. The cap is raised to twice
   ``--herd-missed`` so the live messages published meanwhile still fit.

    python bench/resume_bench.py [--missed 1000] [--herd 1000] [--herd-missed 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
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

CHANNEL = "herd"


def token() -> str:
    from joserfc import jwt
    from joserfc.jwk import OctKey

    claims = {
        "scope": "connect",
        "exp": int(time.time()) + 3600,
        "channels": {CHANNEL: {"subscribe": True, "historyStart": 0}},
    }
    return jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, OctKey.import_key(SIGNING_SECRET))


class Bench:
    def __init__(self, server: ServerProcess, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http
        self.token = token()

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.server.port}"

    async def publish(self, count: int, event: str = "missed") -> list[str]:
        ids: list[str] = []
        while count > 0:
            n = min(count, 1000)
            body = [
                {
                    "channel": CHANNEL,
                    "event": event,
                    "data": {"n": i},
                    "store": 3600,
                    "eagerIdGeneration": True,
                }
                for i in range(n)
            ]
            async with self.http.post(
                f"{self.base}/publish",
                data=orjson.dumps(body),
                headers={"Authorization": f"Bearer {API_KEY}"},
            ) as resp:
                answer = await resp.json(content_type=None)
                assert resp.status == 202, answer
            ids += [a["id"] for a in answer]
            count -= n
        return ids

    async def open(self) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
        ws = await self.http.ws_connect(
            f"ws://{HOST}:{self.server.port}/?token={self.token}", max_msg_size=0
        )
        connected = orjson.loads((await ws.receive()).data)
        assert connected["event"] == "hotsock.connected", connected
        return ws, connected["data"]

    async def subscribe(
        self, ws: aiohttp.ClientWebSocketResponse, resume_from: str | None
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {"event": "hotsock.subscribe", "channel": CHANNEL}
        if resume_from is not None:
            frame["data"] = {"resumeFrom": resume_from}
        await ws.send_str(orjson.dumps(frame).decode())
        while True:
            msg = orjson.loads((await ws.receive()).data)
            if msg["event"] == "hotsock.subscribed":
                return dict(msg["data"])

    async def list_gap(self, conn: dict[str, Any], after: str) -> int:
        got = 0
        while True:
            async with self.http.post(
                f"{self.base}/connection/listMessages",
                params={
                    "connectionId": conn["connectionId"],
                    "connectionSecret": conn["connectionSecret"],
                },
                data=orjson.dumps({"channel": CHANNEL, "after": after}),
            ) as resp:
                page = (await resp.json(content_type=None))["messages"]
            if not page:
                return got
            got += len(page)
            after = page[-1]["id"]


async def one_subscriber(bench: Bench, missed: int, rounds: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {"resume": [], "plain": []}
    for _ in range(rounds):
        for mode in ("resume", "plain"):
            (seen,) = await bench.publish(1, "seen")
            await bench.publish(missed)
            start = time.perf_counter()
            ws, conn = await bench.open()
            if mode == "resume":
                answer = await bench.subscribe(ws, seen)
                assert answer == {"resumed": True, "replayed": missed}, answer
                for _ in range(missed):
                    await ws.receive()
            else:
                await bench.subscribe(ws, None)
                got = await bench.list_gap(conn, seen)
                assert got >= missed, got
            times[mode].append(time.perf_counter() - start)
            await ws.close()
    return {
        mode: {"median_ms": statistics.median(t) * 1000, "runs_ms": [round(x * 1000, 1) for x in t]}
        for mode, t in times.items()
    }


async def herd(bench: Bench, size: int, missed: int, mode: str) -> dict[str, Any]:
    (seen,) = await bench.publish(1, "seen")
    sockets = []
    for _ in range(size):
        ws, _conn = await bench.open()
        await bench.subscribe(ws, None)
        sockets.append(ws)
    bench.server.stop()
    for ws in sockets:
        await ws.close()
    bench.server.start()
    await bench.publish(missed)
    stop = asyncio.Event()

    async def live() -> None:
        while not stop.is_set():
            await bench.publish(1, "live")
            await asyncio.sleep(0.01)

    async def reconnect() -> tuple[float, float, bool]:
        start = time.perf_counter()
        ws, _conn = await bench.open()
        answer = await bench.subscribe(ws, seen if mode == "resume" else None)
        replayed = answer.get("replayed", 0)
        caught_up = first_live = 0.0
        count = 0
        while not (caught_up and first_live):
            if count >= replayed and not caught_up:
                caught_up = time.perf_counter() - start
                continue
            raw = (await ws.receive()).data
            count += 1
            if not first_live and '"event":"live"' in raw:
                first_live = time.perf_counter() - start
        await ws.close()
        return caught_up, first_live, bool(answer.get("resumed"))

    cpu0 = proc_cpu_seconds(bench.server.pid)
    publisher = asyncio.ensure_future(live())
    t0 = time.perf_counter()
    results = await asyncio.gather(*(reconnect() for _ in range(size)))
    wall = time.perf_counter() - t0
    stop.set()
    await publisher
    cpu = proc_cpu_seconds(bench.server.pid) - cpu0
    caught = sorted(r[0] for r in results)
    live_ms = sorted(r[1] * 1000 for r in results)
    return {
        "mode": mode,
        "subscribers": size,
        "missed": missed,
        "all_caught_up_s": round(caught[-1], 3),
        "herd_wall_s": round(wall, 3),
        "server_cpu_s": round(cpu, 3),
        "first_live_p50_ms": round(percentile(live_ms, 50), 1),
        "first_live_p99_ms": round(percentile(live_ms, 99), 1),
        "resumed": sum(r[2] for r in results),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--herd", type=int, default=1000)
    parser.add_argument("--herd-missed", type=int, default=100)
    args = parser.parse_args()
    raise_nofile()
    cmd = tidings_command()
    assert cmd is not None
    with tempfile.TemporaryDirectory() as tmp:
        spec = ServerSpec(
            name="tidings-resume",
            cmd=[*cmd, "serve", "--host", HOST, "--port", "{port}"],
            env=tidings_env(
                {
                    "TIDINGS_STORE": f"sqlite:///{tmp}/resume.db",
                    # room for the live messages published while the herd reconnects
                    "TIDINGS_RESUME_MAX_MESSAGES": str(max(1000, 2 * args.herd_missed)),
                    # every client of the bench comes from 127.0.0.1: per-address limits off
                    "TIDINGS_HANDSHAKES_PER_IP_PER_SECOND": "0",
                    "TIDINGS_MAX_CONNECTIONS_PER_IP": "0",
                    "TIDINGS_HTTP_CALLS_PER_SECOND": "0",
                }
            ),
            publish="http",
            auth=True,
        )
        server = ServerProcess(spec).start()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            bench = Bench(server, http)
            try:
                single = await one_subscriber(bench, args.missed, args.rounds)
                print(orjson.dumps({"one_subscriber": single, "missed": args.missed}).decode())
                for mode in ("plain", "resume"):
                    row = await herd(bench, args.herd, args.herd_missed, mode)
                    print(orjson.dumps(row).decode())
            finally:
                server.stop()


if __name__ == "__main__":
    asyncio.run(main())
