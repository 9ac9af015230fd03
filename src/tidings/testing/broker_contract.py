"""The contract every ``Broker`` must pass, shipped for third-party backends too.

Use it from a pytest module (pytest-asyncio required, any ``asyncio_mode``)::

    import pytest
    from tidings.testing.broker_contract import BrokerContract, BrokerFactory

    class TestMyBroker(BrokerContract):
        shared = True  # brokers from make_broker are nodes of one cluster
        filters_by_interest = True  # only subscribed channels are delivered

        @pytest.fixture
        def make_broker(self) -> BrokerFactory:
            return lambda: MyBroker("my://server", namespace="test-42")

``make_broker`` must return a new, **unstarted** broker each time it is called; for a
``shared`` backend every broker it returns must join the same cluster (same server, same key
prefix), and each one plays one node. The suite starts and closes brokers itself.

Channel turns are used the way the hub uses them: one lane per channel per node, so a node's
turns on one channel never overlap, while different nodes race. Timeouts scale with
``TIDINGS_TESTS_TIMEOUT_FACTOR``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import ClassVar

import pytest
import pytest_asyncio

from tidings.broker.base import Broker, Delivery, Minter
from tidings.core.ids import is_ulid, ulid_to_int
from tidings.core.presence import Change

__all__ = ["BrokerContract", "BrokerFactory", "Node", "NodeFactory"]

BrokerFactory = Callable[[], Broker]

MS = 0.001 * float(os.environ.get("TIDINGS_TESTS_TIMEOUT_FACTOR", "1"))


class Node:
    """A started broker and everything it delivered, in delivery order."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.received: list[tuple[str, Delivery]] = []
        self.commands: list[bytes] = []  # what broadcasts ran here, in arrival order
        self._arrived = asyncio.Event()

    async def control(self, command: bytes) -> bytes:
        """The ``ControlFn`` handed to ``broker.start``: answers ``<node ID>:<command>``."""
        self.commands.append(command)
        return self.broker.node_id.encode() + b":" + command

    def deliver(self, channel: str, deliveries: Sequence[Delivery]) -> None:
        """The ``DeliverFn`` handed to ``broker.start``."""
        self.received.extend((channel, d) for d in deliveries)
        self._arrived.set()

    def on(self, channel: str) -> list[Delivery]:
        """What was delivered for ``channel``, in order."""
        return [d for ch, d in self.received if ch == channel]

    def payloads(self, channel: str) -> list[bytes]:
        return [d.payload for d in self.on(channel)]

    async def wait_for(self, channel: str, count: int, timeout: float = 5000 * MS) -> list[bytes]:
        """Wait until ``count`` deliveries arrived for ``channel``; return their payloads."""
        async with asyncio.timeout(timeout):
            while len(self.on(channel)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.payloads(channel)


NodeFactory = Callable[[], Awaitable[Node]]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class BrokerContract:
    """Tests any ``Broker`` must pass. Subclass as ``Test…`` and define ``make_broker``."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    shared: ClassVar[bool] = True
    """True when brokers from ``make_broker`` are nodes of one cluster (enables the tests with
    several nodes). False for a one-node broker such as ``MemoryBroker``."""

    filters_by_interest: ClassVar[bool] = True
    """True when only channels the node subscribed to are delivered. ``MemoryBroker`` hands
    every publish to its one hub, which filters by its own subscriptions."""

    # Fixtures

    @pytest.fixture
    def make_broker(self) -> BrokerFactory:
        """Override: return a factory of new, unstarted brokers (one cluster if ``shared``)."""
        raise NotImplementedError("a BrokerContract subclass must define the make_broker fixture")

    @pytest_asyncio.fixture
    async def start_node(self, make_broker: BrokerFactory) -> AsyncIterator[NodeFactory]:
        """Factory of started nodes, all closed after the test."""
        nodes: list[Node] = []

        async def start() -> Node:
            node = Node(make_broker())
            nodes.append(node)
            await node.broker.start(node.deliver, control=node.control)
            return node

        try:
            yield start
        finally:
            for node in nodes:
                await node.broker.aclose()

    @pytest_asyncio.fixture
    async def node(self, start_node: NodeFactory) -> Node:
        return await start_node()

    def need_shared(self) -> None:
        if not self.shared:
            pytest.skip("backend has one node only")

    def need_filtering(self) -> None:
        if not self.filters_by_interest:
            pytest.skip("backend delivers every channel; the hub filters")

    # Delivery

    async def test_broker_delivers_publishes_in_call_order(self, node: Node) -> None:
        """Sequential publishes on a channel arrive once each, in call order."""
        await node.broker.subscribe("room")
        sent = [b'{"n":%d}' % i for i in range(50)]
        for payload in sent:
            await node.broker.publish("room", [Delivery(payload)])
        assert await node.wait_for("room", len(sent)) == sent

    async def test_broker_keeps_a_batch_whole_and_in_order(self, node: Node) -> None:
        """A batch arrives in order with payloads and excluded connection IDs intact, even when
        it is large (several hundred KiB) or holds one message of over 512 KiB."""
        await node.broker.subscribe("room")
        batch = [
            Delivery(
                b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i * 97 % 4000)), f"c{i}" if i % 3 else None
            )
            for i in range(300)
        ]
        batch[3] = Delivery('{"text":"héllo ✓ 日本語 😀"}'.encode())
        batch[7] = Delivery(b"[" + b"1," * 300_000 + b"1]", "big")
        batch[8] = Delivery(b'""', "")
        await node.broker.publish("room", batch)
        received = await node.wait_for("room", len(batch))
        assert received == [d.payload for d in batch]
        excludes = [d.exclude or None for d in node.on("room")]
        assert excludes == [d.exclude or None for d in batch]

    async def test_broker_publish_without_subscribers_is_accepted(self, node: Node) -> None:
        """Publishing to a channel nobody subscribed to is not an error."""
        await node.broker.publish("nobody.here", [Delivery(b"1")])

    async def test_broker_delivers_only_subscribed_channels(self, node: Node) -> None:
        """A node receives nothing for channels it never subscribed to."""
        self.need_filtering()
        await node.broker.subscribe("wanted")
        await node.broker.publish("unwanted", [Delivery(b"no")])
        await node.broker.publish("wanted", [Delivery(b"yes")])
        assert await node.wait_for("wanted", 1) == [b"yes"]
        assert node.on("unwanted") == []

    async def test_broker_unsubscribe_stops_delivery(self, node: Node) -> None:
        """After ``unsubscribe`` returns, the channel's later publishes are not delivered."""
        self.need_filtering()
        await node.broker.subscribe("a")
        await node.broker.subscribe("barrier")
        await node.broker.publish("a", [Delivery(b"1")])
        assert await node.wait_for("a", 1) == [b"1"]
        await node.broker.unsubscribe("a")
        await node.broker.publish("a", [Delivery(b"2")])
        await node.broker.publish("barrier", [Delivery(b"b")])
        await node.wait_for("barrier", 1)
        await asyncio.sleep(50 * MS)
        assert node.payloads("a") == [b"1"]

    async def test_broker_resubscribe_after_unsubscribe_delivers_again(self, node: Node) -> None:
        """Interest can come back: subscribe, unsubscribe, subscribe gives deliveries again."""
        await node.broker.subscribe("a")
        await node.broker.unsubscribe("a")
        await node.broker.subscribe("a")
        await node.broker.publish("a", [Delivery(b"again")])
        assert await node.wait_for("a", 1) == [b"again"]

    async def test_broker_subscribe_and_unsubscribe_are_idempotent(self, node: Node) -> None:
        """Repeated subscribes still deliver each message exactly once; unsubscribing a channel
        twice, or one never subscribed, is fine."""
        for _ in range(3):
            await node.broker.subscribe("room")
        await node.broker.publish("room", [Delivery(b"1"), Delivery(b"2")])
        await node.broker.publish("room", [Delivery(b"3")])
        assert await node.wait_for("room", 3) == [b"1", b"2", b"3"]
        await asyncio.sleep(50 * MS)
        assert node.payloads("room") == [b"1", b"2", b"3"]
        await node.broker.unsubscribe("never")
        await node.broker.unsubscribe("room")
        await node.broker.unsubscribe("room")

    async def test_broker_delivers_to_every_interested_node_once(
        self, start_node: NodeFactory
    ) -> None:
        """Two subscribed nodes each get every message once, including the publisher's own
        subscribers; an uninterested publisher node gets none."""
        self.need_shared()
        a, b, c = await start_node(), await start_node(), await start_node()
        await a.broker.subscribe("room")
        await b.broker.subscribe("room")
        await c.broker.publish("room", [Delivery(b"1"), Delivery(b"2", "x")])
        await a.broker.publish("room", [Delivery(b"3")])
        for n in (a, b):
            assert await n.wait_for("room", 3) == [b"1", b"2", b"3"]
        await asyncio.sleep(50 * MS)
        assert a.payloads("room") == b.payloads("room") == [b"1", b"2", b"3"]
        if self.filters_by_interest:
            assert c.on("room") == []

    async def test_broker_closed_node_receives_nothing(self, start_node: NodeFactory) -> None:
        """``aclose`` stops delivery and is idempotent."""
        self.need_shared()
        a, b = await start_node(), await start_node()
        await a.broker.subscribe("room")
        await b.broker.subscribe("room")
        await a.broker.aclose()
        await a.broker.aclose()
        await b.broker.publish("room", [Delivery(b"after")])
        assert await b.wait_for("room", 1) == [b"after"]
        await asyncio.sleep(50 * MS)
        assert a.on("room") == []

    async def test_broker_aclose_is_idempotent(self, make_broker: BrokerFactory) -> None:
        """A started broker closes twice without error; an unstarted one closes too."""
        started = make_broker()
        await started.start(lambda channel, deliveries: None)
        await started.aclose()
        await started.aclose()
        unstarted = make_broker()
        await unstarted.aclose()
        await unstarted.aclose()

    # Claims

    async def test_broker_claim_first_wins(self, start_node: NodeFactory) -> None:
        """The first claim gets None; later claims (on any node) get the first value."""
        a = await start_node()
        assert await a.broker.claim_once("jti:1", "first", 60_000) is None
        assert await a.broker.claim_once("jti:1", "second", 60_000) == "first"
        if self.shared:
            b = await start_node()
            assert await b.broker.claim_once("jti:1", "third", 60_000) == "first"

    @pytest.mark.parametrize("ttl_ms", [0, -5, 10**30])
    async def test_broker_claim_lifetime_is_clamped(self, node: Node, ttl_ms: int) -> None:
        """An absurd lifetime (0, negative, 10**30 ms) is clamped, not an error."""
        assert await node.broker.claim_once("jti:absurd", "v", ttl_ms) is None
        if ttl_ms > 0:
            assert await node.broker.claim_once("jti:absurd", "w", 60_000) == "v"

    async def test_broker_claims_are_per_key(self, node: Node) -> None:
        assert await node.broker.claim_once("dedup:a", "1", 60_000) is None
        assert await node.broker.claim_once("dedup:b", "2", 60_000) is None
        assert await node.broker.claim_once("dedup:a", "3", 60_000) == "1"

    async def test_broker_claim_expires(self, node: Node) -> None:
        """A claim is forgotten once its TTL has passed."""
        ttl_ms = max(1, int(100 * MS * 1000))
        assert await node.broker.claim_once("jti:short", "v1", ttl_ms) is None
        assert await node.broker.claim_once("jti:short", "v2", ttl_ms) == "v1"
        await asyncio.sleep(3 * ttl_ms / 1000)
        assert await node.broker.claim_once("jti:short", "v3", 60_000) is None

    async def test_broker_release_needs_the_claimed_value(self, start_node: NodeFactory) -> None:
        """``release`` with another value keeps the claim; with its value frees the key (on
        every node); releasing again, or an unknown key, is fine."""
        a = await start_node()
        b = await start_node() if self.shared else a
        assert await a.broker.claim_once("dedup:x", "mine", 60_000) is None
        await b.broker.release("dedup:x", "not-mine")
        assert await b.broker.claim_once("dedup:x", "other", 60_000) == "mine"
        await a.broker.release("dedup:x", "mine")
        await a.broker.release("dedup:x", "mine")
        await a.broker.release("dedup:unknown", "v")
        assert await b.broker.claim_once("dedup:x", "other", 60_000) is None

    # Ordering

    async def test_broker_turn_ids_increase_whatever_the_clock(self, node: Node) -> None:
        """IDs minted in turns are ULIDs and strictly increase, even when the clock reading
        goes backwards within a turn or between turns."""
        now = _now_ms()
        ids: list[str] = []
        async with node.broker.ordering("room") as mint:
            ids += [mint(now), mint(now), mint(now - 1000)]
        async with node.broker.ordering("room") as mint:
            ids += [mint(now - 60_000), mint(now + 1)]
        assert all(is_ulid(i) for i in ids)
        values = [ulid_to_int(i) for i in ids]
        assert values == sorted(values) and len(set(values)) == len(values)

    async def test_broker_publish_now_delivers_in_order_or_declines(self, node: Node) -> None:
        """``publish_now`` either declines without calling ``build`` (and keeps declining), or
        delivers what ``build`` returns at once, after earlier publishes, with IDs above those
        minted in earlier turns."""
        await node.broker.subscribe("room")
        now = _now_ms()
        async with node.broker.ordering("room") as mint:
            first = mint(now)
            await node.broker.publish("room", [Delivery(first.encode())])
        await node.wait_for("room", 1)
        minted: list[str] = []

        def build(mint: Minter) -> list[Delivery]:
            minted.extend([mint(now - 5000), mint(now - 5000)])
            return [Delivery(i.encode()) for i in minted]

        if not node.broker.publish_now("room", build):
            assert minted == []
            assert not node.broker.publish_now("room", build) and minted == []
            return
        assert node.payloads("room") == [first.encode(), *(i.encode() for i in minted)]
        values = [ulid_to_int(i) for i in (first, *minted)]
        assert values == sorted(values) and len(set(values)) == 3
        assert node.broker.publish_now("room", lambda mint: [])
        assert len(node.payloads("room")) == 3

    async def test_broker_turn_ids_increase_across_nodes(self, start_node: NodeFactory) -> None:
        """A node whose clock lags still mints above the IDs another node minted before."""
        self.need_shared()
        a, b = await start_node(), await start_node()
        now = _now_ms()
        async with a.broker.ordering("room") as mint:
            first = mint(now)
        async with b.broker.ordering("room") as mint:
            second = mint(now - 10_000)
        async with a.broker.ordering("room") as mint:
            third = mint(now - 20_000)
        assert ulid_to_int(first) < ulid_to_int(second) < ulid_to_int(third)

    async def test_broker_racing_turns_deliver_in_id_order_everywhere(
        self, start_node: NodeFactory
    ) -> None:
        """Nodes racing on one channel (each with its own lane, skewed clocks, a pause inside
        the turn as a store write would make) deliver every message once, in ID order, and in
        the same order on every node."""
        count = 3 if self.shared else 1
        nodes = [await start_node() for _ in range(count)]
        for n in nodes:
            await n.broker.subscribe("race")
        minted: list[str] = []

        async def lane(n: Node, skew_ms: int, turns: int) -> None:
            for turn in range(turns):
                async with n.broker.ordering("race") as mint:
                    ids = [mint(_now_ms() + skew_ms) for _ in range(1 + turn % 4)]
                    minted.extend(ids)
                    await asyncio.sleep(0)  # the store write
                    await n.broker.publish("race", [Delivery(i.encode()) for i in ids])

        await asyncio.gather(*(lane(n, -3000 * i, 25) for i, n in enumerate(nodes)))
        expected = sorted(minted, key=ulid_to_int)
        assert len(set(minted)) == len(minted)
        for n in nodes:
            got = [p.decode() for p in await n.wait_for("race", len(minted))]
            assert got == expected
        await asyncio.sleep(50 * MS)
        for n in nodes:
            assert len(n.on("race")) == len(minted)

    async def test_broker_turns_on_different_channels_do_not_block(self, node: Node) -> None:
        """Holding one channel's turn does not delay another channel's."""
        async with node.broker.ordering("one") as mint_one:
            async with asyncio.timeout(2000 * MS):
                async with node.broker.ordering("two") as mint_two:
                    assert is_ulid(mint_two(_now_ms()))
            assert is_ulid(mint_one(_now_ms()))

    # Shared state

    async def test_broker_counts_add_up_across_nodes(self, start_node: NodeFactory) -> None:
        """``subscriptionsCount`` is the sum of every node's additions."""
        a = await start_node()
        b = await start_node() if self.shared else a
        assert await a.broker.count("room") == 0
        assert await a.broker.count_add("room", 2) == 2
        assert await b.broker.count_add("room", 1) == 3
        assert await b.broker.count("room") == 3
        assert await a.broker.count_add("room", -2) == 1
        assert await a.broker.count("other") == 0

    async def test_broker_presence_members_are_shared(self, start_node: NodeFactory) -> None:
        """Members are deduplicated by uid across holders (and nodes), in join order."""
        a = await start_node()
        b = await start_node() if self.shared else a
        joined = await a.broker.presence_join("presence-x", "c1", "jim", None, max_bytes=10_000)
        assert joined.change is Change.ADDED
        again = await b.broker.presence_join("presence-x", "c2", "jim", None, max_bytes=10_000)
        assert again.change is Change.NONE
        await b.broker.presence_join("presence-x", "c3", "pam", {"k": 1}, max_bytes=10_000)
        members = [{"uid": "jim", "umd": None}, {"uid": "pam", "umd": {"k": 1}}]
        assert await a.broker.presence_members("presence-x") == members
        assert (await a.broker.presence_leave("presence-x", "c1", "jim")).change is Change.NONE
        left = await b.broker.presence_leave("presence-x", "c2", "jim")
        assert left.change is Change.REMOVED and left.member == {"uid": "jim", "umd": None}
        assert await a.broker.presence_members("presence-x") == members[1:]

    async def test_broker_forward_to_unknown_connection_is_none(self, node: Node) -> None:
        """No node holds the connection: ``forward`` answers None."""
        await node.broker.register_connection("held-here")
        assert await node.broker.forward("nobody", b"{}") is None
        await node.broker.forget_connection("held-here")
        await node.broker.forget_connection("held-here")

    # Broadcast

    async def test_broker_broadcast_runs_on_every_node_once(self, start_node: NodeFactory) -> None:
        """``broadcast`` runs the command once on each live node and returns each answer."""
        nodes = [await start_node()]
        if self.shared:
            nodes += [await start_node(), await start_node()]
        assert len({n.broker.node_id for n in nodes}) == len(nodes)
        answers = await nodes[0].broker.broadcast(b"kick\nbob")
        expected = [n.broker.node_id.encode() + b":kick\nbob" for n in nodes]
        assert sorted(answers) == sorted(expected)
        assert all(n.commands == [b"kick\nbob"] for n in nodes)
        again = await nodes[-1].broker.broadcast(b"x")
        assert len(again) == len(nodes)

    async def test_broker_broadcast_skips_closed_nodes(self, start_node: NodeFactory) -> None:
        """A node that left the cluster is not waited for."""
        self.need_shared()
        a, b = await start_node(), await start_node()
        await b.broker.aclose()
        assert await a.broker.broadcast(b"x") == [a.broker.node_id.encode() + b":x"]
        assert b.commands == []

    async def test_broker_user_connections_are_capped(self, node: Node) -> None:
        """``claim_user_connection`` counts up to the limit, per uid; a release frees one."""
        assert await node.broker.claim_user_connection("jim", 2)
        assert await node.broker.claim_user_connection("jim", 2)
        assert not await node.broker.claim_user_connection("jim", 2)
        assert await node.broker.claim_user_connection("pam", 2)  # another uid counts apart
        await node.broker.release_user_connection("jim")
        assert await node.broker.claim_user_connection("jim", 2)
        for _ in range(2):
            await node.broker.release_user_connection("jim")
        await node.broker.release_user_connection("pam")
        assert await node.broker.claim_user_connection("jim", 1)
        await node.broker.release_user_connection("jim")

    async def test_broker_user_connections_are_capped_across_nodes(
        self, start_node: NodeFactory
    ) -> None:
        """The limit holds for the cluster; a closed node's connections stop counting."""
        self.need_shared()
        a, b = await start_node(), await start_node()
        assert await a.broker.claim_user_connection("jim", 2)
        assert await b.broker.claim_user_connection("jim", 2)
        assert not await a.broker.claim_user_connection("jim", 2)
        assert not await b.broker.claim_user_connection("jim", 2)
        await a.broker.release_user_connection("jim")
        assert await b.broker.claim_user_connection("jim", 2)
        await b.broker.aclose()  # leaves cleanly: its claims go with it
        assert await a.broker.claim_user_connection("jim", 2)
        assert await a.broker.claim_user_connection("jim", 2)
        assert not await a.broker.claim_user_connection("jim", 2)
