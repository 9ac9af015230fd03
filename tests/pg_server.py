"""A private PostgreSQL server for the tests that stop it (the machine's shared server must
never be stopped): ``initdb`` into a temporary directory, ``pg_ctl`` to start and stop it on
a port of its own. Run as the ``postgres`` user when the tests run as root (``initdb``
refuses root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from tests.services import free_port, unavailable


def _binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return os.path.dirname(found[-1])
    pg_ctl = shutil.which("pg_ctl")
    return os.path.dirname(pg_ctl) if pg_ctl else None


class PgServer:
    """One private cluster. ``url`` reaches its ``postgres`` database (trust auth)."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="tidings-pg-")
        self.data = os.path.join(self.dir, "data")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as, os.path.join(self.bindir, tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            self.data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=40"
        )
        self._run(
            "pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            os.path.join(self.dir, "log"),
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (connections are told), or ``immediate`` (as if the server crashed)."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def pg_server() -> Iterator[PgServer]:
    """A started private PostgreSQL, removed afterwards; skipped (or failed under
    ``TIDINGS_REQUIRE_SERVICES=1``) when ``initdb``/``pg_ctl`` are missing."""
    bindir = _binaries()
    if bindir is None or not os.path.exists(os.path.join(bindir, "initdb")):
        unavailable("initdb/pg_ctl are unavailable (PostgreSQL server binaries not installed)")
    server = PgServer(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()
