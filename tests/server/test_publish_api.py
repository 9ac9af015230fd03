"""POST /publish (spec §15) and the HTTP error contract (§18.3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from tests.conftest import API_KEY2, MS, Server, StartServer
from tests.faults import CuttingProxy
from tests.services import postgres_schema

from tidings.errors import StoreUnavailable

OPEN = {"channels": {"room": {"subscribe": True}}}


async def _post(
    server: Server, body: bytes | str, headers: dict[str, str] | None = None
) -> tuple[int, object]:
    async with server.http.post(f"{server.base}/publish", data=body, headers=headers or {}) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_publish_returns_202_and_delivers(server: Server) -> None:
    client = await server.connect(OPEN)
    await client.subscribe("room")
    body = await server.publish({"channel": "room", "event": "e", "data": [1, "two"]})
    assert body == {"channel": "room", "event": "e"}
    assert (await client.recv())["data"] == [1, "two"]


async def test_publish_with_second_api_key(server: Server) -> None:
    await server.publish({"channel": "room", "event": "e"}, key=API_KEY2)


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", "Basic test-api-key-1", "Bearer tést-ключ", "Bearer"]
)
async def test_publish_with_bad_key_gets_401(server: Server, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    status, body = await _post(server, b'{"channel":"room","event":"e"}', headers)
    assert status == 401
    assert body == {"error": {"code": "UNAUTHORIZED", "message": "missing or invalid API key"}}


async def test_publish_eager_id_matches_delivered_id(server: Server) -> None:
    client = await server.connect(OPEN)
    await client.subscribe("room")
    body = await server.publish({"channel": "room", "event": "e", "eagerIdGeneration": True})
    assert (await client.recv())["id"] == body["id"]


async def test_publish_deduplication_drops_repeat(server: Server) -> None:
    """A repeated deduplicationId is accepted (202) but not delivered; eager returns the
    original ID."""
    client = await server.connect(OPEN)
    await client.subscribe("room")
    msg = {"channel": "room", "event": "e", "deduplicationId": "d-1", "eagerIdGeneration": True}
    first = await server.publish(msg)
    second = await server.publish(msg)
    assert first == second
    assert (await client.recv())["id"] == first["id"]
    await client.nothing()
    await server.publish({**msg, "deduplicationId": "d-2"})
    assert (await client.recv())["id"] != first["id"]


async def test_publish_array_in_order(server: Server) -> None:
    client = await server.connect(OPEN)
    await client.subscribe("room")
    items = [
        {"channel": "room", "event": "n", "data": i, "eagerIdGeneration": i % 2 == 0}
        for i in range(20)
    ]
    results = await server.publish(items)
    assert [r.get("id") is not None for r in results] == [i % 2 == 0 for i in range(20)]
    got = [await client.recv() for _ in range(20)]
    assert [m["data"] for m in got] == list(range(20))
    assert [m["id"] for m in got] == sorted(m["id"] for m in got)


async def test_publish_array_with_one_bad_item_publishes_nothing(server: Server) -> None:
    client = await server.connect(OPEN)
    await client.subscribe("room")
    body = await server.publish(
        [{"channel": "room", "event": "ok"}, {"channel": "room", "event": "hotsock.x"}], status=400
    )
    assert body["error"]["code"] == "INVALID_EVENT" and "message 1" in body["error"]["message"]
    await client.nothing()


@pytest.mark.parametrize(
    "body,code",
    [
        (b"", "INVALID_MESSAGE"),
        (b"{", "INVALID_MESSAGE"),
        (b"42", "INVALID_MESSAGE"),
        (b"[]", "INVALID_MESSAGE"),
        (b'{"event":"e"}', "INVALID_CHANNEL"),
        (b'{"channel":"a b","event":"e"}', "INVALID_CHANNEL"),
        (b'{"channel":"' + b"c" * 257 + b'","event":"e"}', "INVALID_CHANNEL"),
        (b'{"channel":"room"}', "INVALID_EVENT"),
        (b'{"channel":"room","event":7}', "INVALID_EVENT"),
        (b'{"channel":"room","event":"hotsock.connected"}', "INVALID_EVENT"),
        (b'{"channel":"room","event":"e","data":"' + b"x" * 32800 + b'"}', "DATA_TOO_LARGE"),
        (b'{"channel":"room","event":"e","store":-2}', "INVALID_MESSAGE"),
        (b'{"channel":"room","event":"e","store":3155695201}', "INVALID_MESSAGE"),
        (b'{"channel":"room","event":"e","store":"60"}', "INVALID_MESSAGE"),
        (b'{"channel":"room","event":"e","store":1.5}', "INVALID_MESSAGE"),
        (b'{"channel":"room","event":"e","deduplicationId":5}', "INVALID_MESSAGE"),
        (b'{"channel":"room","event":"e","eagerIdGeneration":"yes"}', "INVALID_MESSAGE"),
        (b"[" * 3000 + b"]" * 3000, "INVALID_MESSAGE"),
    ],
)
async def test_publish_bad_body_gets_400(server: Server, body: bytes, code: str) -> None:
    status, payload = await _post(server, body, {"Authorization": "Bearer test-api-key-1"})
    assert status == 400, payload
    assert isinstance(payload, dict) and payload["error"]["code"] == code
    await server.publish({"channel": "room", "event": "still-fine"})


async def test_publish_oversized_body_gets_413(server: Server) -> None:
    status, payload = await _post(
        server,
        b'{"channel":"room","event":"e","data":"' + b"x" * 300_000 + b'"}',
        {"Authorization": "Bearer test-api-key-1"},
    )
    assert status == 413
    assert isinstance(payload, dict) and payload["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_publish_body_arriving_in_pieces_is_read_whole(server: Server) -> None:
    """A large body sent in several TCP writes, with pauses between them, is read to its end
    (a read that returned only what had arrived so far answered 400 "invalid JSON")."""
    messages = [{"channel": "room", "event": "e", "data": "x" * 100} for _ in range(1000)]
    raw = orjson.dumps(messages)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 16384):
            yield raw[start : start + 16384]
            await asyncio.sleep(5 * MS)

    async with server.http.post(
        f"{server.base}/publish",
        data=pieces(),
        headers={"Authorization": "Bearer test-api-key-1", "Content-Length": str(len(raw))},
    ) as resp:
        assert resp.status == 202, await resp.text()
        assert len(await resp.json()) == 1000
    status, payload = await _post(
        server, b"[" + b" " * 300_000 + b"]", {"Authorization": "Bearer test-api-key-1"}
    )
    assert status == 413
    assert isinstance(payload, dict) and payload["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_unknown_route_and_wrong_method_are_json(server: Server) -> None:
    async with server.http.get(f"{server.base}/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "NOT_FOUND"
    async with server.http.get(f"{server.base}/publish") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_healthz_and_metrics(server: Server) -> None:
    async with server.http.get(f"{server.base}/healthz") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
    await server.connect({})
    async with server.http.get(f"{server.base}/metrics") as resp:
        assert f'tidings_connections{{node="{server.hub.metrics.node}"}} 1.0' in await resp.text()


async def test_publish_concurrent_channels_keep_per_channel_order(server: Server) -> None:
    client = await server.connect({"channels": {"*": {"subscribe": True}}})
    for ch in ("a", "b", "c"):
        await client.subscribe(ch)
    await asyncio.gather(
        *[
            server.publish({"channel": ch, "event": "n", "data": i})
            for i in range(30)
            for ch in ("a", "b", "c")
        ]
    )
    seen: dict[str, list[str]] = {"a": [], "b": [], "c": []}
    for _ in range(90):
        msg = await client.recv()
        seen[msg["channel"]].append(msg["id"])
    for ids in seen.values():
        assert len(ids) == 30 and ids == sorted(ids)


class FlakyStore:
    """Wraps the real store and reports the backend unreachable for the first ``failures``
    appends (PostgreSQL outages cannot be produced on demand here)."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    async def append(self, records: Any) -> list[str]:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("backend down")
        stored: list[str] = await self.inner.append(records)
        return stored

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_stored_publish_fails_503_and_retry_with_same_dedup_id_lands(
    start_server: StartServer,
) -> None:
    """A failed stored publish is not acknowledged, and its deduplicationId stays usable."""
    server = await start_server(wrap_store=lambda store: FlakyStore(store, failures=1))
    client = await server.connect(OPEN)
    await client.subscribe("room")
    msg = {
        "channel": "room",
        "event": "e",
        "store": 60,
        "deduplicationId": "retry-me",
        "eagerIdGeneration": True,
    }
    body = await server.publish(msg, status=503)
    assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
    await client.nothing()
    ok = await server.publish(msg)
    assert (await client.recv())["id"] == ok["id"]
    assert await server.publish(msg) == ok  # now a real duplicate
    await client.nothing()


