"""How ``tidings serve`` runs its process: the event loop it picks and its garbage collector.

Both matter most in the chat shape (many small rooms, one message at a time): every message is
its own event-loop wake-up and ten socket writes, and libuv's loop and transports cost less per
wake-up and per write than asyncio's (BENCHMARKS.md, "Many small rooms").
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from collections.abc import Callable

__all__ = ["GC_THRESHOLDS", "loop_factory", "tune_gc"]

# CPython's default first threshold (700 allocations) makes a server holding ~120 objects per
# connection run a full collection every ~25 % of growth: at 10,000 connections each one walks
# ~1.3 million objects (0.3–0.5 s, every client waiting) and a connection herd spent half its CPU
# there. The hot paths make no reference cycles, so collecting less often frees the same memory
# a little later and saves those pauses.
GC_THRESHOLDS = (10_000, 10, 10)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``asyncio.Runner``: uvloop's for ``uvloop``, and for ``auto`` when uvloop
    is installed; None (asyncio's own loop) for ``asyncio``.

    Raises:
        ModuleNotFoundError: ``uvloop`` was asked for and is not installed.
    """
    if choice == "asyncio" or (choice == "auto" and importlib.util.find_spec("uvloop") is None):
        return None
    import uvloop

    return uvloop.new_event_loop


def tune_gc() -> None:
    """Collect less often (see ``GC_THRESHOLDS``), and never scan what start-up allocated."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
