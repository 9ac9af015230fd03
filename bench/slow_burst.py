"""Slow consumers under a burst (issue 13, defect 7): how many healthy subscribers a node evicts.

``--subs`` subscribers (one of them never reads) take ``--messages`` messages of ``--size``
bytes, published as fast as the node accepts them in ``--batch``-message publishes with
``--inflight`` requests at once. Each reader is a raw TCP socket that parses the server's frames
itself (cheap, so the measurement is the server's rule, not the client library), optionally
pausing ``--pause-ms`` after every read to act like a loaded client. A run counts the healthy
subscribers whose connection ended before they had every message, and checks that the one that
never reads was closed: it is left alone for ``--stall-after`` seconds after the burst (reading
it earlier would be progress), then read to its end.

Source trees are compared in the same run, interleaved: ``--tree NAME=DIR`` (the directory that
holds ``src/tidings``), repeatable; the default is this checkout as ``current``. For example:

    git archive <before-commit> src | tar -x -C /tmp/before
    .venv/bin/python bench/slow_burst.py --tree before=/tmp/before --tree after=. --repeat 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    API_KEY,
    HOST,
    REPO_DIR,
    SIGNING_SECRET,
    ServerProcess,
    ServerSpec,
    proc_rss_kib,
    tidings_env,
)

CHANNEL = "burst"


def token() -> str:
    from joserfc import jwt
    from joserfc.jwk import OctKey

    claims = {
        "scope": "connect",
        "exp": int(time.time()) + 3600,
        "channels": {CHANNEL: {"subscribe": True, "autoSubscribe": True}},
    }
    return jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, OctKey.import_key(SIGNING_SECRET))


class Reader:
    """One subscriber over a raw socket: WebSocket handshake, then server frames counted."""

    def __init__(self, port: int, *, stalled: bool, pause: float) -> None:
        self.port = port
        self.stalled = stalled
        self.pause = pause
        self.ticks = 0
        self.ended = False  # the server closed or cut the connection
        self.subscribed = asyncio.Event()
        self._buf = bytearray()

    async def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.stalled:  # little kernel buffer: what it never reads waits on the server
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, self.port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            (
                f"GET /?token={token()} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"handshake refused: {head[:200]!r}")
        while not self.subscribed.is_set():
            await self._read_once()

    async def run(self, total: int) -> None:
        if self.stalled:
            return
        while self.ticks < total and not self.ended:
            await self._read_once()
            if self.pause:
                await asyncio.sleep(self.pause)

    async def end_of_stalled(self, wait: float) -> bool:
        """Read what the stalled reader left; True when the server had ended it."""
        try:
            async with asyncio.timeout(wait):
                while not self.ended:
                    await self._read_once()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.writer.transport.abort()

    async def _read_once(self) -> None:
        try:
            data = await self.reader.read(1 << 16)
        except ConnectionError:
            data = b""
        if not data:
            self.ended = True
            return
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= 2:
            opcode, n = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if len(buf) - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            if opcode == 8:
                self.ended = True
            elif b'"event":"tick"' in payload:
                self.ticks += 1
            elif b'"hotsock.subscribed"' in payload:
                self.subscribed.set()
        del buf[:pos]


async def one_run(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = tidings_env({"PYTHONPATH": str(tree / "src")})
    spec = ServerSpec("tidings", [sys.executable, "-m", "tidings", "serve", "--port", "{port}"])
    spec.env = env
    server = ServerProcess(spec).start()
    try:
        readers = [
            Reader(server.port, stalled=i == 0, pause=args.pause_ms / 1000)
            for i in range(args.subs)
        ]
        for r in readers:
            await r.open()
        payload = "x" * args.size
        messages = [{"channel": CHANNEL, "event": "tick", "data": payload}] * args.batch
        body = json.dumps(messages).encode()
        peak = [proc_rss_kib(server.pid)]

        async def sample() -> None:
            while True:
                peak[0] = max(peak[0], proc_rss_kib(server.pid))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        tasks = [asyncio.create_task(r.run(args.messages)) for r in readers]
        async with aiohttp.ClientSession() as http:
            gate = asyncio.Semaphore(args.inflight)

            async def publish() -> None:
                async with (
                    gate,
                    http.post(
                        f"http://{HOST}:{server.port}/publish",
                        data=body,
                        headers={"Authorization": f"Bearer {API_KEY}"},
                    ) as resp,
                ):
                    if resp.status != 202:
                        raise RuntimeError(f"publish answered {resp.status}: {await resp.text()}")

            await asyncio.gather(*[publish() for _ in range(args.messages // args.batch)])
        published = time.monotonic() - started
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
        sampler.cancel()
        healthy = readers[1:]
        evicted = sum(1 for r in healthy if r.ticks < args.messages)
        # reading it now would be progress: leave it alone past the write timeout first
        await asyncio.sleep(args.stall_after)
        stalled_closed = await readers[0].end_of_stalled(args.stall_wait)
        for r in readers:
            r.close()
        return {
            "evicted_healthy": evicted,
            "healthy": len(healthy),
            "stalled_closed": stalled_closed,
            "publish_s": round(published, 2),
            "delivered_s": round(elapsed, 2),
            "min_ticks": min(r.ticks for r in healthy),
            "server_peak_rss_mib": round(peak[0] / 1024, 1),
        }
    finally:
        server.stop()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tree", action="append", default=[], help="NAME=DIR, repeatable")
    p.add_argument("--subs", type=int, default=50)
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--inflight", type=int, default=8)
    p.add_argument("--pause-ms", type=float, default=0.0)
    p.add_argument(
        "--stall-after", type=float, default=12.0, help="past the write timeout and close grace"
    )
    p.add_argument("--stall-wait", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    trees = [t.split("=", 1) for t in args.tree] or [["current", str(REPO_DIR)]]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for rep in range(args.repeat):
        for name, path in trees:  # interleaved: the machine's load hits every tree alike
            res = await one_run(Path(path).resolve(), args)
            results[name].append(res)
            print(json.dumps({"tree": name, "repeat": rep, **res}), flush=True)
    print()
    print(
        "| tree | healthy evicted (each run) | stalled one closed | publish s (median) "
        "| server peak RSS MiB (max) |"
    )
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        evicted = ", ".join(f"{r['evicted_healthy']}/{r['healthy']}" for r in runs)
        closed = ", ".join("yes" if r["stalled_closed"] else "no" for r in runs)
        median = statistics.median(r["publish_s"] for r in runs)
        rss = max(r["server_peak_rss_mib"] for r in runs)
        print(f"| {name} | {evicted} | {closed} | {median} | {rss} |")


if __name__ == "__main__":
    asyncio.run(main())
