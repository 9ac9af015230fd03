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
to the others (``TIDINGS_BENCH_PIN=0`` disables); the load generator is Python, so its own CPU
is reported too: when it saturates, the saturated figures are the load generator's, not the
server's.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import time
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


def _run_one(
    spec: ServerSpec, args: argparse.Namespace, rate: float, profile: str | None = None
) -> dict[str, Any]:
    rooms = [f"room.{i}" for i in range(args.rooms)]
    per_room = args.subscribers // args.rooms
    with ServerProcess(spec, ready_timeout=60) as srv:
        workers = []
        for w in range(args.workers):
            parent, child = mp.Pipe()
            job = {
                "w": w,
                "rooms": rooms[w :: args.workers],
                "all_rooms": rooms,
                "per_room": per_room,
                "publishers": args.publishers // args.workers,
                "auth": spec.auth,
            }
            proc = mp.Process(target=worker_main, args=(child, srv.port, job), daemon=True)
            proc.start()
            workers.append((proc, parent))
        for _, pipe in workers:
            if not pipe.poll(300):
                raise RuntimeError(f"{spec.name}: load generator not ready\n{srv.log_tail()}")
            pipe.recv()
        msg_rate = rate / max(1, per_room)  # each message reaches per_room subscribers
        for _, pipe in workers:  # warm-up
            pipe.send((msg_rate / args.workers, args.warmup))
        before = [pipe.recv() for _, pipe in workers]
        cpu0 = proc_cpu_seconds(srv.pid)
        spy = profiling.start(srv.pid, profile, args.duration) if profile else None
        t0 = time.monotonic()
        for _, pipe in workers:
            pipe.send((msg_rate / args.workers, args.duration))
        after = [pipe.recv() for _, pipe in workers]
        # deliveries still in flight when the window closes are counted in the next call; the
        # CPU window closes here too, so both sides stop at the same moment
        elapsed = time.monotonic() - t0
        cpu = proc_cpu_seconds(srv.pid) - cpu0
        for _, pipe in workers:
            pipe.send("stop")
        if spy is not None:
            path = profiling.finish(spy)
            if path:
                print(profiling.summarize(path, top=25), file=sys.stderr)
        for proc, _ in workers:
            proc.join(10)
        delivered = sum(a[0] for a in after) - sum(b[0] for b in before)
        errors = sum(a[1] for a in after)
        gen_cpu = sum(a[2] for a in after) - sum(b[2] for b in before)
        alive = srv.alive()
    return {
        "server": spec.name,
        "offered": rate,
        "deliveries_s": delivered / elapsed,
        "us_per_delivery": cpu / delivered * 1e6 if delivered else float("nan"),
        "server_cpu_pct": cpu / elapsed * 100,
        "loadgen_cpu_pct": gen_cpu / elapsed * 100,
        "errors": errors,
        "alive": alive,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--servers", default="tidings,node")
    ap.add_argument("--tidings-src", help="another checkout's src/, run as tidings-base")
    ap.add_argument("--rooms", type=int, default=1000)
    ap.add_argument("--subscribers", type=int, default=10_000)
    ap.add_argument("--publishers", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=20_000, help="fixed-rate deliveries/s")
    ap.add_argument("--max-rate", type=float, default=150_000, help="saturated offer, deliveries/s")
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="py-spy the first tidings runs")
    args = ap.parse_args()
    raise_nofile()
    mp.set_start_method("spawn")
    specs = _specs(args)
    results: list[dict[str, Any]] = []
    for rep in range(args.repeat):
        for rate in (args.rate, args.max_rate):
            for spec in specs if rep % 2 == 0 else reversed(specs):  # interleaved
                label = f"rooms-{spec.name}-{int(rate)}"
                spy = args.profile and rep == 0 and spec.name == "tidings"
                r = _run_one(spec, args, rate, label if spy else None)
                results.append(r)
                print(
                    f"[{rep}] {r['server']:>13} offered {rate:>9,.0f}/s → "
                    f"{r['deliveries_s']:>9,.0f}/s, {r['us_per_delivery']:.2f} µs/delivery, "
                    f"server {r['server_cpu_pct']:.0f} %, loadgen {r['loadgen_cpu_pct']:.0f} %",
                    file=sys.stderr,
                )
    print(_report(args, results))


def _report(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    per_room = args.subscribers // args.rooms
    lines = [
        f"Command: `python bench/rooms.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"{args.subscribers:,} subscribers in {args.rooms:,} rooms of {per_room}, "
        f"{args.publishers:,} publishers, medians of {args.repeat} interleaved runs.",
        "",
        "| server | offered deliveries/s | deliveries/s | server CPU µs/delivery "
        "| server CPU % | loadgen CPU % | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for rate in (args.rate, args.max_rate):
        for name in dict.fromkeys(r["server"] for r in results):
            rs = [r for r in results if r["server"] == name and r["offered"] == rate]
            med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k not in ("server",)}
            lines.append(
                f"| {name} | {rate:,.0f} | {med['deliveries_s']:,.0f} "
                f"| {med['us_per_delivery']:.2f} | {med['server_cpu_pct']:.0f} "
                f"| {med['loadgen_cpu_pct']:.0f} | {int(sum(r['errors'] for r in rs))} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
