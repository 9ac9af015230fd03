"""Load-generator worker processes (started with ``multiprocessing`` "spawn" by run.py).

Each worker owns one asyncio loop and a share of the client connections, and talks to the
orchestrator over a ``multiprocessing.Pipe`` (small dict/str commands). Modes:

* ``subscribe`` — open ``n`` connections, wait for the server's hello, subscribe to the bench
  channel, then count channel messages. Flow-control signal for the publisher: the worker
  publishes into a shared ``RawValue('q')`` the largest k such that *every* one of its
  subscribers has received k messages. A sample of connections (``sample_every``) also records
  publish→receive latency from the ``ts`` (``time.time_ns()``) embedded by the publisher.
* ``hold`` — open ``n`` idle connections (hello received, nothing else) and keep them open.
* ``handshake`` — for ``duration`` seconds, ``concurrency`` loops each doing
  connect → upgrade (with a fresh token) → wait for hello → close handshake, as fast as possible.

Commands: ``reset`` (zero counters, returns "ok"), ``report`` (returns stats), ``go``
(handshake mode), ``stop`` (close everything, returns "stopped", exit).
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import sys
import time
from array import array
from collections import Counter
from typing import Any

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import leanws
from common import (
    CHANNEL,
    HOST,
    ServerSpec,
    cpu_plan,
    make_tokens,
    pin_self,
    raise_nofile,
    self_cpu_seconds,
)

TS_RE = re.compile(rb'"ts":(\d+)')
time_ns = time.time_ns

HOTSOCK_SUB = orjson.dumps({"event": "hotsock.subscribe", "channel": CHANNEL})
EIO_SUB = b'42["subscribe",' + orjson.dumps(CHANNEL) + b"]"


class Group:
    """Per-worker delivery accounting shared by all subscriber connections."""

    def __init__(self, shared: Any) -> None:
        self.shared = shared
        self.n = 0  # streaming subscribers expected to receive every message
        self.cnt_at = [0] * 4096  # cnt_at[k] = #subscribers that received >= k messages
        self.done = 0
        self.dropped = 0
        self.close_codes: Counter[int | None] = Counter()
        self.other: Counter[str] = Counter()
        self.coalesce = 0.0
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.lat = array("q")
        self.last_ns = 0
        self.cpu0 = self_cpu_seconds()
        self.wall0 = time.monotonic()

    def advance(self) -> None:
        ca, n, d = self.cnt_at, self.n, self.done
        top = len(ca) - 1
        while d < top and ca[d + 1] >= n:
            d += 1
        if d != self.done:
            self.done = d
            self.shared.value = d

    def report(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "last_ns": self.last_ns,
            "lat": self.lat.tobytes(),
            "cpu": self_cpu_seconds() - self.cpu0,
            "wall": time.monotonic() - self.wall0,
            "n": self.n,
            "dropped": self.dropped,
            "close_codes": dict(self.close_codes),
            "other": dict(self.other.most_common(5)),
            "done": self.done,
        }


class _Sub(leanws.LeanWS):
    """Common delivery path; subclasses implement the per-protocol hello/subscribe dance."""

    def __init__(self, port: int, path: str, group: Group, subscribe: bool, sample: bool) -> None:
        super().__init__(HOST, port, path)
        self.g = group
        self.subscribe = subscribe
        self.sample = sample
        self.state = 0
        self.count = 0
        self.gone = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _deliver(self, p: bytes) -> None:
        g = self.g
        c = self.count = self.count + 1
        g.total += 1
        now = g.last_ns = time_ns()
        if self.sample:
            m = TS_RE.search(p)
            if m is not None:
                g.lat.append(now - int(m.group(1)))
        ca = g.cnt_at
        if c >= len(ca):
            ca.extend([0] * len(ca))
        ca[c] += 1
        if c == g.done + 1 and ca[c] >= g.n:
            g.advance()

    def _ready(self) -> None:
        self.state = 2
        if not self.ready.done():
            self.ready.set_result(None)

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(why[:300]))

    def mark_lost(self) -> None:
        """EOF seen by the synchronous receive loop (connection_lost comes later)."""
        self.on_lost()

    def on_lost(self) -> None:
        if self.gone:
            return
        self.gone = True
        self._fail(f"connection lost (close code {self.close_code})")
        if self.state == 2 and not self.closing:
            g = self.g
            g.dropped += 1
            g.close_codes[self.close_code] += 1
            if self.subscribe:
                g.n -= 1
                g.advance()


class HotsockSub(_Sub):
    def on_message(self, p: bytes) -> None:
        if self.state == 2:
            if b'"tick"' in p:
                self._deliver(p)
            else:
                self.g.other[p[:120].decode("utf-8", "replace")] += 1
            return
        try:
            ev = orjson.loads(p).get("event")
        except Exception:
            ev = None
        if self.state == 0:
            if ev != "hotsock.connected":
                self._fail(f"expected hotsock.connected, got {p[:200]!r}")
            elif self.subscribe:
                self.state = 1
                self.send_text(HOTSOCK_SUB)
            else:
                self._ready()
        elif self.state == 1:
            if ev == "hotsock.subscribed":
                self._ready()
            else:
                self._fail(f"expected hotsock.subscribed, got {p[:200]!r}")


class EioSub(_Sub):
    """Raw engine.io v4 / socket.io v5 over a WebSocket: ``0{open}`` → ``40`` → ``42[...]``."""

    def on_message(self, p: bytes) -> None:
        if self.state == 2:
            if p.startswith(b'42["tick"'):
                self._deliver(p)
            elif p == b"2":
                self.send_text(b"3")
            else:
                self.g.other[p[:120].decode("utf-8", "replace")] += 1
            return
        if p == b"2":
            self.send_text(b"3")
        elif self.state == 0:
            if p[:1] == b"0":
                self.state = 1
                self.send_text(b"40")
            else:
                self._fail(f"expected engine.io open, got {p[:200]!r}")
        elif self.state == 1:
            if p.startswith(b"40"):
                if self.subscribe:
                    self.state = 3
                    self.send_text(EIO_SUB)
                else:
                    self._ready()
            else:
                self._fail(f"expected socket.io connect, got {p[:200]!r}")
        elif self.state == 3:
            if p.startswith(b'42["subscribed"'):
                self._ready()


def sub_class(spec: ServerSpec) -> type[_Sub]:
    return EioSub if spec.flavor == "eio" else HotsockSub


async def _open(
    spec: ServerSpec, port: int, token: str | None, group: Group, subscribe: bool, sample: bool
) -> _Sub:
    cls = sub_class(spec)
    path = spec.path_for(token)
    proto = await leanws.connect(lambda: cls(port, path, group, subscribe, sample), HOST, port)
    assert isinstance(proto, _Sub)
    try:
        await asyncio.wait_for(proto.ready, 15)
    except BaseException:
        proto.abort()
        raise
    return proto


# ------------------------------------------------------------------------------------------
# worker entry point


def worker_main(conn: Any, spec: ServerSpec, port: int, job: dict[str, Any], shared: Any) -> None:
    raise_nofile()
    pin_self(cpu_plan()[1])
    # The publisher shares the load-generator CPU(s); a slightly lower priority for the
    # subscriber workers keeps the publisher's wake-ups prompt (it is the pipeline's clock).
    os.nice(int(os.environ.get("TIDINGS_BENCH_LOADGEN_NICE", "5")))
    try:
        asyncio.run(_worker(conn, spec, port, job, shared))
    except Exception as e:  # report instead of dying silently
        try:
            conn.send({"error": f"{type(e).__name__}: {e}"})
        except Exception:
            pass
        raise


async def _worker(conn: Any, spec: ServerSpec, port: int, job: dict[str, Any], shared: Any) -> None:
    loop = asyncio.get_running_loop()
    cmds: asyncio.Queue[Any] = asyncio.Queue()

    def _on_cmd() -> None:
        try:
            cmds.put_nowait(conn.recv())
        except EOFError:
            loop.remove_reader(conn.fileno())
            cmds.put_nowait("stop")

    loop.add_reader(conn.fileno(), _on_cmd)
    mode = job["mode"]
    if mode == "handshake":
        await _handshake(conn, cmds, spec, port, job)
        return

    n = job["n"]
    subscribe = mode == "subscribe"
    tokens: list[str | None] = list(make_tokens(n, tag="s")) if spec.auth else [None] * n
    group = Group(shared)
    group.coalesce = float(job.get("coalesce", 0.0005))
    sem = asyncio.Semaphore(job.get("connect_concurrency", 100))
    sample_every = max(1, job.get("sample_every", 10))

    async def one(i: int) -> _Sub:
        async with sem:
            return await _open(spec, port, tokens[i], group, subscribe, i % sample_every == 0)

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    subs = [r for r in results if isinstance(r, _Sub)]
    errs = [r for r in results if not isinstance(r, _Sub)]
    group.n = len(subs)
    conn.send(
        {
            "ready": True,
            "connected": len(subs),
            "errors": len(errs),
            "first_error": repr(errs[0])[:300] if errs else None,
            "connect_seconds": time.monotonic() - t0,
        }
    )
    if subscribe:
        loop.remove_reader(conn.fileno())
        _stream_sync(conn, subs, group)
    else:
        while True:
            cmd = await cmds.get()
            if cmd == "reset":
                group.reset()
                conn.send("ok")
            elif cmd == "report":
                conn.send(group.report())
            elif cmd == "stop":
                break
    for s in subs:
        s.close()
    if subs:
        await asyncio.wait([s.lost for s in subs], timeout=5)
    for s in subs:
        if not s.lost.done():
            s.abort()
    conn.send("stopped")


def _stream_sync(conn: Any, subs: list[_Sub], group: Group) -> None:
    """Receive loop for the measured phase, outside asyncio.

    asyncio costs ~10 µs of Python per readable socket (selector → handle → recv → protocol);
    that made the load generator as expensive per delivery as the servers it measures. Here the
    sockets' asyncio transports are paused and a plain ``epoll`` loop reads them with
    ``os.read`` and feeds the same ``data_received`` parser. Writes (pongs, close replies) still
    go through the transports, which send synchronously when their buffer is empty.
    """
    ep = select.epoll()
    pfd = conn.fileno()
    fdmap: dict[int, _Sub] = {}
    for s in subs:
        t = s.transport
        if t is None or t.is_closing():
            continue
        t.pause_reading()
        fd = t.get_extra_info("socket").fileno()
        fdmap[fd] = s
        ep.register(fd, select.EPOLLIN)
    ep.register(pfd, select.EPOLLIN)
    read = os.read
    poll = ep.poll
    sleep = time.sleep
    # Waking up for every frame costs more than reading it (~5 µs per wake-up); after each
    # batch, nap briefly so that the next poll returns many ready sockets at once. Adds at most
    # `coalesce` seconds to measured latencies (0.5 ms default; job["coalesce"]).
    coalesce = group.coalesce
    try:
        while True:
            events = poll(0.5)
            if coalesce and len(events) < 256:
                sleep(coalesce)
            for fd, _ev in events:
                s = fdmap.get(fd)
                if s is None:
                    if fd != pfd:
                        continue
                    cmd = conn.recv()
                    if cmd == "reset":
                        group.reset()
                        conn.send("ok")
                    elif cmd == "report":
                        conn.send(group.report())
                    elif cmd == "stop":
                        return
                    continue
                try:
                    data = read(
                        fd, 65536
                    )  # > 128 KiB would hit malloc's mmap path: ~14 µs per read
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    s.data_received(data)
                else:
                    try:
                        ep.unregister(fd)
                    except OSError:
                        pass
                    del fdmap[fd]
                    s.mark_lost()
    finally:
        ep.close()
        for s in fdmap.values():
            t = s.transport
            if t is not None and not t.is_closing():
                t.resume_reading()


class _HsClient(leanws.LeanWS):
    """Connect, wait for the server hello, close."""

    def __init__(self, port: int, path: str, eio: bool) -> None:
        super().__init__(HOST, port, path)
        self.eio = eio
        self.hello: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(self, p: bytes) -> None:
        if self.hello.done():
            return
        if self.eio:
            if p[:1] == b"0":
                self.send_text(b"40")
            elif p.startswith(b"40"):
                self.hello.set_result(None)
        elif b'"hotsock.connected"' in p:
            self.hello.set_result(None)
        else:
            self.hello.set_exception(RuntimeError(f"unexpected first frame {p[:200]!r}"))

    def on_lost(self) -> None:
        if not self.hello.done():
            self.hello.set_exception(RuntimeError(f"lost before hello (code {self.close_code})"))


async def _handshake(
    conn: Any, cmds: asyncio.Queue[Any], spec: ServerSpec, port: int, job: dict[str, Any]
) -> None:
    loop = asyncio.get_running_loop()
    tokens: list[str | None] = list(make_tokens(job["tokens"], tag="h")) if spec.auth else [None]
    conn.send({"ready": True})
    cmd = await cmds.get()
    if cmd != "go":
        conn.send("stopped")
        return
    eio = spec.flavor == "eio"
    lat = array("q")
    errors: Counter[str] = Counter()
    state = {"i": 0, "ok": 0}
    cpu0 = self_cpu_seconds()
    t0 = time.monotonic()
    deadline = t0 + job["duration"]

    async def loop_one() -> None:
        while time.monotonic() < deadline:
            i = state["i"]
            state["i"] = i + 1
            tok = tokens[i % len(tokens)]
            path = spec.path_for(tok)
            s = time.perf_counter_ns()
            proto: _HsClient | None = None
            try:
                _, p = await asyncio.wait_for(
                    loop.create_connection(lambda: _HsClient(port, path, eio), HOST, port), 10
                )
                proto = p  # type: ignore[assignment]
                assert proto is not None
                await asyncio.wait_for(proto.hello, 10)
                lat.append(time.perf_counter_ns() - s)
                state["ok"] += 1
                proto.close()
                try:
                    await asyncio.wait_for(asyncio.shield(proto.lost), 5)
                except TimeoutError:
                    proto.abort()
            except Exception as e:
                errors[f"{type(e).__name__}: {str(e)[:120]}"] += 1
                if proto is not None:
                    proto.abort()
                await asyncio.sleep(0.01)

    await asyncio.gather(*(loop_one() for _ in range(job["concurrency"])))
    wall = time.monotonic() - t0
    conn.send(
        {
            "ok": state["ok"],
            "attempts": state["i"],
            "token_reuse": spec.auth and state["i"] > len(tokens),
            "wall": wall,
            "window": job["duration"],
            "lat": lat.tobytes(),
            "cpu": self_cpu_seconds() - cpu0,
            "errors": dict(errors.most_common(5)),
        }
    )
    await cmds.get()  # "stop"
    conn.send("stopped")
