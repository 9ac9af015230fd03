"""Soak: a node under churn for a given duration, sampling its memory and file descriptors.

Starts ``tidings serve`` (SQLite store in a scratch folder) and keeps ``--connections``
WebSocket clients on it: each subscribes to one of ``--channels`` channels, and a share of
them (``--churn`` per second) disconnect and reconnect with a fresh token. Publishers send
unstored and stored messages (``POST /publish``, some with a ``deduplicationId`` repeated once).
Every ``--sample`` seconds the server's RSS and open file descriptors are recorded. At the end
it checks that every stored message is listed once and reports growth: a leak shows as RSS or
fds rising while the load is steady.

    python bench/soak.py --duration 1800        # the 30-minute run the issue asks for
    python bench/soak.py --duration 120 --connections 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
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
    SIGNING_SECRET,
    ServerProcess,
    ServerSpec,
    make_tokens,
    proc_rss_kib,
    raise_nofile,
    tidings_command,
    tidings_env,
)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    def __init__(self, port: int, args: argparse.Namespace) -> None:
        self.port = port
        self.args = args
        self.stop_at = time.monotonic() + args.duration
        self.received = 0
        self.reconnects = 0
        self.published = 0
        self.stored: dict[str, set[str]] = {}  # channel -> acknowledged stored IDs
        self.errors: dict[str, int] = {}
        self.rng = random.Random(7)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def channel(self, n: int) -> str:
        return f"soak-{n % self.args.channels}"

    async def client(self, session: aiohttp.ClientSession, n: int) -> None:
        channel = self.channel(n)
        while time.monotonic() < self.stop_at:
            [token] = make_tokens(1, channel=channel, tag=f"s{n}-{self.reconnects}-")
            try:
                async with session.ws_connect(
                    f"ws://{HOST}:{self.port}/?token={token}", heartbeat=None
                ) as ws:
                    await ws.receive(timeout=10)  # hotsock.connected
                    await ws.send_str(
                        orjson.dumps({"event": "hotsock.subscribe", "channel": channel}).decode()
                    )
                    # a connection lives for a random while, then churns
                    life = self.rng.expovariate(self.args.churn / self.args.connections)
                    until = min(self.stop_at, time.monotonic() + life)
                    while time.monotonic() < until:
                        try:
                            msg = await ws.receive(timeout=max(0.05, until - time.monotonic()))
                        except TimeoutError:
                            break
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self.received += 1
                        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                            self.error(f"closed {ws.close_code}")
                            break
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.error(type(exc).__name__)
                await asyncio.sleep(0.2)
            self.reconnects += 1

    async def publisher(self, session: aiohttp.ClientSession, n: int) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        i = 0
        interval = self.args.publishers / self.args.rate
        while time.monotonic() < self.stop_at:
            channel = self.channel(self.rng.randrange(self.args.channels))
            stored = i % 2 == 1
            body: dict[str, object] = {
                "channel": channel,
                "event": "tick",
                "data": {"i": i, "p": "x" * 200},
            }
            if stored:
                body.update(store=3600, eagerIdGeneration=True, deduplicationId=f"p{n}-{i}")
            for attempt in range(2 if stored and i % 10 == 1 else 1):  # some repeated once
                try:
                    async with session.post(
                        f"http://{HOST}:{self.port}/publish",
                        data=orjson.dumps(body),
                        headers=headers,
                    ) as resp:
                        answer = await resp.json(content_type=None)
                        if resp.status != 202:
                            self.error(f"publish {resp.status}")
                        elif stored:
                            self.stored.setdefault(channel, set()).add(answer["id"])
                        if attempt == 0:
                            self.published += 1
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    self.error(type(exc).__name__)
            i += 1
            await asyncio.sleep(interval)

    async def sampler(self, pid: int, samples: list[tuple[float, int, int, int]]) -> None:
        started = time.monotonic()
        while time.monotonic() < self.stop_at:
            samples.append(
                (time.monotonic() - started, proc_rss_kib(pid), open_fds(pid), self.received)
            )
            await asyncio.sleep(self.args.sample)

    async def check_stored(self, session: aiohttp.ClientSession) -> tuple[int, int]:
        """Listed stored messages versus acknowledged ones, over the admin-free path: a
        subscriber with historyStart 0 pages through ``listMessages``."""
        from joserfc import jwt
        from joserfc.jwk import OctKey

        listed = 0
        missing = 0
        for channel, ids in self.stored.items():
            claims = {
                "scope": "connect",
                "exp": int(time.time()) + 600,
                "channels": {channel: {"subscribe": True, "historyStart": 0}},
            }
            token = jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(SIGNING_SECRET))
            async with session.ws_connect(f"ws://{HOST}:{self.port}/?token={token}") as ws:
                connected = orjson.loads((await ws.receive(timeout=10)).data)["data"]
                await ws.send_str(
                    orjson.dumps({"event": "hotsock.subscribe", "channel": channel}).decode()
                )
                await ws.receive(timeout=10)
                seen: list[str] = []
                after = None
                while True:
                    body: dict[str, object] = {"channel": channel}
                    if after:
                        body["after"] = after
                    async with session.post(
                        f"http://{HOST}:{self.port}/connection/listMessages",
                        params={
                            "connectionId": connected["connectionId"],
                            "connectionSecret": connected["connectionSecret"],
                        },
                        data=orjson.dumps(body),
                    ) as resp:
                        page = (await resp.json())["messages"]
                    seen += [m["id"] for m in page]
                    if len(page) < 100:
                        break
                    after = page[-1]["id"]
            assert len(seen) == len(set(seen)), f"{channel}: a stored message is listed twice"
            listed += len(seen)
            missing += len(ids - set(seen))
        return listed, missing


async def amain(args: argparse.Namespace) -> str:
    raise_nofile()
    cmd = tidings_command()
    assert cmd is not None, "tidings is not installed"
    with tempfile.TemporaryDirectory(prefix="tidings-soak-") as scratch:
        spec = ServerSpec(
            name="tidings-soak",
            cmd=[*cmd, "serve", "--host", HOST, "--port", "{port}"],
            env=tidings_env({"TIDINGS_STORE": f"sqlite:///{scratch}/soak.db"}),
            publish="http",
            auth=True,
        )
        server = ServerProcess(spec).start()
        samples: list[tuple[float, int, int, int]] = []
        try:
            soak = Soak(server.port, args)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                await asyncio.gather(
                    soak.sampler(server.pid, samples),
                    *(soak.client(session, n) for n in range(args.connections)),
                    *(soak.publisher(session, n) for n in range(args.publishers)),
                )
                await asyncio.sleep(2)  # let the last reconnects settle before the last sample
                samples.append(
                    (args.duration, proc_rss_kib(server.pid), open_fds(server.pid), soak.received)
                )
                listed, missing = await soak.check_stored(session)
            alive = server.alive()
        finally:
            server.stop()
    acked = sum(len(ids) for ids in soak.stored.values())
    warm = [s for s in samples if s[0] >= min(60.0, args.duration / 4)]
    first, last = warm[0], warm[-1]
    peak_rss = max(s[1] for s in samples)
    load_avg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = [
        "# Soak",
        "",
        f"- command: `python bench/soak.py --duration {args.duration:g} --connections "
        f"{args.connections} --churn {args.churn:g} --rate {args.rate:g}`",
        f"- machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, load avg at end "
        f"{load_avg}",
        f"- publishes: {soak.published:,} ({acked:,} stored and acknowledged, {listed:,} listed, "
        f"{missing} missing); deliveries received: {soak.received:,}; reconnects: "
        f"{soak.reconnects:,}; errors: {soak.errors or 'none'}; server alive at the end: {alive}",
        f"- RSS: {first[1] / 1024:.1f} MiB at {first[0]:.0f} s (warm) → "
        f"{last[1] / 1024:.1f} MiB at the end (peak {peak_rss / 1024:.1f} MiB); "
        f"fds: {first[2]} → {last[2]}",
        "",
        "| t s | RSS MiB | fds | deliveries |",
        "|---|---|---|---|",
    ]
    step = max(1, len(samples) // 12)
    shown = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    for t, rss, fds, received in shown:
        out.append(f"| {t:.0f} | {rss / 1024:.1f} | {fds} | {received:,} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds")
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--churn", type=float, default=10.0, help="reconnects per second")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200.0, help="publishes per second")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    print(asyncio.run(amain(parser.parse_args())))


if __name__ == "__main__":
    main()
