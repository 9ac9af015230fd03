"""The hub's own cost per message, without sockets (issue 14).

    .venv/bin/python bench/hub_micro.py                        # rooms and hot-channel shapes
    .venv/bin/python bench/hub_micro.py --tidings-src /path/to/other/checkout/src   # before/after
    valgrind --tool=callgrind .venv/bin/python bench/hub_micro.py --only rooms --messages 2000

A real ``Hub`` on the memory backends; connections write to an outlet that joins the wire bytes
(what a transport write would get) and drops them. Client messages go through
``Hub.handle_frame`` exactly as the WebSocket adapter hands them over, ``--per-turn`` of them
per event-loop turn. What is left out is aiohttp's frame reader and the ``send`` system calls,
which cost the same whatever the hub does; what remains is the part this issue changes, measured
as process CPU time (best of ``--repeat``), which is far steadier on a shared machine than
wall-clock throughput. ``--tidings-src`` measures another checkout in a child process, in the
same sitting, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

SECRET = b"tidings-bench-hs256-secret-0123456789abcdef"

SHAPES = {
    # name: (rooms, subscribers per room, publishers, messages per loop turn)
    "rooms": (1000, 10, 1000, 1),
    "rooms-busy": (1000, 10, 1000, 8),
    "rooms-small": (100, 10, 100, 1),  # for --callgrind: the same path, a quicker set-up
    "hot": (1, 1000, 1, 64),
    "hot-serial": (1, 1000, 1, 1),
}


class DropOutlet:
    """Frames as a transport would get them (wire bytes, joined per write), then dropped."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, frames: Sequence[Any]) -> None:
        if len(frames) == 1:
            self.bytes += len(frames[0].wire)
        else:
            self.bytes += len(b"".join([f.wire for f in frames]))

    def writable(self) -> bool:
        return True

    async def wait_writable(self) -> None:
        return None

    def close(self, code: int, reason: str) -> None:
        return None


def _token(claims: dict[str, Any]) -> str:
    from joserfc import jwt
    from joserfc.jwk import OctKey

    body = {"scope": "connect", "exp": int(time.time()) + 3600, **claims}
    return jwt.encode({"alg": "HS256", "typ": "JWT"}, body, OctKey.import_key(SECRET))


async def _measure(shape: str, messages: int, repeat: int, broker_url: str) -> dict[str, float]:
    import orjson

    from tidings.broker import open_broker
    from tidings.config import AuthSettings, BackendSettings, Secret, Settings, SigningKeySetting
    from tidings.hub.hub import Hub
    from tidings.store.memory import MemoryStore

    rooms, per_room, publishers, per_turn = SHAPES[shape]
    settings = Settings(
        auth=AuthSettings(
            signing_keys=(SigningKeySetting("HS256", Secret(base64.b64encode(SECRET).decode())),),
            api_keys=(Secret("bench-api-key-0123456789abcdef"),),
        ),
        backends=BackendSettings(store="memory://"),
    )
    prefix = f"tidings-bench-micro-{os.getpid()}:"
    if broker_url.startswith("redis://"):
        broker_url += ("&" if "?" in broker_url else "?") + f"prefix={prefix}"
    hub = Hub(settings=settings, store=MemoryStore(), broker=open_broker(broker_url))
    await hub.start()
    sub_claims = {"channels": {"room.*": {"subscribe": True}}}
    pub_claims = {"channels": {"room.*": {"messages": {"chat": {"broadcast": True}}}}}
    sub_token, pub_token = _token(sub_claims), _token(pub_claims)
    outlets = []
    for r in range(rooms):
        for _ in range(per_room):
            outlet = DropOutlet()
            conn = hub.open_connection(await hub.authenticate(sub_token), outlet)
            await hub.start_connection(conn)
            frame = orjson.dumps({"event": "hotsock.subscribe", "channel": f"room.{r}"})
            await hub.handle_frame(conn, frame)
            outlets.append(outlet)
    pubs = []
    for _ in range(publishers):
        conn = hub.open_connection(await hub.authenticate(pub_token), DropOutlet())
        await hub.start_connection(conn)
        pubs.append(conn)
    pad = "x" * 60
    frames = [
        orjson.dumps(
            {
                "event": "chat",
                "channel": f"room.{(i * 7919) % rooms}",
                "data": {"ts": time.time_ns(), "p": pad},
            }
        ).decode()
        for i in range(messages)
    ]
    best = float("inf")
    for _ in range(repeat):
        before = sum(o.bytes for o in outlets)
        t0 = time.process_time()
        for i, text in enumerate(frames):
            await hub.handle_frame(pubs[i % publishers], text)
            if i % per_turn == per_turn - 1:
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        best = min(best, time.process_time() - t0)
        assert sum(o.bytes for o in outlets) > before, "nothing was delivered"
    await hub.drain()
    if broker_url.startswith("redis://"):
        _delete_prefix(broker_url, prefix)
    deliveries = messages * per_room
    return {
        "us_per_message": best / messages * 1e6,
        "us_per_delivery": best / deliveries * 1e6,
    }


