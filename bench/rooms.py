"""Many small rooms: the chat shape (issue 14).

    .venv/bin/python bench/rooms.py                      # 1,000 rooms × 10, 1,000 publishers
    .venv/bin/python bench/rooms.py --rooms 300 --publishers 300 --duration 4   # quicker

S subscriber connections in R rooms of S/R, and P publisher connections sending client messages
over WebSocket (``broadcast``, not subscribed) to random rooms, ~100-byte data. Two load
shapes per server, interleaved across servers and repetitions:

* **fixed rate** (``--rate`` deliveries/s): server CPU µs per delivery when it keeps up;
* **saturated** (``--max-rate``): offered far above capacity; deliveries/s and CPU per delivery.

Servers: ``tidings`` (the CLI, memory backends) and ``node`` (``bench/node/rooms_server.js`` on
the ``ws`` package: ``npm install --prefix bench/node``). ``--tidings-src DIR`` runs a second
tidings from another checkout's ``src`` (say, the commit before a change) as ``tidings-base``,
so before/after ratios come from one run. The server is pinned to CPU 0 and the load generator
to the others (``TIDINGS_BENCH_PIN=0`` disables). The load generator is ``rooms_gen.c`` (one
epoll loop, compiled on first use; well under a microsecond per delivery), so saturated figures
are the server's; ``--loadgen python`` runs the old leanws workers, which saturate first.
``--sweep`` runs the channel sweep (1, 10, 100, 1,000 channels at 10,000 subscribers) and the
subscriber sweep (100, 1,000, 10,000 on one channel) instead of the rooms shape.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import leanws
import orjson
import profiling
from common import (
    HOST,
    SIGNING_SECRET,
    ServerProcess,
    ServerSpec,
    cpu_plan,
    pin_self,
    proc_cpu_seconds,
    proc_sched,
    raise_nofile,
    self_cpu_seconds,
    tidings_command,
    tidings_env,
)

BENCH = Path(__file__).parent
PAD = "x" * 60  # data ≈ 100 bytes with the timestamp


def _tokens(count: int, claims: dict[str, Any], tag: str) -> list[str]:
    from joserfc import jwt
    from joserfc.jwk import OctKey

    key = OctKey.import_key(SIGNING_SECRET)
    exp = int(time.time()) + 3600
    header = {"alg": "HS256", "typ": "JWT"}
    return [
        jwt.encode(header, {"scope": "connect", "exp": exp, "jti": f"{tag}{i}", **claims}, key)
        for i in range(count)
    ]


SUB_CLAIMS = {"channels": {"room.*": {"subscribe": True}}}
PUB_CLAIMS = {"channels": {"room.*": {"messages": {"chat": {"broadcast": True}}}}}


class Sub(leanws.LeanWS):
    def __init__(self, port: int, path: str, room: str) -> None:
        super().__init__(HOST, port, path)
        self.room = room
        self.state = 0
        self.count = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(self, p: bytes) -> None:
        if self.state == 2:
            self.count += 1
            return
        event = orjson.loads(p).get("event")
        if self.state == 0 and event == "hotsock.connected":
            self.state = 1
            self.send_text(orjson.dumps({"event": "hotsock.subscribe", "channel": self.room}))
        elif self.state == 1 and event == "hotsock.subscribed":
            self.state = 2
            self.ready.set_result(None)
        elif not self.ready.done():
            self.ready.set_exception(RuntimeError(f"unexpected {p[:200]!r}"))

    def on_lost(self) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"lost (close {self.close_code})"))


class Pub(leanws.LeanWS):
    def __init__(self, port: int, path: str) -> None:
        super().__init__(HOST, port, path)
        self.errors = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(self, p: bytes) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
        elif b"hotsock.error" in p:
            self.errors += 1

    def on_lost(self) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"lost (close {self.close_code})"))


def worker_main(conn: Any, port: int, job: dict[str, Any]) -> None:
    pin_self(cpu_plan()[1])
    raise_nofile()
    asyncio.run(_worker(conn, port, job))


async def _worker(conn: Any, port: int, job: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    subs: list[Sub] = []
    pubs: list[Pub] = []
    auth = job["auth"]
    sub_tokens = _tokens(len(job["rooms"]) * job["per_room"], SUB_CLAIMS, f"s{job['w']}-")
    pub_tokens = _tokens(job["publishers"], PUB_CLAIMS, f"p{job['w']}-")
    t = iter(sub_tokens)
    for room in job["rooms"]:
        for _ in range(job["per_room"]):
            path = f"/?token={next(t)}" if auth else "/"
            _, s = await loop.create_connection(lambda p=path, r=room: Sub(port, p, r), HOST, port)
            subs.append(s)
            if len(subs) % 200 == 0:
                await asyncio.gather(*(x.ready for x in subs[-200:]))
    for token in pub_tokens:
        path = f"/?token={token}" if auth else "/"
        _, p = await loop.create_connection(lambda p=path: Pub(port, p), HOST, port)
        pubs.append(p)
    await asyncio.gather(*(x.ready for x in subs), *(x.ready for x in pubs))
    conn.send("ready")
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        if cmd == "stop":
            break
        rate, seconds = cmd  # messages/s from this worker, for this long
        await _publish(pubs, job["all_rooms"], rate, seconds)
        conn.send((sum(s.count for s in subs), sum(p.errors for p in pubs), self_cpu_seconds()))
    for x in (*subs, *pubs):
        x.close()


async def _publish(pubs: list[Pub], rooms: list[str], rate: float, seconds: float) -> None:
    """Open loop: send ``rate`` messages/s from random publishers to random rooms."""
    start = time.monotonic()
    sent = 0
    rnd = random.Random(os.getpid())
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate) - sent
        for _ in range(due):
            frame = orjson.dumps(
                {
                    "event": "chat",
                    "channel": rnd.choice(rooms),
                    "data": {"ts": time.time_ns(), "p": PAD},
                }
            )
            rnd.choice(pubs).send_text(frame)
        sent += due
        await asyncio.sleep(0.002)


def _specs(args: argparse.Namespace) -> list[ServerSpec]:
    specs = []
    if "tidings" in args.servers:
        cmd = tidings_command()
        assert cmd is not None, "tidings is not installed in this interpreter"
        serve = [*cmd, "serve", "--host", HOST, "--port", "{port}"]
        specs.append(ServerSpec("tidings", serve, env=tidings_env(), auth=True))
        if args.tidings_src:
            env = tidings_env({"PYTHONPATH": str(Path(args.tidings_src).resolve())})
            specs.append(ServerSpec("tidings-base", serve, env=env, auth=True))
    if "node" in args.servers:
        node = shutil.which("node")
        script = BENCH / "node" / "rooms_server.js"
        if node is None or not (BENCH / "node" / "node_modules" / "ws").is_dir():
            print("! node or bench/node/node_modules/ws missing: skipping node", file=sys.stderr)
        else:
            specs.append(ServerSpec("node-ws", [node, str(script), "{port}"]))
    return specs


GEN_SRC = BENCH / "rooms_gen.c"


def build_generator() -> Path:
    """Compile the C load generator (bench/rooms_gen.c) when its binary is missing or stale."""
    out = BENCH / "results" / "rooms_gen"
    if not out.exists() or out.stat().st_mtime < GEN_SRC.stat().st_mtime:
        out.parent.mkdir(exist_ok=True)
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-Wall", "-o", str(out), str(GEN_SRC)], check=True)
    return out


class CGenerator:
    """bench/rooms_gen.c as a subprocess pinned to the load-generator CPUs."""

    def __init__(self, port: int, spec: ServerSpec, shape: Shape, args: argparse.Namespace):
        exe = build_generator()
        self.job = Path(tempfile.mkstemp(prefix="rooms-job-", suffix=".txt")[1])
        lines = [f"R {r}" for r in shape.rooms]
        subs = _tokens(len(shape.members), SUB_CLAIMS, "s") if spec.auth else None
        for i, member in enumerate(shape.members):
            lines.append(f"S {','.join(member)} " + (f"/?token={subs[i]}" if subs else "/"))
        pubs = _tokens(shape.publishers, PUB_CLAIMS, "p") if spec.auth else None
        for j in range(shape.publishers):
            lines.append("P " + (f"/?token={pubs[j]}" if pubs else "/"))
        self.job.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            [str(exe), str(port), str(self.job)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: (raise_nofile(), pin_self(cpu_plan()[1])),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"{spec.name}: load generator not ready (exit {self.proc.poll()})")

    def run(self, msg_rate: float, seconds: float) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"run {msg_rate} {seconds}\n")
        self.proc.stdin.flush()
        f = self.proc.stdout.readline().split()
        if len(f) != 8:
            raise RuntimeError(f"load generator failed (exit {self.proc.poll()})")
        keys = ("delivered", "errors", "cpu", "sent", "closed", "skipped", "p50_us", "p99_us")
        return dict(zip(keys, map(float, f), strict=True))

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)
        self.job.unlink(missing_ok=True)


class PyGenerator:
    """The Python generator (leanws in spawn workers): saturates before the servers do."""

    def __init__(self, port: int, spec: ServerSpec, shape: Shape, args: argparse.Namespace):
        self.workers = []
        for w in range(args.workers):
            parent, child = mp.Pipe()
            job = {
                "w": w,
                "rooms": shape.rooms[w :: args.workers],
                "all_rooms": shape.rooms,
                "per_room": shape.per_room,
                "publishers": shape.publishers // args.workers,
                "auth": spec.auth,
            }
            proc = mp.Process(target=worker_main, args=(child, port, job), daemon=True)
            proc.start()
            self.workers.append((proc, parent))
        for _, pipe in self.workers:
            if not pipe.poll(300):
                raise RuntimeError(f"{spec.name}: load generator not ready")
            pipe.recv()

    def run(self, msg_rate: float, seconds: float) -> dict[str, float]:
        for _, pipe in self.workers:
            pipe.send((msg_rate / len(self.workers), seconds))
        got = [pipe.recv() for _, pipe in self.workers]
        return {
            "delivered": sum(g[0] for g in got),
            "errors": sum(g[1] for g in got),
            "cpu": sum(g[2] for g in got),
            "closed": 0,
            "skipped": 0,
            "p50_us": float("nan"),
            "p99_us": float("nan"),
        }

    def stop(self) -> None:
        for _, pipe in self.workers:
            pipe.send("stop")
        for proc, _ in self.workers:
            proc.join(10)


@dataclass(frozen=True)
class Shape:
    rooms: list[str]
    per_room: int  # subscribers of each room (= deliveries per message)
    publishers: int
    per_sub: int = 1  # rooms each subscriber connection is in

    @property
    def members(self) -> list[list[str]]:
        """The rooms of each subscriber connection: consecutive blocks of ``per_sub``."""
        count = len(self.rooms) * self.per_room // self.per_sub
        r = len(self.rooms)
        return [
            [self.rooms[(i * self.per_sub + j) % r] for j in range(self.per_sub)]
            for i in range(count)
        ]

    @property
    def label(self) -> str:
        each = f", {self.per_sub} rooms each" if self.per_sub > 1 else ""
        return f"{len(self.rooms):,} × {self.per_room:,}{each}"


def _shape(rooms: int, subscribers: int, publishers: int, per_sub: int = 1) -> Shape:
    per_room = max(1, subscribers * per_sub // rooms)
    return Shape([f"room.{i}" for i in range(rooms)], per_room, publishers, per_sub)


def _sys_seconds(pid: int) -> float:
    """System (kernel) CPU seconds of ``pid``: the share of the server's CPU in system calls."""
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    return int(raw[raw.rindex(")") + 2 :].split()[12]) / os.sysconf("SC_CLK_TCK")


