"""Where the daemon's CPU goes during a flood: cProfile of an in-process daemon.

A real daemon runs in this process (``tachi.testing.inprocess_daemon``) under
cProfile, with one session printing a payload to one attached client that
reads as fast as it can; the top functions by cumulative and by own time are
printed. Use it before and after a change to the output path.

    .venv/bin/python bench/profile_daemon.py [--mib 32] [--shape lines|long-line|redraw]
        [--record] [--screen ghostty|avt] [--top 25]

``--screen`` (default: ghostty when plugins/tachi-ghostty is installed) is the
window's emulator, as in ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import importlib.util
import io
import pstats
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tachi
from tachi.models import PTYConfig, SessionRequest
from tachi.testing import inprocess_daemon


def payload(directory: Path, mib: int, shape: str) -> Path:
    path = directory / f"payload-{shape}"
    raw = mib * 3 // 4 * 2**20
    wrap = "-w 0" if shape == "long-line" else ""
    if shape == "redraw":
        frame = "".join(f"\x1b[{r};1H\x1b[3{r % 8}m" + "x" * 199 for r in range(1, 51))
        path.write_text(("\x1b[H" + frame) * (mib * 2**20 // (len(frame) + 3) + 1))
    else:
        subprocess.run(
            f"head -c {raw} /dev/urandom | base64 {wrap} > {path}", shell=True, check=True
        )
    return path


async def flood(home: Path, data: Path, record: bool, plugins: tuple[Any, ...]) -> float:
    async with inprocess_daemon(home, plugins) as daemon:  # noqa: SIM117 (the client needs the daemon)
        async with await tachi.AsyncClient.connect(daemon.config.socket, autostart=False) as c:
            command = f"read x; cat {shlex.quote(str(data))}; echo __E''ND__; sleep 60"
            s = await c.create(
                SessionRequest(
                    command=["sh", "-c", command],
                    pty=PTYConfig(rows=50, cols=200),
                    record=record,
                )
            )
            conn = await c.attach(s.id, size=PTYConfig(rows=50, cols=200))
            await c.send(s.id, "\n")
            t0 = time.perf_counter()
            tail = b""
            while b"__END__" not in tail:
                chunk = await conn.read()
                if not chunk:
                    break
                tail = (tail + chunk)[-64:]
            seconds = time.perf_counter() - t0
            await conn.close()
            await c.close(s.id)
            return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--shape", choices=["lines", "long-line", "redraw"], default="lines")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    ghostty = importlib.util.find_spec("tachi_ghostty") is not None
    parser.add_argument(
        "--screen", choices=["ghostty", "avt"], default="ghostty" if ghostty else "avt"
    )
    args = parser.parse_args()
    plugins = (importlib.import_module("tachi_ghostty"),) if args.screen == "ghostty" else ()
    with tempfile.TemporaryDirectory(prefix="tachi-prof-", dir="/tmp") as tmp:
        home = Path(tmp)
        data = payload(home, args.mib, args.shape)
        size = data.stat().st_size
        profiler = cProfile.Profile()
        profiler.enable()
        seconds = asyncio.run(flood(home, data, args.record, plugins))
        profiler.disable()
    rate = size / seconds / 2**20
    mib = size / 2**20
    print(f"{args.shape} ({args.screen}): {mib:.1f} MiB in {seconds:.2f} s = {rate:.1f} MiB/s")
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(args.top)
        print(f"--- by {key} ---")
        print("\n".join(out.getvalue().splitlines()[6:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
