"""Cost of ``core/frames.py``'s ``FrameCheck`` next to aiohttp's own (Cython) frame reader, on
the same chunk of 64 masked ~100-byte text frames, interleaved in one run.

    python bench/frame_check.py [--rounds 5] [--chunks 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader

from tidings.core.frames import FrameCheck

MESSAGE = (
    b'{"event":"chat","channel":"room","data":{"text":"a chat line of about a hundred bytes"}}'
)
MASK = b"\x37\xfa\x21\x3d"


def masked_text(payload: bytes) -> bytes:
    return (
        bytes([0x81, 0x80 | len(payload)])
        + MASK
        + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    )


class _Transport:
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


async def amain(args: argparse.Namespace) -> None:
    chunk = masked_text(MESSAGE) * 64
    frames = args.chunks * 64
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(args.rounds):
        queue = WebSocketDataQueue(_Transport(), 2**30, loop=asyncio.get_running_loop())
        reader = WebSocketReader(queue, 2**20, False, True)
        started = time.perf_counter()
        buffer = getattr(queue, "_buffer", None)  # drained so memory stays flat, as in a server
        for _ in range(args.chunks):
            reader.feed_data(chunk)
            if buffer is not None:
                buffer.clear()
        theirs.append((time.perf_counter() - started) / frames)
        check = FrameCheck()
        started = time.perf_counter()
        for _ in range(args.chunks):
            check.receive_data(chunk)
        ours.append((time.perf_counter() - started) / frames)
    a, o = statistics.median(theirs), statistics.median(ours)
    print(f"command: python bench/frame_check.py --rounds {args.rounds} --chunks {args.chunks}")
    print(f"load avg {os.getloadavg()[0]:.2f}; medians of {args.rounds} interleaved rounds")
    print(f"aiohttp WebSocketReader: {a * 1e9:.0f} ns/frame")
    print(f"FrameCheck:              {o * 1e9:.0f} ns/frame ({o / a:.0%} of aiohttp's reader)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=3000)
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