def _run_one(
    spec: ServerSpec,
    args: argparse.Namespace,
    shape: Shape,
    rate: float,
    profile: str | None = None,
) -> dict[str, Any]:
    gen_cls = CGenerator if args.loadgen == "c" else PyGenerator
    with ServerProcess(spec, ready_timeout=60) as srv:
        gen = gen_cls(srv.port, spec, shape, args)
        # every connection open and subscribed: what the process spent so far is the set-up
        setup_cpu = proc_cpu_seconds(srv.pid)
        try:
            # a message reaches the room's other subscribers: the publishers hold no subscription
            msg_rate = rate / shape.per_room
            gen.run(msg_rate, args.warmup)
            before = gen.run(0, 0.05)
            cpu0 = proc_cpu_seconds(srv.pid)
            wait0 = proc_sched(srv.pid)[1]
            sys0 = _sys_seconds(srv.pid)
            spy = profiling.start(srv.pid, profile, args.duration) if profile else None
            t0 = time.monotonic()
            after = gen.run(msg_rate, args.duration)
            # deliveries still in flight when the window closes are not counted; the CPU window
            # closes here too, so both sides stop at the same moment
            elapsed = time.monotonic() - t0
            cpu = proc_cpu_seconds(srv.pid) - cpu0
            wait = proc_sched(srv.pid)[1] - wait0
            kernel = _sys_seconds(srv.pid) - sys0
        finally:
            gen.stop()
        if spy is not None:
            path = profiling.finish(spy)
            if path:
                print(profiling.summarize(path, top=25), file=sys.stderr)
        alive = srv.alive()
    delivered = after["delivered"] - before["delivered"]
    return {
        "server": spec.name,
        "shape": shape.label,
        "offered": rate,
        "deliveries_s": delivered / elapsed,
        "us_per_delivery": cpu / delivered * 1e6 if delivered else float("nan"),
        "server_cpu_pct": cpu / elapsed * 100,
        "server_wait_pct": wait / elapsed * 100,
        "server_sys_share": kernel / cpu * 100 if cpu else float("nan"),
        "loadgen_cpu_pct": (after["cpu"] - before["cpu"]) / elapsed * 100,
        "p50_ms": after["p50_us"] / 1000,
        "p99_ms": after["p99_us"] / 1000,
        "errors": after["errors"],
        "closed": after["closed"],
        "alive": alive,
        "setup_cpu_s": setup_cpu,
    }


