"""py-spy sampling of a server under test (``run.py --profile``).

Records collapsed stacks (``--format raw``; feed them to flamegraph.pl or speedscope for a
picture) and summarises them as text: the functions with the most *self* samples and the
functions (from the server's own package first) with the most *inclusive* samples.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from common import BENCH_DIR


def py_spy() -> str | None:
    cand = Path(sys.executable).parent / "py-spy"
    return str(cand) if cand.exists() else None


def start(
    pid: int, label: str, seconds: float, rate: int = 250
) -> tuple[subprocess.Popen[bytes], Path] | None:
    exe = py_spy()
    if exe is None:
        return None
    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"profile-{label}.txt"
    proc = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    return proc, path


def finish(handle: tuple[subprocess.Popen[bytes], Path] | None) -> str | None:
    if handle is None:
        return None
    proc, path = handle
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    return str(path) if path.exists() else None


def _short(frame: str) -> str:
    # "func (/long/path/site-packages/pkg/mod.py:123)" -> "func (pkg/mod.py:123)"
    if "(" not in frame:
        return frame
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in loc:
            loc = loc.split(marker, 1)[1]
            break
    return f"{name} ({loc})"


def summarize(path: str, top: int = 12, focus: str = "tidings/") -> str:
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        c = int(n)
        total += c
        frames = [_short(f) for f in stack.split(";")]
        self_c[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    if not total:
        return "(no samples)"
    out = [f"{total} samples (non-idle). Top self time:", ""]
    out += [f"    {100 * c / total:5.1f} %  {f}" for f, c in self_c.most_common(top)]
    own = [(f, c) for f, c in incl.most_common() if focus in f][:top]
    if own:
        out += ["", f"Top inclusive time in `{focus}` frames:", ""]
        out += [f"    {100 * c / total:5.1f} %  {f}" for f, c in own]
    return "\n".join(out)
