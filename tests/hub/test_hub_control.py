"""Cluster commands (hub/control.py) on a one-node broker: dispatch, and failures kept apart."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tidings.broker.memory import MemoryBroker
from tidings.hub.control import Control


async def started() -> tuple[MemoryBroker, Control]:
    broker = MemoryBroker()
    control = Control(broker=broker)
    await broker.start(lambda channel, deliveries: None, control=control.serve)
    return broker, control


async def test_control_runs_registered_op_with_its_arguments() -> None:
    """broadcast() reaches the registered handler and returns its answer."""
    broker, control = await started()
    seen: list[dict[str, Any]] = []

    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {"closed": 2}

    control.register("echo", echo)
    assert await control.broadcast("echo", uid="u") == [{"closed": 2}]
    assert seen == [{"op": "echo", "uid": "u"}]
    await broker.aclose()


async def test_control_failures_answer_error_and_are_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unknown op, a malformed command or a failing handler answers {"error"}; broadcast()
    logs and skips such answers instead of raising."""
    broker, control = await started()

    async def broken(body: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("bug")

    control.register("broken", broken)
    assert "error" in orjson.loads(await control.serve(b'{"op": "nope"}'))
    assert "error" in orjson.loads(await control.serve(b"not json"))
    assert await control.broadcast("broken") == []
    assert "could not run broken" in caplog.text
    await broker.aclose()
