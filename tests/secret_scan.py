"""Every test's server logs are scanned for secrets: anything shaped like a JWT of 40
characters or more (so a token's 40-character prefix too), the signing secret (raw and
Base64), the API keys, and the connection secrets the test's clients were given.

In-process nodes log through ``logging``: :class:`SecretScan` sits on the root logger with the
``tidings`` and ``aiohttp`` loggers opened to DEBUG, and ``tests/conftest.py`` fails a test
whose records leaked one. Nodes run as subprocesses write log files: their fixtures pass
them to :func:`scan_file`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

# base64url of '{"' is "eyJ"; 37 more characters make any 40-character token prefix
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_.\-]{37,}")
# what the server process logs through: its own loggers, its HTTP stack, its event loop
_SERVER_LOGGERS = ("tidings", "aiohttp", "asyncio", "root")


class SecretScan(logging.Handler):
    """Collects what each log record leaks; ``take()`` returns and forgets it."""

    def __init__(self, static: Iterable[str]) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self._static = {s for s in static if s}
        self._dynamic: set[str] = set()  # this test's connection secrets
        self._found: list[str] = []

    def add_static(self, *secrets: str) -> None:
        """Secrets every test shares (keys); kept for the whole run."""
        self._static.update(s for s in secrets if s)

    def register(self, secret: str) -> None:
        """A secret of the current test (a connection secret); forgotten by ``take()``."""
        if secret:
            self._dynamic.add(secret)

    def leaks(self, text: str) -> list[str]:
        """What ``text`` gives away, each shown only by its first characters."""
        found = [f"token-like {m.group()[:12]}…" for m in _JWT_LIKE.finditer(text)]
        found += [f"secret {s[:4]}…" for s in self._static | self._dynamic if s in text]
        return found

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(_SERVER_LOGGERS):
            return  # the tests' own clients (websockets logs its request line) are not servers
        try:
            text = self.format(record)
        except Exception:  # a record that cannot be formatted is a bug, not a leak
            return
        for leak in self.leaks(text):
            self._found.append(f"{leak} in {record.name} {record.levelname}: {text[:80]!r}")

    def take(self) -> list[str]:
        found, self._found = self._found, []
        self._dynamic.clear()
        return found


SECRETS = SecretScan([])
"""The run's one scan. It lives here, not in ``conftest.py``: pytest imports that file as
``conftest`` while test modules import ``tests.conftest``, which would make two."""


def scan_file(scan: SecretScan, path: Path) -> list[str]:
    """The leaks in a subprocess node's log file."""
    text = path.read_text(errors="replace")
    return [f"{leak} in {path.name}" for leak in scan.leaks(text)]
