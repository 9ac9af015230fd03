"""``MemoryBroker`` against the broker contract (one node; the hub filters by interest)."""

from __future__ import annotations

import pytest

from tidings.broker import open_broker
from tidings.broker.memory import MemoryBroker
from tidings.errors import ConfigError
from tidings.testing.broker_contract import BrokerContract, BrokerFactory


class TestMemoryBroker(BrokerContract):
    shared = False
    filters_by_interest = False

    @pytest.fixture
    def make_broker(self) -> BrokerFactory:
        return MemoryBroker


def test_open_broker_memory_url() -> None:
    """``memory://`` is the one-node broker."""
    assert isinstance(open_broker("memory://"), MemoryBroker)


def test_open_broker_refuses_unknown_scheme_without_echoing_credentials() -> None:
    """An unsupported URL fails start-up with one sentence that leaves secrets out."""
    with pytest.raises(ConfigError, match="'kafka' is not supported") as info:
        open_broker("kafka://user:hunter2@host:9092")
    assert "hunter2" not in str(info.value)