async def _stored(store: Any, channel: str) -> list[str]:
    return [r.id for r in await store.list_messages(channel, now_ms=0, limit=1000)]


async def test_stored_publish_retry_after_a_restart_stores_nothing(
    start_server: StartServer, tmp_path: Any
) -> None:
    """A publisher whose 202 was lost in a crash resends after the restart: it gets the
    original 202 (and ID) and nothing is stored twice, though the broker's memory is gone."""
    url = f"sqlite:///{tmp_path}/t.db"
    msg = {
        "channel": "room",
        "event": "e",
        "store": -1,
        "deduplicationId": "after-crash",
        "eagerIdGeneration": True,
    }
    first = await start_server(store=url)
    original = await first.publish(msg)
    await first.node.stop()
    second = await start_server(store=url)
    client = await second.connect(OPEN)
    await client.subscribe("room")
    assert await second.publish(msg) == original
    await client.nothing()
    assert await _stored(second.node.store, "room") == [original["id"]]


async def test_stored_publish_duplicates_within_one_batch_store_one(
    start_server: StartServer, tmp_path: Any
) -> None:
    """An array publish repeating a deduplicationId stores and delivers it once."""
    server = await start_server(store=f"sqlite:///{tmp_path}/t.db")
    client = await server.connect(OPEN)
    await client.subscribe("room")
    one = {"channel": "room", "event": "e", "store": 60, "deduplicationId": "twice"}
    answers = await server.publish([{**one, "eagerIdGeneration": True}] * 3)
    assert len({a["id"] for a in answers}) == 1
    assert (await client.recv())["id"] == answers[0]["id"]
    await client.nothing()
    assert await _stored(server.node.store, "room") == [answers[0]["id"]]


