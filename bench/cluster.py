"""Cross-node benchmark: one tidings node vs three nodes sharing Redis, measured in the same run.

    /tmp/venv/bin/python bench/cluster.py            # full run (≈ 3.5 minutes on 2 cores)
    /tmp/venv/bin/python bench/cluster.py --quick    # smoke test (≈ 30 seconds)

Setups (every node is `python -m tidings serve --host 127.0.0.1 --port P`, store `memory://`):
  1 node    broker `memory://`; 1 publisher → channel `bench` → N subscribers (N = 1,000)
  1 node, Redis broker (control, `--no-control` skips it): the single node publishing through
            Redis — the Redis path without several nodes competing for one core
  3 nodes   broker `redis://127.0.0.1:6379/0?prefix=<unique per run>`; the publisher POSTs to
            node A only; N subscribers on *each* node (3 × 1,000), all on channel `bench`
Before them, the Redis path is timed in isolation in this process through tidings' RedisBroker.

Both use the code paths of bench/run.py: the same load-generator workers (bench/loadgen.py, lean
WebSocket subscribers, epoll receive loop), the same lean HTTP publisher (bench/publisher.py,
`window` POSTs in flight), the same closed loop (`run.pump`) and the same paced phases, so the
1-node numbers are comparable to run.py's `tidings` row at N = 1,000.

CPU layout (2 cores): all nodes on the first CPU, load generators + publisher on the others, as
run.py does for its single server; Redis is a shared system service and is not touched (it
floats over both CPUs; its CPU use is reported). Both setups therefore get the same server-CPU
budget: this measures the *overhead of the Redis path*, not scale-out capacity.
See bench/README.md, section 4 ("Cross-node fan-out over Redis"), for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import re
import secrets
import sys
import time
import urllib.parse
from array import array
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadgen
import profiling
from common import (
    BENCH_DIR,
    ServerProcess,
    ServerSpec,
    cpu_plan,
    percentile,
    proc_cpu_seconds,
    proc_sched,
    raise_nofile,
    run_and_report,
    self_cpu_seconds,
    summarize_ns,
    tidings_env,
)
from publisher import Publisher
from run import Workers, drain, fmt, make_publisher, pump, split

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "subs": 1000,  # subscribers per node
        "nodes": 3,
        "warmup": 1.0,
        "duration": 6.0,
        "paced_duration": 4.0,
        # msgs/s of the paced phases, the same for both setups: 20 keeps the three nodes'
        # shared core below saturation, 50 is comfortable for the single node (≈ 45 % CPU)
        "paces": [20.0, 50.0],
        "window": 64,
        "workers_per_node": 2,  # load-generator processes per node (run.py: 2 per server)
        # concurrent handshakes per load worker (run.py: 64). Lower because a node answers a
        # WebSocket upgrade only after Redis round trips (register, count) and its pool of 64
        # Redis connections times out after 2 s under a burst of 128 upgrades per node.
        "connect_concurrency": 16,
        "control": True,  # also run 1 node with the Redis broker
        "repeat": 3,
        "profile_seconds": 4.0,
    },
    "quick": {
        "subs": 100,
        "nodes": 3,
        "warmup": 0.3,
        "duration": 1.5,
        "paced_duration": 1.0,
        "paces": [20.0, 50.0],
        "window": 64,
        "workers_per_node": 2,
        "connect_concurrency": 16,
        "control": True,
        "repeat": 1,
        "profile_seconds": 1.5,
    },
}
NODE_NAMES = "ABCDEFGH"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


# ------------------------------------------------------------------------------------------
# measurement helpers


def cpu_ticks() -> dict[int, tuple[int, int, int]]:
    """Per CPU: (process time, irq + softirq time, total) jiffies from /proc/stat. Loopback TCP
    processing is largely softirq time, which is not charged to any process."""
    out: dict[int, tuple[int, int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            v = [int(x) for x in vals[:8]]
            user, nice, system, idle, iowait, irq, softirq, steal = v
            out[int(name[3:])] = (user + nice + system, irq + softirq, sum(v))
    return out


class RedisMonitor:
    """Talks to the shared Redis: process CPU, command statistics, key clean-up. Never writes
    anything but the deletion of this run's own keys."""

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self.r = redis.Redis.from_url(url, socket_timeout=5)
        info = self.r.info("server")
        self.version = str(info.get("redis_version"))
        self.pid: int | None = int(info.get("process_id", 0)) or None
        try:  # same PID namespace? then /proc gives CPU and run-queue wait
            comm = Path(f"/proc/{self.pid}/comm").read_text().strip()
            if "redis" not in comm:
                self.pid = None
        except OSError:
            self.pid = None

    def sample(self) -> dict[str, Any]:
        if self.pid is not None:
            # main thread (executes every command); schedstat has ns resolution, which matters
            # at Redis's ~1 % CPU here (/proc/<pid>/stat counts 10 ms ticks)
            cpu, wait = proc_sched(self.pid)
        else:
            c = self.r.info("cpu")
            cpu, wait = float(c["used_cpu_user"]) + float(c["used_cpu_sys"]), 0.0
        stats = self.r.info("stats")
        cmds = {
            k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for k, v in self.r.info("commandstats").items()
        }
        return {
            "cpu": cpu,
            "wait": wait,
            "net_in": int(stats.get("total_net_input_bytes", 0)),
            "net_out": int(stats.get("total_net_output_bytes", 0)),
            "cmds": cmds,
        }

    def delete_prefix(self, prefix: str) -> tuple[int, int]:
        """Delete every key under ``prefix``; returns (deleted, left over)."""
        pattern = glob_escape(prefix) + "*"
        deleted = 0
        for _ in range(3):
            keys = list(self.r.scan_iter(match=pattern, count=1000))
            if not keys:
                break
            for i in range(0, len(keys), 500):
                deleted += int(self.r.delete(*keys[i : i + 500]))
        left = sum(1 for _ in self.r.scan_iter(match=pattern, count=1000))
        return deleted, left

    def close(self) -> None:
        self.r.close()


def glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def snapshot(servers: list[ServerProcess], rmon: RedisMonitor) -> dict[str, Any]:
    return {
        "t": time.time_ns(),
        "nodes": [(proc_cpu_seconds(s.pid), proc_sched(s.pid)[1]) for s in servers],
        "redis": rmon.sample(),
        "cpus": cpu_ticks(),
        "self": self_cpu_seconds(),
    }


def usage(s0: dict[str, Any], s1: dict[str, Any], wall: float) -> dict[str, Any]:
    """CPU use between two snapshots (percent of ``wall``, as run.py computes it)."""
    cmds: dict[str, tuple[int, int]] = {}
    for k, (calls, usec) in s1["redis"]["cmds"].items():
        c0, u0 = s0["redis"]["cmds"].get(k, (0, 0))
        if calls - c0 > 0 and k not in ("info", "scan"):
            cmds[k] = (calls - c0, usec - u0)
    cores = {}
    for cpu, (b1, i1, t1) in s1["cpus"].items():
        b0, i0, t0 = s0["cpus"].get(cpu, (0, 0, 0))
        dt = max(t1 - t0, 1)
        cores[cpu] = {
            "busy_pct": 100 * (b1 - b0 + i1 - i0) / dt,
            "proc_pct": 100 * (b1 - b0) / dt,
            "irq_pct": 100 * (i1 - i0) / dt,
        }
    n0, n1 = s0["nodes"], s1["nodes"]
    return {
        "node_cpu_s": [c1 - c0 for (c0, _), (c1, _) in zip(n0, n1, strict=True)],
        "node_cpu_pct": [100 * (c1 - c0) / wall for (c0, _), (c1, _) in zip(n0, n1, strict=True)],
        "node_wait_pct": [100 * (w1 - w0) / wall for (_, w0), (_, w1) in zip(n0, n1, strict=True)],
        "redis_cpu_s": s1["redis"]["cpu"] - s0["redis"]["cpu"],
        "redis_cpu_pct": 100 * (s1["redis"]["cpu"] - s0["redis"]["cpu"]) / wall,
        "redis_wait_pct": 100 * (s1["redis"]["wait"] - s0["redis"]["wait"]) / wall,
        "redis_net_out": s1["redis"]["net_out"] - s0["redis"]["net_out"],
        "redis_net_in": s1["redis"]["net_in"] - s0["redis"]["net_in"],
        "redis_cmds": cmds,
        "cores": cores,
        "publisher_cpu_pct": 100 * (s1["self"] - s0["self"]) / wall,
    }


class NodeWorkers(Workers):
    """run.Workers with a target port per job (subscribers spread over several nodes)."""

    def __init__(self, spec: ServerSpec, placements: list[tuple[int, dict[str, Any]]]) -> None:
        ctx = mp.get_context("spawn")
        self.shared = [ctx.RawValue("q", 0) for _ in placements]
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        for (port, job), sh in zip(placements, self.shared, strict=True):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=loadgen.worker_main, args=(child, spec, port, job, sh), daemon=True
            )
            p.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(p)


def lat_of(reports: list[dict[str, Any]]) -> dict[str, float]:
    """run.py's latency summary plus p1 (≈ the first subscribers served: the fixed cost of the
    publish path, before the fan-out loop has written to the others)."""
    samples = array("q")
    for r in reports:
        samples.frombytes(r["lat"])
    out = summarize_ns(samples)
    out["p1_ms"] = percentile(sorted(samples), 1) / 1e6
    return out


def log_problems(srv: ServerProcess) -> dict[str, int]:
    """Warning/error lines in a node's log so far, by message (connection IDs blanked)."""
    found: dict[str, int] = {}
    try:
        text = srv.log_path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            msg = f"{rec.get('level')}: {rec.get('msg')}"
        except ValueError:
            msg = line
        msg = re.sub(r"[A-Za-z0-9_-]{14}=", "<id>", msg)[:160]
        found[msg] = found.get(msg, 0) + 1
    return found


