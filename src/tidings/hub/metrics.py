"""This node's Prometheus metrics (``prometheus-client``), served by ``GET /metrics``.

Each node has its own registry (several nodes may share a process in tests), and every metric
carries a ``node`` label. Hot paths touch pre-bound label children only, once per batch where
they can; figures that already exist elsewhere (live connections, subscriptions, channels,
broker round trips, webhook counters, refusals) are read at scrape time by a collector instead
of being counted twice.

Names (all prefixed ``tidings_``)::

    connections, subscriptions, channels            gauges
    connections_opened_total, schedules_run_total   counters
    messages_in_total{kind}                         counter: server.http, client.websocket, ...
    deliveries_out_total{kind}                      counter: message, event (socket writes)
    refusals_total{where, code}                     counter: every refused request
    publish_delivery_seconds                        histogram: ID minted -> written to sockets
    store_commit_seconds, store_batch_messages      histograms of each group commit
    webhook_delivery_seconds                        histogram of each webhook POST
    broker_round_trips_total, broker_round_trip_seconds_total, broker_reconnects_total
    webhooks_delivered_total, webhook_attempts_failed_total, webhooks_dropped_total
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "NodeMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)

Gauges = Callable[[], dict[str, float]]
Counters = Callable[[], Iterable[tuple[str, dict[str, str], float]]]


class NodeMetrics:
    """The metric objects of one node; ``exposition()`` renders them."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # counted once per message (or batch) on the publishing and fan-out paths: plain-Python
        # counters (no lock, no checks) read at scrape time, like the histogram below
        self._in_children: dict[str, LeanCounter] = {}
        self.delivered_messages = LeanCounter()
        self.delivered_events = LeanCounter()
        r.register(_ScrapeCollector(node, dict, self._counted))
        # observed once per message on the fan-out path: a plain-Python histogram (no lock, one
        # bisect), rendered at scrape time, costs a fraction of prometheus-client's
        self.publish_delivery = LeanHistogram(_LATENCY_BUCKETS)
        r.register(
            _HistogramCollector(
                "tidings_publish_delivery_seconds",
                "From a message's ID being minted in its publishing turn to its frame being "
                "written to this node's sockets.",
                node,
                self.publish_delivery,
            )
        )
        self.store_commit = Histogram(
            "tidings_store_commit_seconds",
            "Duration of each store append (one group commit) as the publisher waits for it.",
            ["node"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(node)
        self.store_batch = Histogram(
            "tidings_store_batch_messages",
            "Messages per store append.",
            ["node"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        ).labels(node)
        self.webhook_delivery = Histogram(
            "tidings_webhook_delivery_seconds",
            "Duration of each webhook delivery attempt (POST to answer).",
            ["node"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(node)

    # Public methods

    def message_in(self, kind: str, count: int = 1) -> None:
        """Count accepted messages of one trigger (``server.http``, ``client.websocket``…)."""
        child = self._in_children.get(kind)
        if child is None:
            child = self._in_children[kind] = LeanCounter()
        child.value += count

    def _counted(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for kind, counter in list(self._in_children.items()):
            yield "messages_in", {"kind": kind}, counter.value
        yield "deliveries_out", {"kind": "message"}, self.delivered_messages.value
        yield "deliveries_out", {"kind": "event"}, self.delivered_events.value

    def watch(self, gauges: Gauges, counters: Counters) -> None:
        """Read ``gauges()`` (name -> value) and ``counters()`` ((name, labels, value) rows) at
        every scrape; names get the ``tidings_`` prefix, counters also ``_total``."""
        self.registry.register(_ScrapeCollector(self.node, gauges, counters))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric of this node."""
        return generate_latest(self.registry)


class LeanCounter:
    """A counter for one event loop (no lock)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class LeanHistogram:
    """Bucket counts and a sum, for one event loop (no lock)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _HistogramCollector(Collector):
    def __init__(self, name: str, doc: str, node: str, histogram: LeanHistogram) -> None:
        self._name, self._doc, self._node, self._h = name, doc, node, histogram

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=["node"])
        h = self._h
        cumulative, buckets = 0, []
        for bound, count in zip([*h.bounds, float("inf")], h.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric([self._node], buckets, h.sum)
        yield family


class _ScrapeCollector(Collector):
    def __init__(self, node: str, gauges: Gauges, counters: Counters) -> None:
        self._node = node
        self._gauges = gauges
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        for name, value in self._gauges().items():
            gauge = GaugeMetricFamily(f"tidings_{name}", _HELP.get(name, name), labels=["node"])
            gauge.add_metric([self._node], value)
            yield gauge
        families: dict[str, CounterMetricFamily] = {}
        for name, labels, value in self._counters():
            family = families.get(name)
            if family is None:
                family = families[name] = CounterMetricFamily(
                    f"tidings_{name}", _HELP.get(name, name), labels=["node", *labels]
                )
            family.add_metric([self._node, *labels.values()], value)
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names vary with what is configured: nothing to check up front


_HELP = {
    "messages_in": "Messages accepted for publishing, by trigger.",
    "deliveries_out": "Frames written to subscribers' sockets by channel fan-out, by kind.",
    "connections": "Live WebSocket connections on this node.",
    "subscriptions": "Live channel subscriptions on this node.",
    "channels": "Channels with at least one subscriber on this node.",
    "connections_opened": "WebSocket connections opened since start.",
    "schedules_run": "Scheduled publications this node ran.",
    "refusals": "Refused requests, by entry point and error code.",
    "broker_round_trips": "Commands sent to the broker.",
    "broker_round_trip_seconds": "Total time spent waiting for broker commands.",
    "broker_reconnects": "Times the broker's subscriber connection was re-established.",
    "webhooks_delivered": "Webhook deliveries acknowledged by their endpoint.",
    "webhook_attempts_failed": "Webhook delivery attempts that failed (and will be retried).",
    "webhooks_dropped": "Webhook deliveries given up on.",
}
