"""Shared helpers for the tidings benchmark harness (stdlib + joserfc only).

Everything here runs on 127.0.0.1 only. Nothing in this module starts an event loop at import
time, so it is safe to import from ``multiprocessing`` spawn children.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

# Fixed benchmark credentials (local, throw-away; never used outside this harness).
SIGNING_SECRET = b"tidings-bench-hs256-secret-0123456789abcdef"  # 43 bytes > 256 bits
API_KEY = "bench-api-key-0123456789abcdef"
CHANNEL = "bench"
EVENT = "tick"


# --------------------------------------------------------------------------------------------
# process / OS helpers


def raise_nofile(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE soft limit as far as the hard limit allows; return the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_plan() -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, load-generator CPUs) when pinning is enabled, else (None, None).

    The servers under test are single-threaded asyncio processes: giving the server one
    dedicated core and the load generators + publisher the rest stops the (very chatty)
    clients from preempting the server and makes "is the load generator the bottleneck?"
    a simple question: is the load-generator core saturated? Set TIDINGS_BENCH_PIN=0 to
    disable.
    """
    if os.environ.get("TIDINGS_BENCH_PIN", "1") == "0":
        return None, None
    # Decided once (by the first process, before anyone pins itself) and inherited via env.
    plan = os.environ.get("TIDINGS_BENCH_CPUS")
    if plan is None:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            os.environ["TIDINGS_BENCH_PIN"] = "0"
            return None, None
        plan = f"{cpus[0]}|{','.join(map(str, cpus[1:]))}"
        os.environ["TIDINGS_BENCH_CPUS"] = plan
    srv, load = plan.split("|")
    return {int(c) for c in srv.split(",")}, {int(c) for c in load.split(",")}


def pin_self(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


def _server_preexec() -> None:  # Popen preexec_fn for servers
    raise_nofile()
    pin_self(cpu_plan()[0])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def proc_rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (from /proc/<pid>/statm, pages → KiB)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_KIB


def proc_cpu_seconds(pid: int) -> float:
    """user+system CPU seconds consumed so far by ``pid`` (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    # comm may contain spaces/parens: split after the last ')'
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def proc_sched(pid: int) -> tuple[float, float]:
    """(seconds on CPU, seconds runnable but waiting for a CPU) from /proc/<pid>/schedstat.

    The wait part shows CPU taken by *other* processes on a shared machine: a server with
    60 % CPU + 35 % wait was CPU-bound, not idle. Main thread only (servers are single-threaded).
    """
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            on, wait, _ = f.read().split()
        return int(on) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------------------------
# tokens


def b64_secret() -> str:
    return base64.b64encode(SIGNING_SECRET).decode()


def make_tokens(
    count: int, *, ttl: int = 3600, channel: str = CHANNEL, tag: str = "t"
) -> list[str]:
    """``count`` distinct HS256 connect tokens (distinct ``jti``) allowing subscribe on ``channel``.

    Distinct tokens make sure a server cannot short-circuit verification with a cache.
    """
    from joserfc import jwt
    from joserfc.jwk import OctKey

    key = OctKey.import_key(SIGNING_SECRET)
    header = {"alg": "HS256", "typ": "JWT"}
    exp = int(time.time()) + ttl
    out = []
    for i in range(count):
        claims = {
            "scope": "connect",
            "exp": exp,
            "jti": f"{tag}{os.getpid()}-{i}",
            "channels": {channel: {"subscribe": True}},
        }
        out.append(jwt.encode(header, claims, key))
    return out


# --------------------------------------------------------------------------------------------
# statistics


def percentile(sorted_vals: Sequence[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def summarize_ns(samples: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds for nanosecond samples."""
    vals = sorted(samples)
    return {
        "n": len(vals),
        "p50_ms": percentile(vals, 50) / 1e6,
        "p90_ms": percentile(vals, 90) / 1e6,
        "p99_ms": percentile(vals, 99) / 1e6,
        "max_ms": (vals[-1] / 1e6) if vals else float("nan"),
    }


# --------------------------------------------------------------------------------------------
# servers under test


def tidings_command() -> list[str] | None:
    """The tidings CLI (console script next to this interpreter, then PATH, then ``-m``)."""
    cand = Path(sys.executable).parent / "tidings"
    if cand.exists():
        return [str(cand)]
    found = shutil.which("tidings")
    if found:
        return [found]
    return [sys.executable, "-m", "tidings"]


def tidings_available() -> tuple[bool, str]:
    """True when the tidings server can be started (``serve --help`` works and app exists)."""
    cmd = tidings_command()
    assert cmd is not None
    try:
        r = subprocess.run(
            [*cmd, "serve", "--help"], capture_output=True, text=True, timeout=30, cwd=REPO_DIR
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{' '.join(cmd)} serve --help failed: {e}"
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
        return False, f"`{' '.join(cmd)} serve --help` exited {r.returncode}: {tail[0][:200]}"
    return True, " ".join(cmd)


def tidings_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "TIDINGS_SIGNING_KEY1_METHOD": "HS256",
            "TIDINGS_SIGNING_KEY1": b64_secret(),
            "TIDINGS_API_KEY1": API_KEY,
            "TIDINGS_STORE": "memory://",
            "TIDINGS_BROKER": "memory://",
            "TIDINGS_LOG_LEVEL": "warning",
            # the load generators flood from one address on purpose: the abuse limits (spec
            # §24.3) would measure themselves, so they are off, as in the test suite
            "TIDINGS_CLIENT_MESSAGES_PER_SECOND": "0",
            "TIDINGS_HTTP_CALLS_PER_SECOND": "0",
            "TIDINGS_HANDSHAKES_PER_IP_PER_SECOND": "0",
            "TIDINGS_MAX_CONNECTIONS_PER_IP": "0",
        }
    )
    if extra:
        env.update(extra)
    return env


