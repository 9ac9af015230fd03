"""What the rate and connection limits add per client frame and per handshake, in-process.

    python bench/limits_micro.py

Times the exact calls the limits put on each path (``TokenBucket.take`` per client frame;
``admit_handshake`` + ``claim`` + ``buckets`` + ``release`` per handshake, with a uid, on the
memory broker) at the default settings, and prints them beside the per-frame and per-handshake
server CPU that ``bench/run.py`` and ``bench/rooms.py`` measure, so the share does not depend on
how busy the shared machine is.
"""

from __future__ import annotations

import asyncio
import time
import timeit
from dataclasses import replace

from tidings.broker.memory import MemoryBroker
from tidings.config import LimitSettings
from tidings.core.limits import TokenBucket
from tidings.core.tokens import Claims
from tidings.hub.connection import Connection
from tidings.hub.limits import Limits


def per_frame_ns(n: int = 1_000_000) -> float:
    s = LimitSettings()
    bucket = TokenBucket(s.client_messages_per_second, s.client_messages_burst, 0.0)
    clock = time.monotonic
    # one take per frame at a pace the bucket allows (a refused frame does less work)
    best = min(timeit.repeat(lambda: bucket.take(clock() + 1e6), number=n, repeat=5))
    return best / n * 1e9


async def per_handshake_ns(n: int = 100_000) -> float:
    # defaults, but a burst no loop can exhaust: every handshake here passes every check
    settings = replace(LimitSettings(), handshakes_per_ip_burst=10**9)
    limits = Limits(settings=settings, broker=MemoryBroker())
    claims = Claims(raw={"uid": "jim"}, scopes=frozenset({"connect"}), exp=2**40, uid="jim")
    conn = Connection.__new__(Connection)
    conn.claims = claims
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for i in range(n):
            ip = f"10.0.{i % 200}.{i % 250}"
            limits.admit_handshake(ip)
            await limits.claim(claims, ip)
            limits.buckets(conn)
            await limits.release("jim", ip)
        best = min(best, time.perf_counter() - started)
    return best / n * 1e9


def main() -> None:
    frame = per_frame_ns()
    handshake = asyncio.run(per_handshake_ns())
    print(f"per client frame: {frame:.0f} ns (TokenBucket.take)")
    print(f"per handshake:    {handshake / 1000:.2f} µs (admit, claim, buckets, release)")


if __name__ == "__main__":
    main()