async def redis_micro(url: str, rmon: RedisMonitor, n: int = 300) -> dict[str, Any]:
    """The Redis path in isolation, in this process, through tidings' own ``RedisBroker``:
    CPU and wall time of a publishing turn with one message (acquire script, fenced
    ``PUBLISH`` script, finish script) until the broker hands the message back to ``deliver``,
    of an empty turn, and of one cluster heartbeat with ``conns`` registered connections."""
    from tidings.broker.base import Delivery
    from tidings.broker.redis import RedisBroker

    prefix = f"tidings-bench-micro-{os.getpid()}-{secrets.token_hex(4)}:"
    out: dict[str, Any] = {"prefix": prefix, "messages": n, "conns": 1000}
    got: list[int] = []
    broker = RedisBroker(url, prefix=prefix)
    frame = orjson.dumps(
        {"id": "0" * 26, "event": "tick", "channel": "bench", "data": {"ts": 0, "pad": "x" * 52}}
    )

    async def turn(publish: bool) -> None:
        async with broker.ordering("bench") as mint:
            mint(int(time.time() * 1000))
            if publish:
                await broker.publish("bench", [Delivery(frame, None)])

    try:
        await broker.start(lambda channel, deliveries: got.append(time.perf_counter_ns()))
        await broker.subscribe("bench")
        for _ in range(30):  # warm-up
            await turn(True)
        await asyncio.sleep(0.1)
        lat = array("q")
        c0, w0 = self_cpu_seconds(), time.perf_counter()
        for _ in range(n):
            seen, t0 = len(got), time.perf_counter_ns()
            await turn(True)
            while len(got) == seen:
                await asyncio.sleep(0)
            lat.append(got[-1] - t0)
        c1, w1 = self_cpu_seconds(), time.perf_counter()
        for _ in range(n):
            await turn(False)
        c2 = self_cpu_seconds()
        out.update(
            msg_cpu_us=1e6 * (c1 - c0) / n,
            msg_wall_us=1e6 * (w1 - w0) / n,
            latency=summarize_ns(lat),
            empty_turn_cpu_us=1e6 * (c2 - c1) / n,
        )
        for i in range(out["conns"]):
            await broker.register_connection(f"bench{i:09d}=")
        beats = []
        state = broker._state  # private: the heartbeat is not part of the Broker API
        for _ in range(4):
            c0, w0 = self_cpu_seconds(), time.perf_counter()
            await state._beat()  # type: ignore[union-attr]
            beats.append((1e3 * (self_cpu_seconds() - c0), 1e3 * (time.perf_counter() - w0)))
        out["heartbeat_ms"] = beats
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        try:
            await broker.aclose()
        except Exception:
            pass
        out["keys_deleted"], out["keys_left"] = rmon.delete_prefix(prefix)
    return out


def node_spec(name: str, broker: str, window: int) -> ServerSpec:
    return ServerSpec(
        name=name,
        cmd=[sys.executable, "-m", "tidings", "serve", "--host", "127.0.0.1", "--port", "{port}"],
        env=tidings_env({"TIDINGS_BROKER": broker, "TIDINGS_STORE": "memory://"}),
        flavor="hotsock",
        publish="http",
        auth=True,
        extra={"batch": 1, "inflight": window, "aiohttp": False},
    )


# ------------------------------------------------------------------------------------------
# one run of one setup


