"""tachi vs tmux vs a raw PTY, side by side in one run.

Each metric is measured round by round with the systems interleaved, so noise
on this (2-core, shared) machine hits all of them alike. Reported: median, min,
max over rounds and the ratio to tmux. Nothing here asserts a timing.

    .venv/bin/python bench/run.py [--quick] [--rounds N] [--only a,b] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptyprocess import PtyProcess

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TACHI = [PY, "-m", "tachi"]
ROWS, COLS = 50, 200
ECHO_PROGRAM = (
    "import os,sys,tty; tty.setraw(0); os.write(1, b'ready'); "
    "exec('while True:\\n d = os.read(0, 64)\\n if not d: break\\n os.write(1, d)')"
)


# -- plumbing ------------------------------------------------------------------------
class Env:
    """Private tachi daemon and tmux server for the run; cleaned up on exit."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))
        self.env = {
            **os.environ,
            "TACHI_HOME": str(self.dir),
            "TACHI_SOCKET": str(self.dir / "s.sock"),
            "TACHI_LOAD_PLUGINS": "",
        }
        self.env.pop("TMUX", None)
        self.tmux = ["tmux", "-L", f"tachibench{os.getpid()}", "-f", "/dev/null"]
        self.data = self.dir / "payload.b64"

    def tachi(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(
            [*TACHI, *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if check and out.returncode:
            raise RuntimeError(f"tachi {' '.join(args)}: {out.stderr}")
        return out.stdout

    def tmux_cmd(self, *args: str) -> str:
        return subprocess.run(
            [*self.tmux, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    def daemon_pid(self) -> int:
        return int(json.loads(self.tachi("daemon", "status", "--json"))["pid"])

    def tmux_pid(self) -> int:
        return int(self.tmux_cmd("display", "-p", "#{pid}").strip())

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], env=self.env, capture_output=True)
        subprocess.run([*TACHI, "daemon", "stop"], env=self.env, capture_output=True)
        if not os.environ.get("TACHI_BENCH_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)


def spawn(argv: list[str], env: dict[str, str]) -> PtyProcess:
    return PtyProcess.spawn(argv, env=env, dimensions=(ROWS, COLS))


def drain_until(proc: PtyProcess, marker: bytes, timeout: float = 120) -> tuple[float, int]:
    """Read the client's terminal as fast as possible until ``marker``; (seconds, bytes)."""
    start, total, tail = time.perf_counter(), 0, b""
    deadline = start + timeout
    while time.perf_counter() < deadline:
        if select.select([proc.fd], [], [], 1)[0]:
            try:
                chunk = os.read(proc.fd, 1 << 16)
            except OSError:
                break
            total += len(chunk)
            tail = (tail + chunk)[-(len(marker) + 65536) :]
            if marker in tail:
                return time.perf_counter() - start, total
    raise TimeoutError(f"marker {marker!r} not seen")


def kill(proc: PtyProcess) -> None:
    with contextlib.suppress(Exception):
        proc.kill(9)
        proc.close(force=True)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def stats(samples: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


# -- benchmarks ------------------------------------------------------------------------
def new_session(env: Env, system: str, name: str, command: str, record: bool = False) -> list[str]:
    """Start ``command`` detached in a 200x50 session; returns the attach command."""
    if system == "tmux":
        env.tmux_cmd("new-session", "-d", "-s", name, "-x", str(COLS), "-y", str(ROWS), command)
        return [*env.tmux, "attach", "-t", name]
    size = ["--rows", str(ROWS), "--cols", str(COLS)]
    flags = ["--record"] if record else []
    env.tachi("new", "-d", "--name", name, *flags, *size, "--", "bash", "--norc", "-c", command)
    return [*TACHI, "attach", name]


def session_and_client(
    env: Env, system: str, name: str, command: str, record: bool = False
) -> tuple[PtyProcess, Callable[[str], None]]:
    """Start ``command`` in a session of ``system`` and attach a 200x50 client;
    returns the client and a function that types a line into the session."""
    if system == "raw":
        proc = spawn(["bash", "--norc", "-c", command], env.env)
        return proc, lambda line: proc.write(line.encode())
    proc = spawn(new_session(env, system, name, command, record), env.env)
    if system == "tmux":
        return proc, lambda line: env.tmux_cmd("send-keys", "-t", name, "-l", line)
    return proc, lambda line: env.tachi("send", name, "--literal", line)


def end_session(env: Env, system: str, name: str, proc: PtyProcess) -> None:
    kill(proc)
    if system == "tmux":
        subprocess.run([*env.tmux, "kill-session", "-t", name], capture_output=True)
    elif system.startswith("tachi"):
        env.tachi("close", name, check=False)


def make_shapes(env: Env, size_mib: int) -> dict[str, Path]:
    """The throughput payloads: line-broken base64 (``env.data``), the same as one
    long line (``base64 -w 0``), source code, and a full-screen redraw flood of
    colours and cursor moves (what vim or htop send)."""
    import random

    nbytes = size_mib * 2**20
    long_line = env.dir / "payload-long.b64"
    subprocess.run(f"tr -d '\\n' < {env.data} > {long_line}", shell=True, check=True)
    source = env.dir / "payload.py"
    code = b"".join(p.read_bytes() for p in sorted((ROOT / "tachi").rglob("*.py")))
    source.write_bytes((code * (nbytes // len(code) + 1))[:nbytes])
    rng = random.Random(7)
    frames = []
    for _ in range(64):
        rows = [
            f"\x1b[{r + 1};1H\x1b[3{rng.randrange(8)};4{rng.randrange(8)}m"
            + "".join(rng.choice("abcdefghij0123456789 %#.") for _ in range(COLS - 1))
            for r in range(ROWS)
        ]
        frames.append(("\x1b[H" + "".join(rows) + "\x1b[0m").encode())
    flood = b"".join(frames)
    redraw = env.dir / "payload-redraw.bin"
    redraw.write_bytes((flood * (nbytes // len(flood) + 1))[:nbytes])
    return {"lines": env.data, "long-line": long_line, "source": source, "redraw": redraw}


def bench_throughput(
    env: Env, system: str, rnd: int, record: bool = False, data: Path | None = None
) -> dict[str, float]:
    data = data or env.data
    name = f"tp{'r' if record else 'p'}{rnd}{system.replace('+', '')}"
    size = data.stat().st_size
    command = f"read x; cat {data}; echo __E''ND__; sleep 3600"
    proc, type_line = session_and_client(
        env, "tachi" if system.startswith("tachi") else system, name, command, record
    )
    try:
        time.sleep(0.5)
        # Drain whatever the attach drew, then start the flood.
        while select.select([proc.fd], [], [], 0.2)[0]:
            os.read(proc.fd, 1 << 16)
        type_line("\n")
        seconds, delivered = drain_until(proc, b"__END__")
        return {
            "mib_s": size / seconds / 2**20,
            "delivered_mib": delivered / 2**20,
            "seconds": seconds,
        }
    finally:
        end_session(env, system, name, proc)


def transport_main(
    description: str,
    name: str,
    make_env: Callable[[], Any],
    systems: Callable[[Any], list[str]],
    benches: dict[str, Callable[[Any, str, int, bool], dict[str, float]]],
) -> int:
    """The command line shared by the transport benchmarks (bench/ssh.py,
    bench/websocket.py): a payload, then each of ``benches`` (throughput, echo,
    command) interleaved over ``systems(env)``, a table and the raw samples.
    Each bench is called as ``bench(env, system, round, quick)``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / f"{name}-latest.json"))
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    env = make_env()
    results: dict[str, Any] = {"rounds": rounds, "quick": args.quick}
    try:
        size_mib = 4 if args.quick else 32
        subprocess.run(
            f"head -c {size_mib * 3 // 4 * 2**20} /dev/urandom | base64 > {env.data}",
            shell=True,
            check=True,
        )
        env.start()
        for bench, run in benches.items():
            results[bench] = interleaved(
                rounds, systems(env), lambda s, r, run=run: run(env, s, r, args.quick)
            )
    finally:
        env.close()
    print_table(
        results,
        [("throughput", ["mib_s", "delivered_mib"]), ("echo", ["p50_ms", "p99_ms"]),
         ("command", ["ms"])],
    )  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"raw samples: {args.json}")
    return 0


def echo_round_trips(proc: PtyProcess, keys: int) -> dict[str, float]:
    """Type ``keys`` single keys into a client showing an echo program; p50/p99 ms
    from each write to its echo coming back."""
    samples = []
    for i in range(keys):
        key = b"abcdefghij"[i % 10 : i % 10 + 1]
        t0 = time.perf_counter()
        os.write(proc.fd, key)
        got = b""
        while key not in got:
            select.select([proc.fd], [], [], 5)
            got += os.read(proc.fd, 4096)
        samples.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(samples, n=100)
    return {"p50_ms": statistics.median(samples), "p99_ms": q[98]}


def median_wall_ms(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    """Median wall time of running ``argv`` to completion, ``runs`` times."""
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True, timeout=30)
        samples.append((time.perf_counter() - t0) * 1000)
    return {"ms": statistics.median(samples)}


def print_table(results: dict[str, Any], metrics: list[tuple[str, list[str]]]) -> None:
    """One line per benchmark, metric and system: median (min-max, n)."""
    for bench, keys in metrics:
        for key in keys:
            for system, data in results[bench].items():
                if key in data:
                    s = data[key]
                    print(
                        f"{bench:10} {key:14} {system:8} {s['median']:9.2f}"
                        f"  ({s['min']:.2f}-{s['max']:.2f}, n={s['n']})"
                    )
                else:
                    print(f"{bench:10} {key:14} {system:8} error: {data['samples']}")


def bench_echo(env: Env, system: str, rnd: int, keys: int) -> dict[str, float]:
    name = f"ec{rnd}{system}"
    proc, _ = session_and_client(env, system, name, f'{PY} -c "{ECHO_PROGRAM}"')
    try:
        drain_until(proc, b"ready", 15)
        time.sleep(0.3)
        while select.select([proc.fd], [], [], 0.2)[0]:
            os.read(proc.fd, 1 << 16)
        return echo_round_trips(proc, keys)
    finally:
        end_session(env, system, name, proc)


def bench_attach(env: Env, system: str, rnd: int) -> dict[str, float]:
    name = f"at{rnd}{system}"
    command = (
        "for i in $(seq 1 48); do printf 'line %03d %0150d\\n' $i 0; done;"
        " echo SCREEN''-READY; sleep 3600"
    )
    argv = new_session(env, system, name, command)
    time.sleep(0.5)
    t0 = time.perf_counter()
    proc = spawn(argv, env.env)
    try:
        drain_until(proc, b"SCREEN-READY", 15)
        return {"ms": (time.perf_counter() - t0) * 1000}
    finally:
        end_session(env, system, name, proc)


#: What `tachi ls` imports, without running it: the import share of its start-up.
_TACHI_IMPORTS = "import tachi.cli.main, tachi.cli.session_cmds, tachi.client.sync"


def bench_startup(env: Env, system: str, runs: int) -> dict[str, float]:
    """Whole-process wall time. Read side by side, the rows break `tachi ls` down:
    interpreter (`python`), imports (`tachi imports` minus `python`), and the rest
    (connect, hello, the request, printing: `tachi ls` minus `tachi imports`)."""
    tachi = str(Path(PY).parent / "tachi")
    argv = {
        "tachi": [tachi, "ls"],
        "tachi send": [tachi, "send", "startup", "x"],
        "tachi capture": [tachi, "capture", "startup"],
        "tachi imports": [PY, "-c", _TACHI_IMPORTS],
        "tmux": [*env.tmux, "ls"],
        "python": [PY, "-c", "pass"],
        "python -I -S": [PY, "-I", "-S", "-c", "pass"],
    }[system]
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append((time.perf_counter() - t0) * 1000)
    return {"ms": statistics.median(samples)}


def bench_idle(env: Env, count: int, seconds: float) -> dict[str, Any]:
    """The daemon's CPU over ``seconds`` with ``count`` idle sessions, as a
    percentage of one core (from /proc: user + system ticks)."""
    names = [f"idle{i}" for i in range(count)]
    for name in names:
        env.tachi("new", "-d", "--name", name, "--", "sleep", "3600")
    pid = env.daemon_pid()
    hz = os.sysconf("SC_CLK_TCK")

    def ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    time.sleep(1.0)
    before, t0 = ticks(), time.monotonic()
    time.sleep(seconds)
    used = (ticks() - before) / hz
    wall = time.monotonic() - t0
    for name in names:
        env.tachi("close", name, check=False)
    return {"sessions": count, "cpu_percent": 100 * used / wall, "rss_kib": rss_kib(pid)}


def bench_sessions(env: Env, system: str, count: int) -> dict[str, float]:
    """Create ``count`` idle sessions; time it and the server's RSS per session."""
    if system == "tmux":
        env.tmux_cmd("new-session", "-d", "-s", "base", "sleep 3600")
        pid = env.tmux_pid()
        base = rss_kib(pid)
        t0 = time.perf_counter()
        for i in range(count):
            env.tmux_cmd("new-session", "-d", "-s", f"idle{i}", "sleep 3600")
        seconds = time.perf_counter() - t0
        result = {"create_s": seconds}
    else:
        env.tachi("new", "-d", "--name", "base", "--", "sleep", "3600")
        pid = env.daemon_pid()
        base = rss_kib(pid)
        t0 = time.perf_counter()
        if system == "tachi-cli":
            for i in range(count):
                env.tachi("new", "-d", "--name", f"idle{i}", "--", "sleep", "3600")
        else:
            sys.path.insert(0, str(ROOT))
            from tachi.client.sync import Client
            from tachi.models import SessionRequest

            with Client(env.env["TACHI_SOCKET"], autostart=False) as client:
                for i in range(count):
                    client.create(SessionRequest(name=f"idle{i}", command=["sleep", "3600"]))
        result = {"create_s": time.perf_counter() - t0}
    time.sleep(0.5)
    total = rss_kib(pid)
    result |= {
        "rss_1_kib": base,
        f"rss_{count + 1}_kib": total,
        "kib_per_session": (total - base) / count,
    }
    return result


def bench_switch(env: Env, system: str, switches: int) -> dict[str, float]:
    name = f"sw{system}"
    page = (
        "for i in $(seq 1 49); do printf 'w{n} %0150d\\n' $i; done; printf WIN{n}''-TOP; sleep 3600"
    )
    argv = new_session(env, system, name, page.format(n=0))
    if system == "tmux":
        for n in range(1, 10):
            env.tmux_cmd("new-window", "-t", name, page.format(n=n))
        select_cmd = lambda n: env.tmux_cmd("select-window", "-t", f"{name}:{n}")  # noqa: E731
    else:
        for n in range(1, 10):
            env.tachi("window", "new", name, "--", "bash", "--norc", "-c", page.format(n=n))
        sys.path.insert(0, str(ROOT))
        from tachi.client.sync import Client

        client = Client(env.env["TACHI_SOCKET"], autostart=False)
        select_cmd = lambda n: client.switch_window(name, n)  # noqa: E731
    proc = spawn(argv, env.env)
    try:
        time.sleep(1.0)
        samples = []
        for i in range(switches):
            n = (i * 3 + 1) % 10
            while select.select([proc.fd], [], [], 0.05)[0]:
                os.read(proc.fd, 1 << 16)
            t0 = time.perf_counter()
            select_cmd(n)
            drain_until(proc, f"WIN{n}-TOP".encode(), 10)
            samples.append((time.perf_counter() - t0) * 1000)
        return {
            "median_ms": statistics.median(samples),
            "p90_ms": statistics.quantiles(samples, n=10)[8],
        }
    finally:
        end_session(env, system, name, proc)


# -- driver --------------------------------------------------------------------------------
def interleaved(
    rounds: int, systems: list[str], fn: Callable[[str, int], dict[str, float]]
) -> dict[str, dict[str, Any]]:
    raw: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    for rnd in range(rounds):
        for system in systems:
            try:
                raw[system].append(fn(system, rnd))
            except Exception as exc:  # one system failing is a finding, not the end of the run
                raw[system].append({"error": str(exc)})
    out: dict[str, dict[str, Any]] = {}
    for system, samples in raw.items():
        good = [s for s in samples if "error" not in s]
        out[system] = {"samples": samples}
        if good:
            for key in good[0]:
                out[system][key] = stats([s[key] for s in good])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, few rounds (a smoke run)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated: throughput,shapes,echo,attach,startup,sessions,switch,recording,"
        "idle",
    )
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    only = set(filter(None, args.only.split(",")))
    want = lambda name: not only or name in only  # noqa: E731
    env = Env()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "tmux": subprocess.run(["tmux", "-V"], capture_output=True, text=True).stdout.strip(),
        },
        "quick": args.quick,
        "rounds": rounds,
    }
    try:
        size_mib = 4 if args.quick else 64
        subprocess.run(
            f"head -c {size_mib * 3 // 4 * 2**20} /dev/urandom | base64 > {env.data}",
            shell=True,
            check=True,
        )
        env.tachi("daemon", "start")
        env.tmux_cmd("new-session", "-d", "-s", "keepalive", "sleep 36000")
        if want("throughput"):
            results["throughput"] = interleaved(
                rounds, ["raw", "tmux", "tachi"], lambda s, r: bench_throughput(env, s, r)
            )
        if want("shapes"):
            for shape, path in make_shapes(env, size_mib).items():
                if shape == "lines":
                    continue
                results[f"throughput-{shape}"] = interleaved(
                    rounds,
                    ["raw", "tmux", "tachi"],
                    lambda s, r, path=path: bench_throughput(env, s, r, data=path),
                )
        if want("recording"):
            results["recording"] = interleaved(
                rounds,
                ["tachi", "tachi+record"],
                lambda s, r: bench_throughput(env, s, r, record=s.endswith("record")),
            )
        if want("echo"):
            keys = 100 if args.quick else 500
            results["echo"] = interleaved(
                rounds, ["raw", "tmux", "tachi"], lambda s, r: bench_echo(env, s, r, keys)
            )
        if want("attach"):
            results["attach"] = interleaved(
                rounds * 2, ["tmux", "tachi"], lambda s, r: bench_attach(env, s, r)
            )
        if want("startup"):
            runs = 5 if args.quick else 15
            env.tachi("new", "-d", "--name", "startup", "--", "cat")
            results["startup"] = interleaved(
                rounds,
                [
                    "python -I -S", "python", "tachi imports", "tmux", "tachi",
                    "tachi send", "tachi capture",
                ],
                lambda s, r: bench_startup(env, s, runs),
            )  # fmt: skip
        if want("idle"):
            results["idle"] = bench_idle(env, 200, 3.0 if args.quick else 10.0)
        if want("switch"):
            results["switch"] = interleaved(
                1, ["tmux", "tachi"], lambda s, r: bench_switch(env, s, 6 if args.quick else 30)
            )
        if want("sessions"):
            count = 10 if args.quick else 100
            env.close()
            per: dict[str, Any] = {}
            for system in ["tmux", "tachi-cli", "tachi-api"]:
                fresh = Env()
                try:
                    if system != "tmux":
                        fresh.tachi("daemon", "start")
                    per[system] = bench_sessions(fresh, system, count)
                finally:
                    fresh.close()
            results["sessions"] = per
    finally:
        env.close()
    report(results)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nraw samples: {args.json}")
    failed = [
        f"{b}/{s}"
        for b, r in results.items()
        if isinstance(r, dict)
        for s, v in r.items()
        if isinstance(v, dict) and any("error" in x for x in v.get("samples", []))
    ]
    if failed:
        print("errors in: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def report(results: dict[str, Any]) -> None:
    rows = []
    metrics = {
        "throughput": ["mib_s", "delivered_mib"],
        **{f"throughput-{s}": ["mib_s"] for s in ("long-line", "source", "redraw")},
        "recording": ["mib_s"],
        "echo": ["p50_ms", "p99_ms"],
        "attach": ["ms"],
        "startup": ["ms"],
        "switch": ["median_ms", "p90_ms"],
    }
    for bench, keys in metrics.items():
        if bench not in results:
            continue
        for key in keys:
            base = results[bench].get("tmux", {}).get(key, {}).get("median") or results[bench].get(
                "tachi", {}
            ).get(key, {}).get("median")
            for system, data in results[bench].items():
                if key in data:
                    s = data[key]
                    ratio = f"{s['median'] / base:.2f}" if base else "-"
                    rows.append(
                        (
                            bench,
                            key,
                            system,
                            f"{s['median']:.2f}",
                            f"{s['min']:.2f}",
                            f"{s['max']:.2f}",
                            ratio,
                        )
                    )
                elif data.get("samples") and "error" in data["samples"][0]:
                    rows.append(
                        (bench, key, system, "error", "", "", data["samples"][0]["error"][:40])
                    )
    for system, data in results.get("sessions", {}).items():
        for key, value in data.items():
            rows.append(("sessions", key, system, f"{value:.2f}", "", "", ""))
    widths = [
        max(
            len(str(r[i]))
            for r in [*rows, ("benchmark", "metric", "system", "median", "min", "max", "vs ref")]
        )
        for i in range(7)
    ]
    for row in [("benchmark", "metric", "system", "median", "min", "max", "vs ref"), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    sys.exit(main())
