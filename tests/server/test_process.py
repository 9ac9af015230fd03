"""The process settings of ``tidings serve``: which event loop, and the collector's pace."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
import uvloop

from tidings.server.process import GC_THRESHOLDS, loop_factory, tune_gc


def test_loop_factory_choices() -> None:
    assert loop_factory("asyncio") is None
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("auto") is uvloop.new_event_loop  # installed with tidings on Linux


def test_chosen_loop_runs_a_server_round_trip() -> None:
    """A TCP echo over uvloop's transports: the calls the hub makes (write, pause state,
    get_protocol, abort) exist and behave there too."""

    async def main() -> tuple[bytes, bool]:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.transport.abort()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        got = await reader.readexactly(5)
        has_protocol = writer.transport.get_protocol() is not None
        writer.close()
        server.close()
        await server.wait_closed()
        return got, has_protocol

    factory = loop_factory("uvloop")
    with asyncio.Runner(loop_factory=factory) as runner:
        assert type(runner.get_loop()).__module__.startswith("uvloop")
        assert runner.run(main()) == (b"hello", True)


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_tune_gc_collects_less_often(restore_gc: None) -> None:
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 0  # start-up objects are out of every later collection
