"""``GET /metrics`` with prometheus-client (issue 12 point 4), and the Grafana dashboard."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import MS, Server, StartServer
from tests.server.test_backend_events import SECRET, Receiver, receiver

from tidings.config import Secret, WebhookSetting

__all__ = ["receiver"]  # the fixture, shared with the backend-event tests

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-dashboard.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server: Server, headers: dict[str, str] | None = None) -> Samples:
    async with server.http.get(f"{server.base}/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, node: str, **labels: str) -> float:
    return samples.get((name, frozenset({"node": node, **labels}.items())), 0.0)


async def test_metrics_count_connections_messages_and_deliveries(server: Server) -> None:
    """Gauges follow connections and subscriptions; messages in are counted by trigger,
    deliveries out per receiving socket, and each delivered message is timed once."""
    node = server.hub.metrics.node
    grants = {"channels": {"room": {"subscribe": True, "messages": {"m": {"publish": True}}}}}
    a, b = await server.connect(grants), await server.connect(grants)
    await a.subscribe("room")
    await b.subscribe("room")
    before = await scrape(server)
    assert value(before, "tidings_connections", node) == 2
    assert value(before, "tidings_subscriptions", node) == 2
    assert value(before, "tidings_channels", node) == 1
    await server.publish({"channel": "room", "event": "e", "data": 1, "store": 60})
    await a.send({"event": "m", "channel": "room", "data": 2})
    for client in (a, b):
        await client.expect("e")
    await b.expect("m")
    after = await scrape(server)
    assert value(after, "tidings_messages_in_total", node, kind="server.http") == 1
    assert value(after, "tidings_messages_in_total", node, kind="client.websocket") == 1
    delivered = value(after, "tidings_deliveries_out_total", node, kind="message")
    assert delivered - value(before, "tidings_deliveries_out_total", node, kind="message") == 4
    assert value(after, "tidings_publish_delivery_seconds_count", node) == 2
    assert value(after, "tidings_store_commit_seconds_count", node) == 1
    assert value(after, "tidings_store_batch_messages_sum", node) == 1
    assert value(after, "tidings_connections_opened_total", node) == 2
    await a.close()
    await b.close()
    for _ in range(100):
        if value(await scrape(server), "tidings_connections", node) == 0:
            break
        await asyncio.sleep(10 * MS)
    final = await scrape(server)
    assert value(final, "tidings_connections", node) == 0
    assert value(final, "tidings_subscriptions", node) == 0
    assert value(final, "tidings_channels", node) == 0


async def test_metrics_count_refusals_by_code(server: Server) -> None:
    """A refused publish and a refused handshake each count under their code."""
    node = server.hub.metrics.node
    before = await scrape(server)
    await server.publish({"channel": "", "event": "e"}, status=400)
    async with server.http.get(f"{server.base}/?token=nope", headers=_upgrade()) as resp:
        assert resp.status == 401
    after = await scrape(server)

    def refused(where: str, code: str) -> float:
        return value(after, "tidings_refusals_total", node, where=where, code=code) - value(
            before, "tidings_refusals_total", node, where=where, code=code
        )

    assert refused("publish", "INVALID_CHANNEL") == 1
    assert refused("handshake", "INVALID_CONNECT_TOKEN") == 1


def _upgrade() -> dict[str, str]:
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }


async def test_metrics_label_every_sample_with_the_node_name(start_server: StartServer) -> None:
    """TIDINGS_NODE_NAME names the node in every sample."""
    server = await start_server(node_name="edge-7")
    samples = await scrape(server)
    assert samples
    assert all(dict(labels).get("node") == "edge-7" for _, labels in samples)


async def test_metrics_token_is_required_when_set(start_server: StartServer) -> None:
    """With a metrics token, /metrics answers 401 without it (or with a wrong one)."""
    server = await start_server(metrics_token=Secret("scrape-me"))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-me"}):
        async with server.http.get(f"{server.base}/metrics", headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "UNAUTHORIZED"
    samples = await scrape(server, {"Authorization": "Bearer scrape-me"})
    assert ("tidings_connections", frozenset({("node", server.hub.metrics.node)})) in samples


# The Grafana dashboard

_FUNCTIONS = {
    "rate",
    "irate",
    "increase",
    "sum",
    "by",
    "without",
    "histogram_quantile",
    "le",
    "max",
    "min",
    "avg",
    "node",
    "kind",
    "code",
    "where",
    "topk",
    "clamp_min",
}


def _expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert exprs, "the dashboard has no queries"
    return exprs


def _names(expr: str) -> set[str]:
    """The metric names an expression reads (identifiers that are not functions or labels)."""
    without_strings = re.sub(r'"[^"]*"', "", expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    without_labels = re.sub(r"\{[^}]*\}", "", without_ranges)
    without_labels = re.sub(r"(?<![A-Za-z_])\d[\d.]*(?:[eE][-+]?\d+)?", "", without_labels)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_labels))
    return {w for w in words if w not in _FUNCTIONS and not w.startswith("$")}


async def test_grafana_dashboard_names_only_exported_metrics(
    start_server: StartServer, receiver: Receiver, tmp_path: Path
) -> None:
    """Every query of docs/grafana-dashboard.json names a metric a node exports."""
    server = await start_server(
        store=f"sqlite:///{tmp_path / 'm.db'}",
        webhooks=(WebhookSetting(receiver.url, (Secret(SECRET),)),),
    )
    # exercise every histogram so its sample names exist
    client = await server.connect({"channels": {"room": {"subscribe": True}}})
    await client.subscribe("room")
    await server.publish({"channel": "room", "event": "e", "store": 60, "emitPubSubEvent": True})
    await client.expect("e")
    await receiver.wait_for("hotsock.messagePublished")
    await server.publish({"channel": "", "event": "e"}, status=400)  # a refusal
    exported = {name for name, _ in await scrape(server)}
    for expr in _expressions():
        for name in _names(expr):
            assert name in exported, f"{name!r} in {expr!r} is not exported"


def test_dashboard_check_catches_an_unknown_metric() -> None:
    """The name extraction above does find metric names (so the check can fail)."""
    names = _names('sum by (node) (rate(tidings_nope_total{node=~"$node"}[5m]))')
    assert names == {"tidings_nope_total"}