async def run_setup(
    n_nodes: int,
    use_redis: bool,
    cfg: dict[str, Any],
    rmon: RedisMonitor,
    redis_url: str,
    profile: bool,
) -> dict[str, Any]:
    label = "1 node" if n_nodes == 1 else f"{n_nodes} nodes"
    if n_nodes == 1 and use_redis:
        label += " (Redis broker)"
    subs = cfg["subs"]
    res: dict[str, Any] = {"setup": label, "nodes": n_nodes, "subs_per_node": subs}
    prefix = None
    if not use_redis:
        broker = "memory://"
    else:
        # unique per run; pub/sub ignores the db number, so the prefix is what isolates us
        prefix = f"tidings-bench-{os.getpid()}-{secrets.token_hex(4)}:"
        broker = f"{redis_url}?{urllib.parse.urlencode({'prefix': prefix})}"
        res["redis_prefix"] = prefix
    res["broker"] = broker
    servers: list[ServerProcess] = []
    workers: NodeWorkers | None = None
    pub: Publisher | None = None
    try:
        for i in range(n_nodes):
            spec = node_spec(
                f"cluster-{n_nodes}{'r' if use_redis else ''}-node-{NODE_NAMES[i].lower()}",
                broker,
                cfg["window"],
            )
            srv = ServerProcess(spec)
            servers.append(srv)
            srv.start()
        spec = servers[0].spec
        placements: list[tuple[int, dict[str, Any]]] = []
        worker_node: list[int] = []
        for i, srv in enumerate(servers):
            for k in split(subs, cfg["workers_per_node"]):
                job = {
                    "mode": "subscribe",
                    "n": k,
                    "sample_every": max(1, subs // 100),  # ≈100 sampled per node, as run.py
                    "connect_concurrency": cfg["connect_concurrency"],
                }
                placements.append((srv.port, job))
                worker_node.append(i)
        workers = NodeWorkers(spec, placements)
        readies = await workers.recv_all(timeout=180)
        res["connected_per_node"] = [
            sum(r["connected"] for r, n in zip(readies, worker_node, strict=True) if n == i)
            for i in range(n_nodes)
        ]
        connected = res["connected"] = sum(res["connected_per_node"])
        res["connect_errors"] = sum(r["errors"] for r in readies)
        res["connect_seconds"] = max(r["connect_seconds"] for r in readies)
        if res["connect_errors"]:
            res["first_connect_error"] = next(r["first_error"] for r in readies if r["errors"])
        if connected == 0:
            raise RuntimeError(f"no subscriber connected: {res.get('first_connect_error')}")
        pub = make_publisher(spec, servers[0].port)  # node A
        await pub.start()
        window = cfg["window"]

        # warm-up (not measured)
        seq = await pump(pub, workers, 0, duration=cfg["warmup"], window=window)
        await pub.flush()
        await drain(workers, seq, 30)

        async def phase(rate: float | None, duration: float, win: int) -> dict[str, Any]:
            nonlocal seq
            assert workers is not None and pub is not None
            await workers.cmd_all("reset")
            s0 = snapshot(servers, rmon)
            start = seq
            seq = await pump(pub, workers, start, duration=duration, window=win, rate=rate)
            await pub.flush()
            drained = await drain(workers, seq, 30)
            reports = await workers.cmd_all("report")
            s1 = snapshot(servers, rmon)
            t1 = max([r["last_ns"] for r in reports] + [s0["t"] + 1])
            wall = (t1 - s0["t"]) / 1e9
            deliveries = sum(r["total"] for r in reports)
            msgs = seq - start
            u = usage(s0, s1, wall)
            node_cpu = sum(u["node_cpu_s"])
            out = {
                "drained": drained,
                "messages": msgs,
                "deliveries": deliveries,
                "expected": msgs * connected,
                "wall": wall,
                "deliveries_per_s": deliveries / wall,
                "messages_per_s": msgs / wall,
                "latency": lat_of(reports),
                "latency_per_node": [
                    lat_of([r for r, n in zip(reports, worker_node, strict=True) if n == i])
                    for i in range(n_nodes)
                ],
                "server_us_per_delivery": 1e6 * node_cpu / max(deliveries, 1),
                "node_us_per_msg": [1e6 * c / max(msgs, 1) for c in u["node_cpu_s"]],
                "redis_us_per_msg": 1e6 * u["redis_cpu_s"] / max(msgs, 1),
                "loadgen_cpu_pct": [100 * r["cpu"] / r["wall"] for r in reports],
                "loadgen_us_per_delivery": 1e6
                * sum(r["cpu"] for r in reports)
                / max(deliveries, 1),
                "dropped": sum(r["dropped"] for r in reports),
                "close_codes": [r["close_codes"] for r in reports if r["close_codes"]],
                "other_frames": [r["other"] for r in reports if r["other"]],
                **u,
            }
            # CPU used by processes that are not part of this benchmark (the machine is shared)
            ours = sum(out["node_cpu_pct"]) + sum(out["loadgen_cpu_pct"])
            ours += out["publisher_cpu_pct"] + out["redis_cpu_pct"]
            busy = sum(c["proc_pct"] for c in out["cores"].values())
            out["other_cpu_pct"] = max(0.0, busy - ours)
            out["irq_cpu_pct"] = sum(c["irq_pct"] for c in out["cores"].values())
            if rate is not None:
                out["offered_msgs_per_s"] = rate
            return out

        res["closed"] = await phase(None, cfg["duration"], window)
        res["paced"] = {}
        if cfg["paced_duration"] > 0:
            for pace in cfg["paces"]:
                res["paced"][fmt(pace)] = await phase(pace, cfg["paced_duration"], window * 4)

        if profile and cfg["profile_seconds"] > 0:
            # extra phases, not measured: py-spy on node A (HTTP publish, Redis turn, receive,
            # fan-out) and node B (Redis receive + fan-out only), closed loop, then node A at
            # the lowest pace (one message per turn: the per-message cost of the Redis path)
            secs = cfg["profile_seconds"]
            res["profiles"] = {}
            profs = {
                f"node {NODE_NAMES[i]}, closed loop": profiling.start(
                    s.pid, f"cluster-node-{NODE_NAMES[i].lower()}-closed", secs
                )
                for i, s in enumerate(servers[:2])
            }
            seq = await pump(pub, workers, seq, duration=secs + 0.5, window=window)
            await pub.flush()
            await drain(workers, seq, 30)
            res["profiles"].update({k: profiling.finish(p) for k, p in profs.items()})
            pace = min(cfg["paces"])
            prof = profiling.start(servers[0].pid, "cluster-node-a-paced", secs)
            seq = await pump(pub, workers, seq, duration=secs + 0.5, window=window * 4, rate=pace)
            await pub.flush()
            await drain(workers, seq, 30)
            res["profiles"][f"node A, paced {fmt(pace)} msgs/s"] = profiling.finish(prof)
        res["publisher_errors"] = dict(pub.errors.most_common(5))
        res["log_problems"] = [log_problems(s) for s in servers]
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
        res["server_log_tail"] = [s.log_tail(8) for s in servers]
    finally:
        if pub is not None:
            try:
                await asyncio.wait_for(pub.close(), 10)
            except Exception:
                pass
        if workers is not None:
            await workers.stop()
        res["alive_at_end"] = [s.alive() for s in servers]
        # what the mass disconnect of the subscribers logged (new lines only)
        before = res.get("log_problems") or [{} for _ in servers]
        res["log_problems_disconnect"] = [
            {k: v - b.get(k, 0) for k, v in log_problems(s).items() if v > b.get(k, 0)}
            for s, b in zip(servers, before, strict=False)
        ]
        for s in servers:
            try:
                s.stop()
            except Exception as e:  # keep stopping the others
                res.setdefault("stop_errors", []).append(repr(e))
        if prefix is not None:
            try:
                res["redis_keys_deleted"], res["redis_keys_left"] = rmon.delete_prefix(prefix)
            except Exception as e:
                res["redis_cleanup_error"] = repr(e)
    return res


# ------------------------------------------------------------------------------------------
# report


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "closed" in r]
    if not good:
        return runs[0]
    good.sort(key=lambda r: r["closed"]["deliveries_per_s"])
    return good[(len(good) - 1) // 2]


def median_paced(runs: list[dict[str, Any]], pace: str) -> dict[str, Any] | None:
    good = [r["paced"][pace] for r in runs if pace in r.get("paced", {})]
    if not good:
        return None
    good.sort(key=lambda p: p["latency"]["p50_ms"])
    return good[(len(good) - 1) // 2]


def limited_by(p: dict[str, Any], load_cpus: list[int] | None) -> str:
    """Which resource ran out — run.py's thresholds: a node runnable (on CPU + waiting for it)
    ≥ 88 % of the time, clients (load workers + publisher) ≥ 85 % of a core, Redis ≥ 88 %."""
    out = []
    busy = [c + w for c, w in zip(p["node_cpu_pct"], p["node_wait_pct"], strict=True)]
    if max(busy) >= 88:
        shared = len(busy) > 1 and load_cpus is not None
        out.append("server CPU" + (" (nodes share one core)" if shared else ""))
    client = sum(p["loadgen_cpu_pct"]) + p["publisher_cpu_pct"]
    load_busy = [p["cores"][c]["busy_pct"] for c in load_cpus or [] if c in p["cores"]]
    if client >= 85:
        out.append(f"**load generator** ({client:.0f} %)")
    elif load_busy and min(load_busy) >= 95 and client >= 50:
        # the machine is shared: other processes (and softirq) filled the clients' core
        out.append(f"**load-generator core full** (clients {client:.0f} %, rest: others)")
    if p["redis_cpu_pct"] + p["redis_wait_pct"] >= 88:
        out.append("Redis CPU")
    if not out:
        out.append("nothing saturated (paced)" if "offered_msgs_per_s" in p else "round trips")
    return " + ".join(out)


def ratio(a: float | None, b: float | None, nd: int = 2) -> str:
    if a is None or b is None or not b or a != a or b != b:
        return "–"
    return f"{a / b:.{nd}f}×"


def per_node(vals: list[float], nd: int = 0) -> str:
    if len(vals) == 1:
        return fmt(vals[0], nd)
    return " / ".join(f"{NODE_NAMES[i]} {fmt(v, nd)}" for i, v in enumerate(vals))


def cpu_per_node(p: dict[str, Any]) -> str:
    pairs = zip(p["node_cpu_pct"], p["node_wait_pct"], strict=True)
    cells = [f"{fmt(c)} (+{fmt(w)})" for c, w in pairs]
    if len(cells) == 1:
        return cells[0]
    return " / ".join(f"{NODE_NAMES[i]} {c}" for i, c in enumerate(cells))


def phase_rows(ps: list[dict[str, Any]], load_cpus: list[int] | None) -> list[str]:
    """Rows comparing one phase (closed loop or one pace) of the setups: ``ps[0]`` is the
    single node, ``ps[-1]`` the cluster, anything between a control (1 node over Redis)."""
    rows: list[str] = []
    base, mid = ps[0], ps[1:-1]

    def rat(vals: list[Any]) -> tuple[str, str]:
        return ratio(vals[-1], vals[0]), (ratio(vals[1], vals[0]) if mid else "")

    def row(name: str, cells: list[str], ratios: tuple[str, str] = ("", "")) -> None:
        tail = f" {ratios[1]} |" if mid else ""
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {ratios[0]} |" + tail)

    def num(name: str, key: str, nd: int = 0, bold: bool = False) -> None:
        vals = [p.get(key) for p in ps]
        cells = [fmt(v, nd) for v in vals]
        if bold:
            cells = [f"**{c}**" for c in cells]
        row(name, cells, rat(vals))

    paced = "offered_msgs_per_s" in base
    if paced:
        num("msgs/s achieved", "messages_per_s", 1)
        num("deliveries/s", "deliveries_per_s")
    else:
        num("deliveries/s (all subscribers)", "deliveries_per_s", bold=True)
        num("msgs/s", "messages_per_s")
    lat = [p["latency"] for p in ps]
    p50, p99 = rat([x["p50_ms"] for x in lat]), rat([x["p99_ms"] for x in lat])
    row(
        "latency p50 / p99 ms",
        [f"**{fmt(x['p50_ms'], 1)} / {fmt(x['p99_ms'], 1)}**" for x in lat],
        (f"{p50[0]} / {p99[0]}", f"{p50[1]} / {p99[1]}" if mid else ""),
    )
    row(
        "latency p1 ms (first subscribers served)",
        [fmt(x["p1_ms"], 1) for x in lat],
        rat([x["p1_ms"] for x in lat]),
    )
    sums = rat([sum(p["node_cpu_pct"]) for p in ps])
    row(
        "server CPU % per node (+ waiting for CPU)",
        [cpu_per_node(p) for p in ps],
        (sums[0] + " (sum)", sums[1]),
    )
    node_a = rat([p["node_us_per_msg"][0] for p in ps])
    row(
        "server CPU µs / msg per node",
        [per_node(p["node_us_per_msg"]) for p in ps],
        (node_a[0] + " (node A)", node_a[1]),
    )
    num("server CPU µs / delivery (all nodes)", "server_us_per_delivery", 2)
    norm = [1e6 / p["server_us_per_delivery"] if p["server_us_per_delivery"] else None for p in ps]
    row("CPU-normalised deliveries/s (one core)", [fmt(v) for v in norm], rat(norm))
    row(
        "Redis CPU % (+ waiting) · Redis µs / msg",
        [
            f"{fmt(p['redis_cpu_pct'])} (+{fmt(p['redis_wait_pct'])}) · "
            + (fmt(p["redis_us_per_msg"], 1) if p["redis_cmds"].get("evalsha") else "–")
            for p in ps
        ],
    )
    row(
        "load generators CPU % (sum of procs) · µs / delivery",
        [f"{fmt(sum(p['loadgen_cpu_pct']))} · {fmt(p['loadgen_us_per_delivery'], 2)}" for p in ps],
    )
    num("publisher CPU %", "publisher_cpu_pct")
    row(
        "CPU busy % per core · softirq+irq % · other processes %",
        [
            " / ".join(f"cpu{k} {fmt(v['busy_pct'])}" for k, v in sorted(p["cores"].items()))
            + f" · {fmt(p.get('irq_cpu_pct'))} · {fmt(p.get('other_cpu_pct'))}"
            for p in ps
        ],
    )
    row("limited by", [limited_by(p, load_cpus) for p in ps])
    row(
        "lost (dropped connections)",
        [f"{p['expected'] - p['deliveries']} ({p['dropped']})" for p in ps],
    )
    return rows


def redis_path_lines(run: dict[str, Any]) -> list[str]:
    out = []
    phases = [("closed loop", run.get("closed"))]
    phases += [(f"paced {k} msgs/s", v) for k, v in run.get("paced", {}).items()]
    for title, p in phases:
        if not p:
            continue
        lats = ", ".join(
            f"{NODE_NAMES[i]} {fmt(x['p50_ms'], 1)} / {fmt(x['p99_ms'], 1)}"
            for i, x in enumerate(p["latency_per_node"])
        )
        msgs = max(p["messages"], 1)
        cmds = sorted(p["redis_cmds"].items(), key=lambda kv: -kv[1][1])
        cmd_txt = ", ".join(
            f"`{k}` {calls / msgs:.2f}/msg × {usec / max(calls, 1):.0f} µs"
            for k, (calls, usec) in cmds[:5]
        )
        turns = p["redis_cmds"].get("evalsha", (0, 0))[0] / 3
        out.append(
            f"- **{title}**: p50 / p99 ms by node {lats}. "
            f"≈ {fmt(turns / (p['wall'] or 1))} publishing turns/s, "
            f"≈ {msgs / max(turns, 1):.1f} msgs per turn. Redis: {fmt(p['redis_cpu_pct'])} % "
            f"CPU, top commands by Redis time {cmd_txt or '–'}; "
            f"network out {p['redis_net_out'] / msgs:,.0f} B/msg"
        )
    return out


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    cfg = meta["config"]
    n3 = cfg["nodes"]
    paces = " and ".join(f"**{fmt(p)}**" for p in cfg["paces"])
    out = [f"# tidings cross-node benchmark (1 node vs {n3} nodes over Redis)\n"]
    out.append(
        f"- command: `{meta['command']}`  \n"
        f"- profile: **{meta['profile']}**, started {meta['started']}, took "
        f"{meta['elapsed_s']:.0f}s  \n"
        f"- machine: {meta['cpus']} CPUs ({meta['cpu_model']}), {meta['mem_gib']:.1f} GiB RAM, "
        f"Python {meta['python']}, load avg at start {meta['loadavg']}, at end "
        f"{meta['loadavg_end']}, RLIMIT_NOFILE {meta['nofile']}; tidings {meta['source']}  \n"
        f"- pinning: {meta['cpu_pinning']}; Redis {meta['redis_version']} (pid "
        f"{meta['redis_pid'] or 'not visible'}) is a shared service, not pinned: it runs on "
        f"whichever CPU is free  \n"
        f"- store: `memory://` on every node (the bench messages carry no `store`, so no store "
        f"is on the publish path); broker: `memory://` (1 node), "
        f"`{meta['redis_url']}?prefix=tidings-bench-<pid>-<random>:` ({n3} nodes, and the "
        f"1-node control; a fresh prefix per run, its keys deleted afterwards: "
        f"{meta['redis_cleanup']})  \n"
        f"- load: {cfg['subs']:,} subscribers per node ({cfg['workers_per_node']} load-generator "
        f"processes per node), 1 publisher → node A (`POST /publish`, lean HTTP client, "
        f"{cfg['window']} in flight), closed-loop window {cfg['window']}; {cfg['warmup']}s "
        f"warm-up, {cfg['duration']}s closed loop, then {cfg['paced_duration']}s paced at "
        f"{paces} msgs/s (the same paces for every setup); median of {cfg['repeat']} "
        f"interleaved run(s) by closed-loop deliveries/s"
    )
    for note in meta.get("notes", []):
        out.append(f"- note: {note}")
    out.append("")
    out.append(
        f"**What this measures.** All {n3} nodes share one core (Redis floats over both), so "
        f"the {n3}-node setup has the same server-CPU budget as the single node and the load "
        "generators have the same core: the comparison shows the *overhead of the Redis path* "
        "(publishing turn + `PUBLISH` on node A, pub/sub receive and decode on every node) and "
        "of splitting one core's fan-out over three processes — **not scale-out capacity**: on "
        "separate machines each node would have its own core. The *1 node, Redis broker* "
        "column is a control: the same single node as the first column, but publishing "
        "through Redis (turn, `PUBLISH`, pub/sub receive) — the Redis path without three "
        "processes competing for one core.\n"
    )
    runs: dict[str, list[dict[str, Any]]] = results["runs"]
    keys = [k for k in ("1", "1r", str(n3)) if runs.get(k)]
    med = {k: median_run(runs[k]) for k in keys}
    errors = [r for v in runs.values() for r in v if "error" in r]
    if any("closed" not in med.get(k, {}) for k in ("1", str(n3))):
        out.append("**error**: " + "; ".join(r["error"] for r in errors))
        return "\n".join(out)
    keys = [k for k in keys if "closed" in med[k]]
    cols = [med[k] for k in keys]
    names = {"1": "1 node", "1r": "1 node, Redis broker (control)", str(n3): f"{n3} nodes (Redis)"}
    control = len(cols) == 3
    load_cpus = meta.get("load_cpus")
    head = ["metric", *(names[k] for k in keys), f"**{n3}-node / 1-node**"]
    if control:
        head.append("control / 1-node")
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    blank = " |" * (len(head) - 1)
    out.append(
        "| subscribers connected | "
        + " | ".join(per_node(c["connected_per_node"]) for c in cols)
        + " |" * (len(head) - len(cols))
    )
    out.append("| **closed loop (flat out)** (median run by deliveries/s) |" + blank)
    out += phase_rows([c["closed"] for c in cols], load_cpus)
    for pace in cols[0].get("paced", {}):
        # latency is what the paced phases are for: per setup, the run with the median p50
        ps = [median_paced(runs[k], pace) for k in keys]
        if all(ps):
            out.append(f"| **paced at {pace} msgs/s** (median run by p50) |" + blank)
            out += phase_rows([p for p in ps if p], load_cpus)
    out.append("")

    for k in keys[1:]:
        out.append(f"### The Redis path: {names[k]}\n")
        paced = {pace: median_paced(runs[k], pace) for pace in med[k].get("paced", {})}
        out += redis_path_lines({"closed": med[k]["closed"], "paced": paced})
        out.append("")
    out.append(
        "\nRedis counters are instance-wide (`INFO commandstats`, `/proc/<pid>`): other clients "
        "of the shared Redis add to them. tidings' own traffic: 3 `EVALSHA` per publishing turn "
        "(acquire the channel's turn, fenced `PUBLISH`, finish), whose inner calls are counted "
        "too (per turn 5 `GET`, 2 `SET`, 1 `DEL`, and one `PUBLISH` per ≈ 512 KiB of "
        "messages), and every 6 s per node a heartbeat `MULTI`…`EXEC` with one `SET` per "
        "connection (`exec`, `set`).\n"
    )

    micro = results.get("micro")
    if micro:
        out.append(
            "### The Redis path in isolation (in-process, tidings' `RedisBroker`, before the "
            "setups run; nothing else of ours running)\n"
        )
        if "error" in micro and "msg_cpu_us" not in micro:
            out.append(f"- skipped: {micro['error']}\n")
        else:
            lat = micro["latency"]
            beats = ", ".join(f"{c:.0f} / {w:.0f}" for c, w in micro.get("heartbeat_ms", []))
            out.append(
                f"- one publishing turn with one message (acquire script → fenced `PUBLISH` "
                f"script → finish script) and receiving its pub/sub copy: "
                f"**{micro['msg_cpu_us']:.0f} µs CPU**, {micro['msg_wall_us']:.0f} µs wall, "
                f"publish → `deliver` p50 / p99 {fmt(lat['p50_ms'], 2)} / "
                f"{fmt(lat['p99_ms'], 2)} ms ({micro['messages']} messages one after another)\n"
                f"- an empty turn (acquire + finish scripts only): "
                f"{micro['empty_turn_cpu_us']:.0f} µs CPU\n"
                f"- one cluster heartbeat with {micro['conns']:,} connections (`MULTI`, one "
                f"`SET` per connection, `EXEC`; every 6 s on every node), CPU / wall ms: "
                f"{beats or '–'} — the node's event loop is busy for that long\n"
            )

    def per_run(k: str) -> str:
        vals = [r for r in runs.get(k, []) if "closed" in r]
        parts = ["deliveries/s " + "/".join(fmt(r["closed"]["deliveries_per_s"]) for r in vals)]
        for pace in cfg["paces"]:
            key = fmt(pace)
            ps = [r["paced"][key] for r in vals if key in r.get("paced", {})]
            parts.append(
                f"p50 ms at {key} msgs/s " + "/".join(fmt(p["latency"]["p50_ms"], 1) for p in ps)
            )
        return "; ".join(parts)

    out.append("Per run: " + ". ".join(f"{names[k]} — {per_run(k)}" for k in keys) + ".\n")
    problems = []
    for v in runs.values():
        for r in v:
            tag = r["setup"]
            if r.get("error"):
                problems.append(f"{tag}: {r['error']}")
            phases = [r.get("closed", {}), *r.get("paced", {}).values()]
            for p in phases:
                for key in ("close_codes", "other_frames"):
                    if p.get(key):
                        problems.append(f"{tag}: {key} {p[key]}")
            if r.get("publisher_errors"):
                problems.append(f"{tag}: publisher errors {r['publisher_errors']}")
            if r.get("connect_errors"):
                problems.append(
                    f"{tag}: {r['connect_errors']} connect errors ({r.get('first_connect_error')})"
                )
            for i, found in enumerate(r.get("log_problems") or []):
                for msg, n in sorted(found.items(), key=lambda kv: -kv[1])[:3]:
                    problems.append(
                        f"{tag}, node {NODE_NAMES[i]} log (before teardown): {n}× {msg}"
                    )
            if r.get("redis_keys_left") or r.get("redis_cleanup_error"):
                problems.append(
                    f"{tag}: Redis clean-up left {r.get('redis_keys_left')} keys "
                    f"{r.get('redis_cleanup_error', '')}"
                )
    if problems:
        out.append("Problems seen:\n" + "\n".join(f"- {p}" for p in problems[:25]) + "\n")
    teardown: dict[str, int] = {}
    for r in runs.get(str(n3), []):
        for found in r.get("log_problems_disconnect") or []:
            for msg, n in found.items():
                teardown[msg] = teardown.get(msg, 0) + n
    if teardown:
        out.append(
            f"Logged by the {n3} nodes while the load generators closed all their connections "
            "at once (teardown, after the measurements; summed over runs and nodes):\n"
        )
        for msg, n in sorted(teardown.items(), key=lambda kv: -kv[1])[:6]:
            out.append(f"- {n}× {msg}")
        out.append("")
    profs = [
        (k, path) for r in runs.get(str(n3), []) for k, path in (r.get("profiles") or {}).items()
    ]
    if profs:
        out.append(
            f"## Profiles (py-spy, extra phases after the first {n3}-node run's measurements)\n"
        )
        for name, path in profs:
            if not path:
                continue
            out.append(f"### {name}\n\nRaw collapsed stacks: `{path}`\n")
            out.append("```\n" + profiling.summarize(path) + "\n```\n")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------
# main


def source_facts() -> str:
    """Which tidings code ran (read-only git queries; the install is editable)."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "-C", str(BENCH_DIR.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(BENCH_DIR.parent), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"commit {head or '?'}" + (" + uncommitted changes in src/" if dirty else "")


def machine_facts() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return {"cpu_model": model, "mem_gib": mem}


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(PROFILES["quick" if args.quick else "full"])
    for key in ("subs", "duration", "repeat", "window", "workers_per_node"):
        v = getattr(args, key)
        if v is not None:
            cfg[key] = v
    if args.no_control:
        cfg["control"] = False
    if args.paces:
        cfg["paces"] = [float(x) for x in args.paces.split(",") if x.strip()]
    host = urllib.parse.urlsplit(args.redis).hostname
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit("--redis must point at 127.0.0.1")
    rmon = RedisMonitor(args.redis)
    notes: list[str] = []
    profile = not args.no_profile
    if profile and profiling.py_spy() is None:
        notes.append("no py-spy profile: py-spy not installed (/tmp/venv/bin/pip install py-spy)")
        profile = False
    srv_cpus, load_cpus = cpu_plan()
    results: dict[str, Any] = {
        "meta": {
            "command": " ".join([sys.executable, *sys.argv]),
            "profile": "quick" if args.quick else "full",
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "nofile": raise_nofile(),
            "cpu_pinning": f"all nodes on CPU {sorted(srv_cpus)}, load generators + publisher "
            f"on CPU {sorted(load_cpus)}"
            if srv_cpus and load_cpus
            else "off",
            "load_cpus": sorted(load_cpus) if srv_cpus and load_cpus else None,
            "source": source_facts(),
            "redis_url": args.redis,
            "redis_version": rmon.version,
            "redis_pid": rmon.pid,
            "notes": notes,
            "config": cfg,
            **machine_facts(),
        },
        "runs": {},
    }
    t_start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    runs: dict[str, list[dict[str, Any]]] = results["runs"]
    try:
        if not args.no_micro:
            log("Redis path in isolation (in-process RedisBroker)")
            results["micro"] = await redis_micro(args.redis, rmon)
        for rep in range(cfg["repeat"]):
            setups = [(1, False), *([(1, True)] if cfg["control"] else []), (cfg["nodes"], True)]
            for n, use_redis in setups if rep % 2 == 0 else reversed(setups):
                key = f"{n}r" if n == 1 and use_redis else str(n)
                prof = profile and n > 1 and rep == 0
                log(
                    f"{n} node(s){' over Redis' if use_redis else ''} × {cfg['subs']} "
                    f"subscribers (run {rep + 1}/{cfg['repeat']})"
                )
                r = await run_setup(n, use_redis, cfg, rmon, args.redis, prof)
                c = r.get("closed", {})
                log(
                    f"  → {fmt(c.get('deliveries_per_s'))} deliveries/s, "
                    f"{fmt(c.get('messages_per_s'))} msgs/s"
                    + (f"  ERROR {r['error']}" if "error" in r else "")
                )
                runs.setdefault(key, []).append(r)
    finally:
        cleaned = [r for v in runs.values() for r in v if "redis_prefix" in r]
        deleted = sum(r.get("redis_keys_deleted", 0) for r in cleaned)
        left = sum(r.get("redis_keys_left", 0) for r in cleaned)
        micro = results.get("micro")
        if micro:
            cleaned.append(micro)
            deleted += micro.get("keys_deleted", 0)
            left += micro.get("keys_left", 0)
        results["meta"]["redis_cleanup"] = (
            f"{len(cleaned)} prefixes, {deleted} keys deleted, {left} left"
        )
        rmon.close()
    results["meta"]["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results["meta"]["elapsed_s"] = time.monotonic() - t_start
    return results


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, for smoke testing")
    ap.add_argument("--subs", type=int, help="subscribers per node (default 1000)")
    ap.add_argument("--duration", type=float, help="closed-loop measured seconds")
    ap.add_argument("--repeat", type=int, help="interleaved repetitions (default 3)")
    ap.add_argument("--window", type=int, help="max messages ahead of the slowest subscriber")
    ap.add_argument("--paces", help="comma-separated msgs/s of the paced phases (default 20,50)")
    ap.add_argument(
        "--workers-per-node", dest="workers_per_node", type=int, help="load procs per node"
    )
    ap.add_argument("--redis", default=DEFAULT_REDIS, help="Redis URL (127.0.0.1 only)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy phase")
    ap.add_argument(
        "--no-control", action="store_true", help="skip the 1-node-over-Redis control setup"
    )
    ap.add_argument(
        "--no-micro", action="store_true", help="skip the in-process Redis-path measurement"
    )
    ap.add_argument(
        "--no-pin", action="store_true", help="do not pin nodes / load generators to CPUs"
    )
    ap.add_argument("--json", help="raw results path (default bench/results/cluster-<time>.json)")
    run_and_report(ap.parse_args(), amain, render, "cluster")


if __name__ == "__main__":
    main()
