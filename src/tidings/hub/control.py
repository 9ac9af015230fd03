"""Cluster-wide commands (spec §24.2): a command is one JSON object ``{"op": name, …}`` that
``Broker.broadcast`` runs on every node; each feature module registers the ops it answers.

Every op must be idempotent: a node that answers late may still run a command the caller has
given up on, and the caller may retry.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tidings.broker.base import Broker
from tidings.core.json import dumps, loads

__all__ = ["Control", "Handler"]

log = logging.getLogger("tidings.hub")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Control:
    """This node's op table, and the way to run an op on every node."""

    def __init__(self, *, broker: Broker) -> None:
        self._broker = broker
        self._handlers: dict[str, Handler] = {}

    def register(self, op: str, handler: Handler) -> None:
        self._handlers[op] = handler

    async def broadcast(self, op: str, **args: Any) -> list[dict[str, Any]]:
        """Run ``op`` with ``args`` on every node; each node's answer.

        Raises:
            BrokerUnavailable: a node could not be reached in time.
        """
        answers = []
        for raw in await self._broker.broadcast(dumps({"op": op, **args})):
            answer = loads(raw)
            if not isinstance(answer, dict) or "error" in answer:
                # a node of another version, or a bug there: its part is missing, say so
                log.warning("! a node could not run %s: %r", op, answer)
                continue
            answers.append(answer)
        return answers

    async def serve(self, command: bytes) -> bytes:
        """The broker's ``ControlFn``: run one command here; failures become ``{"error"}``."""
        try:
            body = loads(command)
            handler = self._handlers[body["op"]]
            return dumps(await handler(body))
        except Exception as exc:
            log.exception("! cluster command failed")
            return dumps({"error": f"{type(exc).__name__}: {exc}"})