def _delete_prefix(url: str, prefix: str) -> None:
    """Remove this run's keys from the shared Redis (nothing else is touched)."""
    import redis

    r = redis.Redis.from_url(url.split("?")[0])
    pattern = prefix.replace("[", "\\[").replace("*", "\\*").replace("?", "\\?") + "*"
    keys = list(r.scan_iter(match=pattern, count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i : i + 500])
    r.close()


def _child(
    shape: str, messages: int, repeat: int, src: str | None, broker: str
) -> dict[str, float]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    out = subprocess.run(
        [sys.executable, __file__, "--child", shape, "--messages", str(messages)]
        + ["--repeat", str(repeat), "--broker", broker],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def _instructions(shape: str, messages: int, src: str | None, broker: str) -> float:
    """Instructions per message under callgrind: the difference between a run of 2×messages
    and one of ``messages``, so start-up, imports and connection set-up cancel out."""
    counts = []
    for n in (messages, 2 * messages):
        env = dict(os.environ)
        if src:
            env["PYTHONPATH"] = src
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "callgrind.out")
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
                + [__file__, "--child", shape, "--messages", str(n), "--repeat", "1"]
                + ["--broker", broker],
                env=env,
                check=True,
                capture_output=True,
            )
            with open(out) as f:
                total = next(int(line.split()[1]) for line in f if line.startswith("totals:"))
        counts.append(total)
    return (counts[1] - counts[0]) / messages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default=",".join(SHAPES), help="shapes: " + ", ".join(SHAPES))
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of, within one process")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved processes per variant")
    ap.add_argument("--tidings-src", help="another checkout's src/, measured as 'base'")
    ap.add_argument(
        "--broker",
        default="memory://",
        help="broker URL; redis://… gets a fresh key prefix, deleted afterwards",
    )
    ap.add_argument(
        "--callgrind",
        action="store_true",
        help="instructions per message under valgrind instead of CPU time (slow; steady on a\n"
        "shared machine); use with --only rooms-small --messages 500",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = asyncio.run(_measure(args.child, args.messages, args.repeat, args.broker))
        print(json.dumps(result))
        return
    variants: dict[str, str | None] = {"this": None}
    if args.tidings_src:
        variants["base"] = os.path.abspath(args.tidings_src)
    print(f"Command: `python bench/hub_micro.py {' '.join(sys.argv[1:])}`".rstrip())
    print()
    if args.callgrind:
        print(
            "| shape (rooms × subscribers, messages per turn) | variant | instructions/message "
            "| ratio to base |"
        )
        print("|---|---|---|---|")
        for shape in args.only.split(","):
            rooms, per_room, _, per_turn = SHAPES[shape]
            ir = {
                v: _instructions(shape, args.messages, src, args.broker)
                for v, src in variants.items()
            }
            for v, count in ir.items():
                ratio = f"{count / ir['base']:.2f}" if "base" in ir else "–"
                label = f"{shape}: {rooms:,} × {per_room:,}, {per_turn}/turn"
                print(f"| {label} | {v} | {count:,.0f} | {ratio} |")
        return
    print(
        "| shape (rooms × subscribers, messages per turn) | variant | µs/message | µs/delivery "
        "| ratio to base |"
    )
    print("|---|---|---|---|---|")
    for shape in args.only.split(","):
        got: dict[str, list[float]] = {v: [] for v in variants}
        for rnd in range(args.rounds):
            order = list(variants) if rnd % 2 == 0 else list(reversed(variants))
            for v in order:
                got[v].append(
                    _child(shape, args.messages, args.repeat, variants[v], args.broker)[
                        "us_per_message"
                    ]
                )
        rooms, per_room, _, per_turn = SHAPES[shape]
        base = min(got["base"]) if "base" in got else None
        for v, vals in got.items():
            ratio = f"{min(vals) / base:.2f}" if base else "–"
            print(
                f"| {shape}: {rooms:,} × {per_room:,}, {per_turn}/turn | {v} "
                f"| {min(vals):.2f} ({max(vals):.2f}) | {min(vals) / per_room:.3f} | {ratio} |"
            )


if __name__ == "__main__":
    main()