@dataclass
class ServerSpec:
    """How to start one server under test and how its clients talk to it."""

    name: str
    cmd: list[str]  # "{port}" is substituted
    env: dict[str, str] | None = None
    flavor: str = "hotsock"  # "hotsock" (tidings + ws baseline) or "eio" (socket.io)
    publish: str = "ws"  # "http" (tidings POST /publish), "ws" (baseline frame), "eio"
    auth: bool = False  # needs a JWT on connect
    ws_path: str = "/"  # path (without query) of the WebSocket endpoint
    notes: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def path_for(self, token: str | None) -> str:
        if self.flavor == "eio":
            return "/socket.io/?EIO=4&transport=websocket"
        if token:
            return f"{self.ws_path}?token={token}"
        return self.ws_path


class ServerProcess:
    """Start a server subprocess on a free port, wait for GET /healthz → 200, stop it cleanly."""

    def __init__(self, spec: ServerSpec, *, ready_timeout: float = 30.0) -> None:
        self.spec = spec
        self.port = free_port()
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(f"/tmp/tidings-bench-{spec.name}-{self.port}.log")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServerProcess:
        cmd = [c.replace("{port}", str(self.port)) for c in self.spec.cmd]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            env=self.spec.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd="/tmp",
            preexec_fn=_server_preexec,
        )
        deadline = time.monotonic() + self.ready_timeout
        url = f"http://{HOST}:{self.port}/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.name} exited with {self.proc.returncode} during start-up:\n"
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.spec.name} not ready within {self.ready_timeout}s:\n{self.log_tail()}"
        )

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        if os.environ.get("TIDINGS_BENCH_KEEP_LOGS") != "1":
            # error paths copy the tail into the results first; keep /tmp tidy otherwise
            self.log_path.unlink(missing_ok=True)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_and_report(
    args: argparse.Namespace,
    amain: Callable[[argparse.Namespace], Awaitable[dict[str, Any]]],
    render: Callable[[dict[str, Any]], str],
    stem: str,
) -> None:
    """The shared tail of every bench script: pin, run, print the markdown report, and save it
    with the raw JSON under ``bench/results/<stem>-<time>``."""
    if args.no_pin:
        os.environ["TIDINGS_BENCH_PIN"] = "0"
    raise_nofile()
    pin_self(cpu_plan()[1])
    results = asyncio.run(amain(args))
    report = render(results)
    print(report)
    out = (
        Path(args.json)
        if args.json
        else BENCH_DIR / "results" / time.strftime(f"{stem}-%Y%m%d-%H%M%S.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    out.with_suffix(".md").write_text(report + "\n")
    print(f"\n(report: {out.with_suffix('.md')}, raw results: {out})", file=sys.stderr)