@pytest.mark.integration
async def test_stored_publish_in_doubt_answers_outcome_unknown_and_retry_is_safe(
    start_server: StartServer,
) -> None:
    """PostgreSQL commits but the reply is lost and the server stays away: the publish
    answers 503 OUTCOME_UNKNOWN, and the retry with the same deduplicationId gets the original
    ID without storing or delivering it twice."""
    proxy = CuttingProxy(5432)
    await proxy.start()
    try:
        async with postgres_schema("doubt") as schema:
            url = (
                f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={schema}"
                "&pool_min_size=1&pool_max_size=1"
            )
            server = await start_server(store=url)
            client = await server.connect(OPEN)
            await client.subscribe("room")
            msg = {
                "channel": "room",
                "event": "e",
                "store": 60,
                "deduplicationId": "in-doubt",
                "eagerIdGeneration": True,
            }
            proxy.cut_after(b"COMMIT")
            body = await server.publish(msg, status=503)
            assert proxy.cuts == 1
            assert body["error"]["code"] == "OUTCOME_UNKNOWN"
            assert "deduplicationId" in body["error"]["message"]
            await client.nothing()
            proxy.heal()
            [stored] = await _stored(server.node.store, "room")
            assert await server.publish(msg) == {"channel": "room", "event": "e", "id": stored}
            await client.nothing()
            assert await _stored(server.node.store, "room") == [stored]
            await server.node.stop()
    finally:
        await proxy.aclose()
