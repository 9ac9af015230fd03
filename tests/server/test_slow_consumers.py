"""The slow-consumer rule through real sockets: a stalled reader is closed 1013 by the write
timeout, a slow but steady reader survives a burst, and the byte bound still caps memory."""

from __future__ import annotations

import asyncio
import socket

import pytest
import websockets
from tests.conftest import MS, Client, Server, StartServer, make_token

OPEN = {"channels": {"room": {"subscribe": True}}}


async def connect_small(server: Server) -> Client:
    """A subscriber to ``room`` with a 4 KiB receive buffer: the kernel absorbs little, so what
    it does not read waits on the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # also turns autotuning off
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.node.port))
    ws = await websockets.connect(
        f"{server.ws_url}?token={make_token(OPEN)}",
        sock=sock,
        max_size=None,
        compression=None,
        max_queue=4,
    )
    client = Client(ws)
    client.connected = await client.expect("hotsock.connected")
    await client.subscribe("room")
    return client


async def close_code(client: Client) -> int | None:
    """Read until the connection ends; the close code received (None if it was cut)."""
    client.ws.transport.resume_reading()
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await client.ws.recv()
    return None if info.value.rcvd is None else info.value.rcvd.code


def record_closes(server: Server, client: Client) -> list[tuple[int, str]]:
    """The (code, reason) pairs the hub closes ``client``'s real outlet with, in order."""
    outlet = server.hub.connections[client.id]._outlet
    closes: list[tuple[int, str]] = []
    close = outlet.close

    def recording(code: int, reason: str) -> None:
        closes.append((code, reason))
        close(code, reason)

    outlet.close = recording  # type: ignore[method-assign]
    return closes


async def wait_evicted(server: Server, client: Client, closes: list[tuple[int, str]]) -> None:
    """Wait until the hub has dropped ``client``, and check it was closed as a slow consumer."""
    for _ in range(3000):
        if client.id not in server.hub.connections:
            break
        await asyncio.sleep(10 * MS)
    else:
        raise AssertionError(f"{client.id} still connected")
    assert closes[:1] == [(1013, "slow consumer")]


@pytest.mark.timeout(60)
async def test_stalled_reader_closed_by_write_timeout(start_server: StartServer) -> None:
    """Fewer frames than any count bound and bytes far under the byte bound, then nothing more
    is published: the reader that takes none of them is still closed 1013, by the deadline."""
    server = await start_server(queue_write_timeout_seconds=0.5, queue_max_bytes=256 << 20)
    healthy = await connect_small(server)
    stuck = await connect_small(server)
    stuck.ws.transport.pause_reading()
    closes = record_closes(server, stuck)
    payload = "s" * 32_000
    for _ in range(100):  # 700 frames, 22 MB: past the kernel's buffers, so frames wait
        await server.publish([{"channel": "room", "event": "m", "data": payload}] * 7)
        for _ in range(7):
            assert (await healthy.recv(timeout=10_000 * MS))["data"] == payload
    await wait_evicted(server, stuck, closes)
    assert list(server.hub.connections) == [healthy.id]
    assert await close_code(stuck) in (1013, None)
    await healthy.send({"event": "hotsock.ping"})
    await healthy.expect("hotsock.pong")


@pytest.mark.timeout(120)
async def test_slow_steady_readers_survive_a_burst(start_server: StartServer) -> None:
    """5,000 × 1 KiB published at once to readers that take their frames slowly: each backlog
    passes thousands of frames, yet they keep making progress, so none is closed and each gets
    every message in order."""
    server = await start_server()
    readers = [await connect_small(server) for _ in range(3)]
    total, batch = 5000, 200  # 200 × 1 KiB stays under the body limit
    payload = "r" * 1000

    async def read_slowly(client: Client) -> list[int]:
        got: list[int] = []
        while len(got) < total:
            frame = await client.recv(timeout=30_000 * MS)
            got.append(frame["data"]["n"])
            if len(got) % 50 == 0:
                await asyncio.sleep(5 * MS)
        return got

    tasks = [asyncio.create_task(read_slowly(c)) for c in readers]
    publishes = asyncio.gather(
        *[
            server.publish(
                [
                    {"channel": "room", "event": "m", "data": {"n": n, "p": payload}}
                    for n in range(start, start + batch)
                ]
            )
            for start in range(0, total, batch)
        ]
    )
    try:
        await publishes
        results = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    batches = [list(range(s, s + batch)) for s in range(0, total, batch)]
    for got in results:
        # batches may be published in any order; within one, messages keep theirs
        assert sorted(got) == list(range(total))
        starts = [got[i] for i in range(0, total, batch)]
        assert [got[i : i + batch] for i in range(0, total, batch)] == [
            batches[s // batch] for s in starts
        ]
    assert sorted(server.hub.connections) == sorted(c.id for c in readers)


@pytest.mark.timeout(60)
async def test_byte_bound_still_evicts(start_server: StartServer) -> None:
    """With a write timeout far away, a backlog that grows past ``queue_max_bytes`` is closed
    1013 at once, while a healthy reader gets everything."""
    server = await start_server(queue_write_timeout_seconds=600, queue_max_bytes=2 << 20)
    healthy = await connect_small(server)
    stuck = await connect_small(server)
    stuck.ws.transport.pause_reading()
    closes = record_closes(server, stuck)
    payload = "b" * 32_000
    for _ in range(100):
        await server.publish([{"channel": "room", "event": "m", "data": payload}] * 7)
        for _ in range(7):
            assert (await healthy.recv(timeout=10_000 * MS))["data"] == payload
        if stuck.id not in server.hub.connections:
            break
    await wait_evicted(server, stuck, closes)
    assert list(server.hub.connections) == [healthy.id]
    assert await close_code(stuck) in (1013, None)


def test_defaults_bound_memory_beyond_the_old_frame_count() -> None:
    from tidings.config import Settings

    limits = Settings.load(environ={}).limits
    assert limits.queue_max_bytes >= 8 * limits.queue_max_frames * 1024
    assert limits.queue_write_timeout_seconds == 10.0
    env = {"TIDINGS_QUEUE_WRITE_TIMEOUT_SECONDS": "2.5"}
    assert Settings.load(environ=env).limits.queue_write_timeout_seconds == 2.5