def _cases(args: argparse.Namespace) -> list[tuple[str, Shape, float]]:
    if not args.sweep:
        shape = _shape(args.rooms, args.subscribers, args.publishers, args.rooms_per_sub)
        return [("rooms", shape, args.rate), ("rooms", shape, args.max_rate)]
    pubs = args.sweep_publishers
    shapes = [("channels", _shape(n, 10_000, pubs)) for n in (1, 10, 100, 1000)]
    shapes += [("subscribers", _shape(1, n, pubs)) for n in (100, 1000, 10_000)]
    # far over every server's capacity, but not a flood of messages: 150,000 messages/s into
    # small rooms only grows input buffers and measures the overload, not the fan-out
    return [
        (kind, shape, min(args.sweep_rate, args.sweep_max_messages * shape.per_room))
        for kind, shape in shapes
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--servers", default="tidings,node")
    ap.add_argument("--tidings-src", help="another checkout's src/, run as tidings-base")
    ap.add_argument("--loadgen", choices=("c", "python"), default="c")
    ap.add_argument("--rooms", type=int, default=1000)
    ap.add_argument("--subscribers", type=int, default=10_000)
    ap.add_argument("--publishers", type=int, default=1000)
    ap.add_argument(
        "--rooms-per-sub", type=int, default=1, help="rooms each subscriber connection is in"
    )
    ap.add_argument("--rate", type=float, default=20_000, help="fixed-rate deliveries/s")
    ap.add_argument("--max-rate", type=float, default=300_000, help="saturated offer, deliveries/s")
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="channel sweep (1, 10, 100, 1,000 channels, 10,000 subscribers) and subscriber\n"
        "sweep (100, 1,000, 10,000 on one channel), saturated, instead of the rooms shape",
    )
    ap.add_argument("--sweep-rate", type=float, default=1_500_000, help="offer of the sweeps")
    ap.add_argument("--sweep-publishers", type=int, default=100)
    ap.add_argument(
        "--sweep-max-messages", type=float, default=20_000, help="cap on the sweeps' messages/s"
    )
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="Python load-generator processes")
    ap.add_argument("--profile", action="store_true", help="py-spy the first tidings runs")
    args = ap.parse_args()
    raise_nofile()
    mp.set_start_method("spawn")
    specs = _specs(args)
    results: list[dict[str, Any]] = []
    for rep in range(args.repeat):
        for kind, shape, rate in _cases(args):
            for spec in specs if rep % 2 == 0 else reversed(specs):  # interleaved
                label = f"rooms-{spec.name}-{len(shape.rooms)}x{shape.per_room}-{int(rate)}"
                spy = args.profile and rep == 0 and spec.name == "tidings"
                r = _run_one(spec, args, shape, rate, label if spy else None)
                r["kind"] = kind
                results.append(r)
                print(
                    f"[{rep}] {r['server']:>13} {shape.label:>10} offered {rate:>9,.0f}/s → "
                    f"{r['deliveries_s']:>9,.0f}/s, {r['us_per_delivery']:.2f} µs/delivery, "
                    f"server {r['server_cpu_pct']:.0f} % (+{r['server_wait_pct']:.0f} % waiting, "
                    f"{r['server_sys_share']:.0f} % of it in the kernel), "
                    f"loadgen {r['loadgen_cpu_pct']:.0f} %, "
                    f"p50 {r['p50_ms']:.1f} ms, closed {r['closed']:.0f}, "
                    f"start-up and set-up CPU {r['setup_cpu_s']:.2f} s",
                    file=sys.stderr,
                )
    print(_report(args, results))


