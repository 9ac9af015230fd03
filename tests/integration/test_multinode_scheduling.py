"""Scheduled messages on three real ``tidings serve`` nodes sharing Redis and PostgreSQL: every
schedule runs exactly once across the cluster, also when the node that accepted it is gone.

Needs Redis and PostgreSQL like ``test_multinode.py`` (skipped without them unless
``TIDINGS_REQUIRE_SERVICES=1``); each test has its own Redis key and table prefix.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from tests.integration.test_multinode import (
    Cluster,
    TidingsNode,
    cluster,
    messages,
    no_more_messages,
)

pytestmark = pytest.mark.integration

__all__ = ["cluster"]  # the fixture, shared with test_multinode.py


def at(due_s: int) -> str:
    return f"at({datetime.fromtimestamp(due_s, UTC).strftime('%Y-%m-%dT%H:%M:%S')})"


async def schedules_run(cluster: Cluster, node: TidingsNode) -> int:
    async with cluster.http.get(f"{node.base}/metrics") as resp:
        text = await resp.text()
    [line] = [line for line in text.splitlines() if line.startswith("tidings_schedules_run_total{")]
    return int(float(line.split()[-1]))


@pytest.mark.timeout(120)
async def test_multinode_300_schedules_due_together_each_run_once(cluster: Cluster) -> None:
    """300 schedules accepted by three nodes, due within the same three seconds: subscribers
    on every node receive each exactly once, and the nodes together ran exactly 300."""
    nodes = await cluster.start(3)
    subscribers = [await cluster.connect(node) for node in nodes]
    for client in subscribers:
        await client.subscribe("room")
    base = math.ceil(time.time()) + 3
    outcomes = await asyncio.gather(
        *(
            cluster.publish(
                node,
                [
                    {
                        "channel": "room",
                        "event": "due",
                        "data": {"n": n},
                        "store": 3600,
                        "scheduleExpression": at(base + n % 3),
                    }
                    for n in range(k, 300, 3)
                ],
            )
            for k, node in enumerate(nodes)
        )
    )
    for status, answers in outcomes:
        assert status == 202, answers
        assert all("scheduleArn" in a for a in answers)
    for client in subscribers:
        got = await messages(client, 300, timeout=30)
        assert sorted(m["data"]["n"] for m in got) == list(range(300))
        assert len({m["id"] for m in got}) == 300
    for client in subscribers:
        await no_more_messages(client, wait=1.5)
    ran = [await schedules_run(cluster, node) for node in nodes]
    assert sum(ran) == 300, ran


@pytest.mark.timeout(120)
async def test_multinode_schedule_runs_when_its_accepting_node_is_gone(
    cluster: Cluster,
) -> None:
    """A node accepts schedules and is killed before they are due: the surviving nodes run
    each of them exactly once."""
    a, b, c = await cluster.start(3)
    watcher = await cluster.connect(b)
    await watcher.subscribe("room")
    due = math.ceil(time.time()) + 4  # A must be gone before they are due
    status, answers = await cluster.publish(
        a,
        [
            {"channel": "room", "event": "orphan", "data": n, "scheduleExpression": at(due)}
            for n in range(20)
        ],
    )
    assert status == 202, answers
    a.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(a.proc.wait, 10)
    got: list[dict[str, Any]] = await messages(watcher, 20, timeout=30)
    assert sorted(m["data"] for m in got) == list(range(20))
    await no_more_messages(watcher, wait=1.5)
    assert await schedules_run(cluster, b) + await schedules_run(cluster, c) == 20
