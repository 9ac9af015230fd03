"""Resume on subscribe across nodes (spec §24.1): three ``tidings serve`` processes on Redis and
PostgreSQL, a publisher sending without pause while subscribers drop and resume on other nodes.

Needs Redis and PostgreSQL like ``test_multinode.py``, whose cluster helper it uses.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import websockets
from tests.conftest import Client, make_token
from tests.integration.test_multinode import ROOM, Cluster, TidingsNode
from tests.services import require_postgres, require_redis

pytestmark = pytest.mark.integration

SUBSCRIBERS = 50
MESSAGES = 400
DROPS = 2  # disconnections per subscriber


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    await require_redis()
    await require_postgres()
    http = aiohttp.ClientSession()
    c = Cluster(tmp_path, http)
    try:
        yield c
    finally:
        try:
            await c.aclose()
        finally:
            await http.close()


async def open_client(node: TidingsNode) -> Client:
    ws = await websockets.connect(
        f"ws://127.0.0.1:{node.port}/?token={make_token(ROOM)}", max_size=None, compression=None
    )
    client = Client(ws)
    client.connected = await client.expect("hotsock.connected")
    return client


@pytest.mark.timeout(180)
async def test_resume_race_every_subscriber_ends_with_the_stored_sequence(
    cluster: Cluster,
) -> None:
    """50 subscribers each drop twice mid-stream and resume on another node while one publisher
    sends without pause; each ends with exactly the stored IDs, no gap, no duplicate."""
    nodes = await cluster.start(3)
    rng = random.Random(11)
    stored: list[str] = []
    done = asyncio.Event()

    async def subscriber(index: int) -> list[str]:
        seen: list[str] = []
        drops = sorted(rng.sample(range(5, MESSAGES - 5), DROPS))
        where = index % 3
        client = await open_client(nodes[where])
        await client.subscribe("room")
        ready.release()
        try:
            while True:
                frame = await client.recv(30)
                if frame["event"] == "end":
                    return seen
                if frame["event"].startswith("hotsock."):
                    continue
                seen.append(frame["id"])
                if drops and len(seen) >= drops[0]:
                    drops.pop(0)
                    await client.close()
                    where = (where + 1) % 3
                    client = await open_client(nodes[where])
                    await client.send(
                        {
                            "event": "hotsock.subscribe",
                            "channel": "room",
                            "data": {"resumeFrom": seen[-1]},
                        }
                    )
                    subscribed = await client.expect("hotsock.subscribed")
                    assert subscribed["data"]["resumed"] is True, subscribed
        finally:
            await client.close()

    async def publisher() -> None:
        for i in range(MESSAGES):
            status, body = await cluster.publish(
                nodes[i % 3],
                {
                    "channel": "room",
                    "event": "tick",
                    "data": i,
                    "store": 3600,
                    "eagerIdGeneration": True,
                },
            )
            assert status == 202, body
            stored.append(body["id"])
        status, body = await cluster.publish(
            nodes[0], {"channel": "room", "event": "end", "store": 3600}
        )
        assert status == 202, body
        done.set()

    ready = asyncio.Semaphore(0)
    tasks = [asyncio.create_task(subscriber(i)) for i in range(SUBSCRIBERS)]
    for _ in range(SUBSCRIBERS):
        await ready.acquire()
    results = await asyncio.gather(publisher(), *tasks)
    assert done.is_set() and len(stored) == MESSAGES
    assert stored == sorted(stored)
    for seen in results[1:]:
        assert seen == stored