def _spread(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def _report(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    lines = [
        f"Command: `python bench/rooms.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Load generator: {args.loadgen}; medians (min–max) of {args.repeat} interleaved runs; "
        "ratios are to the first server's median in the same run.",
        "",
        "| shape (channels × subscribers) | server | offered deliveries/s | deliveries/s "
        "| server CPU µs/delivery | ratio deliveries/s | ratio µs/delivery "
        "| server CPU % (+ waiting) | kernel share of server CPU % "
        "| loadgen CPU % | p50 / p99 ms | errors | closed | start-up + set-up CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cases = dict.fromkeys((r["shape"], r["offered"]) for r in results)
    for shape, rate in cases:
        rows = [r for r in results if r["shape"] == shape and r["offered"] == rate]
        names = list(dict.fromkeys(r["server"] for r in rows))
        ref: dict[str, float] = {}
        for name in names:
            rs = [r for r in rows if r["server"] == name]
            d = [r["deliveries_s"] for r in rs]
            u = [r["us_per_delivery"] for r in rs]
            if not ref:
                ref = {"d": statistics.median(d), "u": statistics.median(u)}
            p50 = statistics.median(r["p50_ms"] for r in rs)
            p99 = statistics.median(r["p99_ms"] for r in rs)
            lines.append(
                f"| {shape} | {name} | {rate:,.0f} | {_spread(d, ',.0f')} | {_spread(u, '.2f')} "
                f"| {statistics.median(d) / ref['d']:.2f} | {statistics.median(u) / ref['u']:.2f} "
                f"| {statistics.median(r['server_cpu_pct'] for r in rs):.0f} "
                f"(+{statistics.median(r['server_wait_pct'] for r in rs):.0f}) "
                f"| {statistics.median(r['server_sys_share'] for r in rs):.0f} "
                f"| {statistics.median(r['loadgen_cpu_pct'] for r in rs):.0f} "
                f"| {p50:.1f} / {p99:.1f} | {int(sum(r['errors'] for r in rs))} "
                f"| {int(sum(r['closed'] for r in rs))} "
                f"| {_spread([r['setup_cpu_s'] for r in rs], '.2f')} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
