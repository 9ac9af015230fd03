"""Crash and outage loops: publishers that retry with the same ``deduplicationId`` until they
get a 202, while the node is SIGKILLed again and again (SQLite and PostgreSQL), or while a
private PostgreSQL is stopped for seconds under load. Afterwards the store must hold every
acknowledged message exactly once, under the acknowledged ID, nothing else, in each channel's
publishing order: 0 lost, 0 duplicated, 0 phantom.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

import aiohttp
import orjson
import pytest
from tests.conftest import API_KEY, MS, SECRET, StartServer
from tests.pg_server import pg_server
from tests.secret_scan import SECRETS, scan_file
from tests.services import free_port

from tidings.store import open_store

CHANNELS = ("crash.a", "crash.b", "crash.c")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


class Publishers:
    """One sequential publisher per channel: message ``n`` is sent (and resent with the same
    ``deduplicationId`` after any failure) until it is acknowledged, then ``n + 1``, until
    ``stop()``; each channel then has published ``sent[channel]`` messages."""

    def __init__(self, base: Callable[[], str]) -> None:
        self.base = base
        self.stopping = False
        self.sent = dict.fromkeys(CHANNELS, 0)
        self.acked: dict[tuple[str, int], str] = {}  # (channel, n) -> acknowledged ID
        self.failures = 0  # answers other than 202, and requests with no answer
        self.codes: set[str] = set()

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await asyncio.gather(*(self._channel(http, channel) for channel in CHANNELS))

    async def _channel(self, http: aiohttp.ClientSession, channel: str) -> None:
        n = 0
        while not self.stopping:
            body = {
                "channel": channel,
                "event": "e",
                "data": n,
                "store": -1,
                "deduplicationId": f"{channel}-{n}",
                "eagerIdGeneration": True,
            }
            while True:
                try:
                    async with http.post(
                        f"{self.base()}/publish",
                        data=orjson.dumps(body),
                        headers={"Authorization": f"Bearer {API_KEY}"},
                    ) as resp:
                        answer = await resp.json(content_type=None)
                        if resp.status == 202:
                            self.acked[(channel, n)] = answer["id"]
                            n += 1
                            self.sent[channel] = n
                            break
                        assert resp.status == 503, (resp.status, answer)
                        self.codes.add(answer["error"]["code"])
                except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
                    pass
                self.failures += 1
                await asyncio.sleep(20 * MS)


async def check_store(url: str, publishers: Publishers) -> None:
    """Every acknowledged message once, under its acknowledged ID, nothing else, in order."""
    store = open_store(url)
    await store.open()
    try:
        for channel in CHANNELS:
            stored = await store.list_messages(channel, now_ms=0, limit=10_000)
            numbers = [orjson.loads(r.data) for r in stored]
            sent = publishers.sent[channel]
            assert sent > 0
            assert numbers == list(range(sent)), (channel, numbers)
            assert [r.id for r in stored] == [publishers.acked[(channel, n)] for n in range(sent)]
    finally:
        await store.aclose()


class NodeProcess:
    """``tidings serve`` as a subprocess on a fixed port, to SIGKILL and restart."""

    def __init__(self, tmp_path: Path, store_url: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "node.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        self.env.update(
            TIDINGS_SIGNING_KEY1_METHOD="HS256",
            TIDINGS_SIGNING_KEY1=base64.b64encode(SECRET).decode(),
            TIDINGS_API_KEY1=API_KEY,
            TIDINGS_STORE=store_url,
            TIDINGS_LOG_LEVEL="info",
        )
        self.cwd = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--port", str(self.port)],
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        async with aiohttp.ClientSession() as http:
            for _ in range(400):
                try:
                    async with http.get(f"{self.base}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(25 * MS)
        raise AssertionError(self.log_path.read_text()[-2000:])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


async def crash_loop(node: NodeProcess, publishers: Publishers, kills: int) -> None:
    """Publish while SIGKILLing the node at random moments ``kills`` times."""
    await node.start()
    task = asyncio.ensure_future(publishers.run())
    rng = random.Random(13)
    try:
        while node.kills < kills:
            await asyncio.sleep(rng.uniform(50, 300) * MS)
            node.kill()
            await node.start()
        acked = len(publishers.acked)
        await _until(lambda: len(publishers.acked) > acked + 10)
        publishers.stopping = True
        await asyncio.wait_for(task, 60)
    finally:
        task.cancel()


@pytest.fixture
async def node_factory(tmp_path: Path) -> AsyncIterator[Callable[[str], NodeProcess]]:
    nodes: list[NodeProcess] = []

    def make(store_url: str) -> NodeProcess:
        node = NodeProcess(tmp_path, store_url)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()
        leaks = scan_file(SECRETS, node.log_path)
        assert leaks == [], leaks


async def test_crash_loop_sqlite_sigkill_under_retried_stored_publishes(
    tmp_path: Path, node_factory: Callable[[str], NodeProcess]
) -> None:
    url = f"sqlite:///{tmp_path}/crash.db"
    node = node_factory(url)
    publishers = Publishers(lambda: node.base)
    await crash_loop(node, publishers, kills=6)
    node.close()
    await check_store(url, publishers)


async def test_crash_loop_postgres_sigkill_under_retried_stored_publishes(
    node_factory: Callable[[str], NodeProcess],
) -> None:
    with pg_server() as pg:
        node = node_factory(pg.url)
        publishers = Publishers(lambda: node.base)
        await crash_loop(node, publishers, kills=6)
        node.close()
        await check_store(pg.url, publishers)


async def test_outage_loop_private_postgres_stopped_under_load(start_server: StartServer) -> None:
    """The node stays up while its PostgreSQL is stopped twice for 3 s (once cleanly, once
    as a crash): publishes are refused with 503 meanwhile and land once it is back."""
    with pg_server() as pg:
        url = f"{pg.url}?connect_timeout=1&command_timeout=2"
        server = await start_server(store=url)
        publishers = Publishers(lambda: server.base)
        task = asyncio.ensure_future(publishers.run())
        try:
            for mode in ("fast", "immediate"):
                acked = len(publishers.acked)
                await _until(lambda: len(publishers.acked) > acked + 20)
                await asyncio.to_thread(pg.stop, mode)
                await asyncio.sleep(3000 * MS)
                await asyncio.to_thread(pg.start)
            acked = len(publishers.acked)
            await _until(lambda: len(publishers.acked) > acked + 10)
            publishers.stopping = True
            await asyncio.wait_for(task, 60)
        finally:
            task.cancel()
        assert publishers.failures > 0 and publishers.codes <= {
            "SERVICE_UNAVAILABLE",
            "OUTCOME_UNKNOWN",
        }
        await server.node.stop()
        await check_store(pg.url, publishers)


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(10 * MS)
    raise AssertionError("condition not reached")
