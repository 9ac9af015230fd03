"""Diagnostics: where does tidings' per-connection memory go?

    /tmp/venv/bin/python bench/memprofile.py [--conns 2000] [--top 25] [--group lineno|filename]

Runs a tidings node *in this process* under ``tracemalloc`` (through its internal ``Node`` /
``Settings`` API — a diagnostic, not part of the §23 contract, so it may need adjusting when
those change), opens ``--conns`` idle authenticated connections from a load-generator process,
and prints the Python allocations that grew, per connection, by source line. RSS numbers here
include tracemalloc's own bookkeeping; use ``run.py`` for the real KiB/connection figure.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ServerSpec, free_port, proc_rss_kib, raise_nofile, tidings_env


async def amain(args: argparse.Namespace) -> None:
    from run import Workers

    port = free_port()
    os.environ.update(tidings_env({"TIDINGS_HOST": "127.0.0.1", "TIDINGS_PORT": str(port)}))
    from tidings.config import Settings
    from tidings.server.app import Node

    tracemalloc.start(1)
    node = Node(Settings.load(config_file=None))
    await node.start()
    port = node.port or port
    spec = ServerSpec(name="tidings", cmd=[], flavor="hotsock", publish="http", auth=True)
    try:
        warm = Workers(spec, port, [{"mode": "hold", "n": 20}])
        await warm.recv_all(60)
        await warm.stop()
        await asyncio.sleep(0.5)
        gc.collect()
        snap0 = tracemalloc.take_snapshot()
        rss0 = proc_rss_kib(os.getpid())
        half = args.conns // 2
        workers = Workers(
            spec, port, [{"mode": "hold", "n": half}, {"mode": "hold", "n": args.conns - half}]
        )
        readies = await workers.recv_all(180)
        n = sum(r["connected"] for r in readies)
        await asyncio.sleep(2.0)
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        rss1 = proc_rss_kib(os.getpid())
        filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
        snap0, snap1 = snap0.filter_traces(filters), snap1.filter_traces(filters)
        diff = snap1.compare_to(snap0, args.group)
        total = sum(d.size_diff for d in diff)
        print(f"connections: {n}")
        print(
            f"traced Python heap growth: {total / n:,.0f} B/connection ({total / n / 1024:.2f} KiB)"
        )
        print(f"RSS growth (incl. tracemalloc overhead): {(rss1 - rss0) / n:.2f} KiB/connection\n")
        print(f"{'B/conn':>9} {'blocks/conn':>11}  where")
        for d in diff[: args.top]:
            if d.size_diff <= 0:
                continue
            fr = d.traceback[0]
            where = f"{fr.filename}:{fr.lineno}" if args.group == "lineno" else fr.filename
            for prefix in (
                sys.prefix + "/lib/python3.11/site-packages/",
                sys.base_prefix + "/lib/",
            ):
                where = where.replace(prefix, "")
            where = where.replace(
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/", ""
            )
            print(f"{d.size_diff / n:9,.0f} {d.count_diff / n:11.2f}  {where}")
        await workers.stop()
    finally:
        await node.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--group", choices=["lineno", "filename"], default="lineno")
    raise_nofile()
    asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    main()
