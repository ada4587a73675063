"""tachi vs tmux vs dtach vs a raw PTY, side by side in one run.

Each metric is measured round by round with the systems interleaved, so noise
on this (2-core, shared) machine hits all of them alike. Reported: median, min,
max over rounds and the ratio to tmux. Nothing here asserts a timing. dtach
(a pass-through with no screen of its own: the floor for a session server) is
measured when it is installed, and skipped with a note when it is not.

    .venv/bin/python bench/run.py [--quick] [--rounds N] [--only a,b] [--mib N]
        [--json PATH] [--markdown PATH] [--scale-sessions N] [--scale-clients N]

``--only scale`` (not in the default set: it is slow) creates 1000 idle
sessions in tachi and in tmux, attaches 50 clients and times ``ls``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import resource
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
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
DTACH = shutil.which("dtach")
#: What ``dtach -a`` writes once connected (it clears the screen): the client is attached.
DTACH_ATTACHED = b"\x1b[H\x1b[J"
#: The systems of the throughput and echo benchmarks, in table order.
SYSTEMS = ["raw", "tmux", "dtach", "tachi"]
#: tachi with every keystroke and its echo through the attach process
#: (``TACHI_DIRECT=0``): the echo benchmarks' extra column.
VIA_ATTACH = "tachi-via-attach"
#: The daemon's screen emulator: "ghostty" (plugins/tachi-ghostty) when it is
#: installed, else the built-in "avt"; ``--screen`` picks one.
SCREENS = {"ghostty": "ghostty", "avt": ""}
SCREEN = "ghostty" if importlib.util.find_spec("tachi_ghostty") else "avt"


# -- plumbing ------------------------------------------------------------------------
class Env:
    """Private tachi daemon and tmux server for the run; cleaned up on exit."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))
        self.env = {
            **os.environ,
            "TACHI_HOME": str(self.dir),
            "TACHI_SOCKET": str(self.dir / "s.sock"),
            "TACHI_LOAD_PLUGINS": SCREENS[SCREEN],
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

    def wait_warm(self, timeout: float = 30) -> None:
        """Wait until the daemon's warm CLI takes commands (``tachi.launch``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = json.loads(self.tachi("daemon", "status", "--json"))
            if any(x.get("ready") for x in status["listeners"] if x["transport"] == "warm-cli"):
                return
            time.sleep(0.1)
        raise RuntimeError("the warm CLI did not become ready")

    def daemon_pid(self) -> int:
        return int(json.loads(self.tachi("daemon", "status", "--json"))["pid"])

    def tmux_pid(self) -> int:
        return int(self.tmux_cmd("display", "-p", "#{pid}").strip())

    def dtach_socket(self, name: str) -> Path:
        return self.dir / f"{name}.dtach"

    def close(self) -> None:
        # Bounded: a daemon holding 1000 sessions (``scale``) takes a while to stop.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [*self.tmux, "kill-server"], env=self.env, capture_output=True, timeout=60
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [*TACHI, "daemon", "stop"], env=self.env, capture_output=True, timeout=120
            )
        for socket in dtach_masters(self.dir):
            stop_dtach(socket)
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


def settle(proc: PtyProcess, wait: float = 0.5) -> None:
    """Let the client draw what it draws on attach, and read it away, so that a
    measurement starts on a quiet terminal."""
    time.sleep(wait)
    while select.select([proc.fd], [], [], 0.2)[0]:
        os.read(proc.fd, 1 << 16)


#: What a throughput session runs (``.format(data=PATH)``): on a line of input,
#: ``PATH`` and then the end mark, which the quoting keeps out of the typed line.
THROUGHPUT_COMMAND = "read x; cat {data}; echo __E''ND__; sleep 3600"


def attached_throughput(env: Any, name: str, proc: PtyProcess) -> dict[str, float]:
    """How fast ``env.data`` reaches ``proc``, a client attached to session
    ``name`` that runs THROUGHPUT_COMMAND on it (MiB/s and MiB delivered). Ends
    the client and closes the session."""
    size = env.data.stat().st_size
    try:
        settle(proc)
        env.tachi("send", name, "\\n")
        seconds, delivered = drain_until(proc, b"__END__")
        return {"mib_s": size / seconds / 2**20, "delivered_mib": delivered / 2**20}
    finally:
        kill(proc)
        env.tachi("close", name, check=False)


def attached_echo(env: Any, name: str, proc: PtyProcess, keys: int) -> dict[str, float]:
    """Echo round trips (see :func:`echo_round_trips`) through ``proc``, a client
    attached to session ``name`` that runs ECHO_PROGRAM. Ends the client and
    closes the session."""
    try:
        drain_until(proc, b"ready", 15)
        settle(proc)
        return echo_round_trips(proc, keys)
    finally:
        kill(proc)
        env.tachi("close", name, check=False)


def save_results(path: str | Path, results: dict[str, Any]) -> None:
    """Write the raw samples to ``path`` (as JSON) and say where they are."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2))
    print(f"raw samples: {path}")


def kill(proc: PtyProcess) -> None:
    with contextlib.suppress(Exception):
        proc.kill(9)
        proc.close(force=True)


def dtach_masters(where: Path) -> dict[Path, int]:
    """The dtach masters (``dtach -n SOCKET ...``) whose socket is in ``where``, by
    socket: they detach from us at start, so /proc is the only way back to them."""
    from tachi.testing import command_lines

    found = {}
    for pid, argv in command_lines():
        if len(argv) > 2 and argv[0].endswith(b"dtach") and argv[1] == b"-n":
            socket = Path(os.fsdecode(argv[2]))
            if socket.parent == where:
                found[socket] = pid
    return found


def stop_dtach(socket: Path) -> None:
    """Kill the dtach master of ``socket`` and its program (the master's child leads
    a session and process group of its own), then remove the socket."""
    pid = dtach_masters(socket.parent).get(socket)
    if pid is not None:
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            for child in children:
                with contextlib.suppress(OSError):
                    os.killpg(int(child), signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    socket.unlink(missing_ok=True)


class Drain:
    """Reads a client's terminal in a child process until stopped, counting bytes:
    the consumer of a flood, so that the flood really goes through the server to
    a client while this process measures something else. A process, not a
    thread: a thread reading tens of MiB/s would hold this interpreter's GIL
    when a keystroke's echo arrives, and charge the system with the fastest
    flood for the harness's own wait."""

    def __init__(self, fd: int, limit: float = 600) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self._count = ctx.Value("q", 0, lock=False)
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_drain, args=(fd, self._count, self._stop, limit))
        self._proc.start()

    @property
    def bytes(self) -> int:
        return int(self._count.value)

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


def _drain(fd: int, count: Any, stop: Any, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            if select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return
                count.value += len(chunk)
        except (OSError, ValueError):
            return


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def fd_limit(pid: int) -> int:
    """The soft open-file limit process ``pid`` runs with (/proc/PID/limits)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 0


def raise_nofile() -> int:
    """Lift our open-file soft limit to the hard one, as tachid does for itself,
    before a tmux server is started: it inherits the limit, and 1000 sessions need
    2000+ descriptors. Returns the soft limit now in force."""
    from tachi.core.fd_limits import raise_limit

    raise_limit()
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def stats(samples: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


# -- benchmarks ------------------------------------------------------------------------
def new_session(env: Env, system: str, name: str, command: str, record: bool = False) -> list[str]:
    """Start ``command`` detached in a 200x50 session; returns the attach command.

    A dtach session keeps no screen, so what its program prints before a client
    attaches is lost: its command first waits for one line, the gate that
    ``session_and_client`` opens once the client is attached. Nor does dtach size
    its PTY when started detached (and ``-r none`` keeps the client's size from
    it), so the command sets 200x50 itself first."""
    if system == "dtach":
        socket = env.dtach_socket(name)
        gated = f"stty rows {ROWS} cols {COLS}; read -r _; {command}"
        subprocess.run(
            ["dtach", "-n", str(socket), "-E", "bash", "--norc", "-c", gated],
            env=env.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=True,
        )
        # No detach character, no suspend key, no redraw on attach: a pure pipe.
        return ["dtach", "-a", str(socket), "-E", "-z", "-r", "none"]
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
    proc = spawn(new_session(env, system, name, command, record), env.env | _in_process(system))
    if system == "dtach":
        # dtach forwards the client's input: typing is writing to its PTY, as raw.
        drain_until(proc, DTACH_ATTACHED, 15)
        proc.write(b"\n")  # open the gate (see new_session)
        return proc, lambda line: proc.write(line.encode())
    if system == "tmux":
        return proc, lambda line: env.tmux_cmd("send-keys", "-t", name, "-l", line)
    return proc, lambda line: env.tachi("send", name, "--literal", line)


def end_session(env: Env, system: str, name: str, proc: PtyProcess) -> None:
    if system == "raw":
        # The whole process group: a flood's `cat` must not outlive its shell.
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
    kill(proc)
    if system == "tmux":
        subprocess.run([*env.tmux, "kill-session", "-t", name], capture_output=True, timeout=30)
    elif system == "dtach":
        stop_dtach(env.dtach_socket(name))
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
    command = THROUGHPUT_COMMAND.format(data=data)
    proc, type_line = session_and_client(
        env, "tachi" if system.startswith("tachi") else system, name, command, record
    )
    try:
        settle(proc)  # then start the flood
        pids = flood_pids(env, system, name, proc)
        before = {role: cpu_ns(pid) for role, pid in pids.items()}
        type_line("\n")
        seconds, delivered = drain_until(proc, b"__END__")
        result = {
            "mib_s": size / seconds / 2**20,
            "delivered_mib": delivered / 2**20,
            # What the client was actually sent per second: unlike mib_s, it does
            # not rise when the client falls behind and is skipped ahead.
            "client_mib_s": delivered / seconds / 2**20,
            "seconds": seconds,
        }
        # CPU seconds per 64 MiB, per process: where a recording's cost goes,
        # whatever the wall clock of this noisy machine did.
        per_64 = 64 * 2**20 / size / 1e9
        if "recorder" in pids:  # its share of the flood, even what it wrote after the marker
            settled(pids["recorder"])
        for role, pid in pids.items():
            with contextlib.suppress(OSError):
                result[f"{role}_cpu_s"] = (cpu_ns(pid) - before[role]) * per_64
        return result
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
    save_results(args.json, results)
    return 0


def echo_round_trips(proc: PtyProcess, keys: int, timeout: float = 10) -> dict[str, float]:
    """Type ``keys`` single keys into a client showing an echo program; p50/p99 ms
    from each write to its echo coming back. An echo slower than ``timeout``
    seconds ends the run with TimeoutError."""
    samples = []
    for i in range(keys):
        key = b"abcdefghij"[i % 10 : i % 10 + 1]
        t0 = time.perf_counter()
        os.write(proc.fd, key)
        got = b""
        while key not in got:
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"no echo of key {i} within {timeout} s")
            if select.select([proc.fd], [], [], 1)[0]:
                got += os.read(proc.fd, 4096)
        samples.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(samples, n=100)
    return {"p50_ms": statistics.median(samples), "p99_ms": q[98]}


def wall_ms(argv: list[str], env: dict[str, str], timeout: float = 30, check: bool = True) -> float:
    """Wall time of running ``argv`` to completion, in ms; output discarded. Bounded
    by a watchdog that kills it after ``timeout`` s, not by ``subprocess.run(timeout=)``,
    which polls with a doubling sleep and so rounds every sample up to the next
    0.5 * (2**k - 1) ms (15.5, 31.5, 63.5, ...)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        status = proc.wait()
    finally:
        watchdog.cancel()
    ms = (time.perf_counter() - t0) * 1000
    if check and status:
        raise subprocess.CalledProcessError(status, argv)
    return ms


def median_wall_ms(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    """Median wall time of running ``argv`` to completion, ``runs`` times."""
    return {"ms": statistics.median(wall_ms(argv, env) for _ in range(runs))}


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


def bench_echo(env: Env, system: str, rnd: int, keys: int, prefix: str = "ec") -> dict[str, float]:
    """Echo round trips, and the CPU each keystroke costs the server and the
    client processes (``server_us``, ``client_us``: run time from
    ``/proc/PID/task/*/schedstat``, which counts nanoseconds, over the run):
    unlike the round trip, that does not depend on how fast an idle virtual
    CPU wakes up, the larger part of the latency on a busy host."""
    name = f"{prefix}{rnd}{system}"
    proc, _ = session_and_client(env, system, name, f'{PY} -c "{ECHO_PROGRAM}"')
    try:
        drain_until(proc, b"ready", 15)
        settle(proc, 0.3)
        pids = echo_pids(env, system, name, proc)
        before = {role: cpu_ns(pid) for role, pid in pids.items()}
        result = echo_round_trips(proc, keys)
        for role, pid in pids.items():
            result[f"{role}_us"] = (cpu_ns(pid) - before[role]) / keys / 1000
        return result
    finally:
        end_session(env, system, name, proc)


def echo_pids(env: Env, system: str, name: str, proc: PtyProcess) -> dict[str, int]:
    """The server and client processes on a keystroke's path (none for raw)."""
    if system == "raw":
        return {}
    if system == "tmux":
        return {"server": env.tmux_pid(), "client": proc.pid}
    if system == "dtach":
        return {"server": dtach_masters(env.dir)[env.dtach_socket(name)], "client": proc.pid}
    # The attach process is the warm CLI's fork the daemon sees on its socket.
    [client] = json.loads(env.tachi("clients", name, "--json"))
    return {"server": env.daemon_pid(), "client": int(client["source"].rsplit("pid:", 1)[1])}


def flood_pids(env: Env, system: str, name: str, proc: PtyProcess) -> dict[str, int]:
    """``echo_pids`` plus tachi's recorder process, when the daemon has one."""
    if not system.startswith("tachi"):
        return {}
    pids = echo_pids(env, "tachi", name, proc)
    server = pids["server"]
    for task in Path(f"/proc/{server}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                if b"recorder_worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    pids["recorder"] = int(child)
    return pids


def settled(pid: int, quiet: float = 0.05, limit: float = 3) -> None:
    """Wait (at most ``limit`` seconds) until ``pid`` has not run for ``quiet`` seconds."""
    deadline, last = time.monotonic() + limit, -1
    while time.monotonic() < deadline and (now := cpu_ns(pid)) != last:
        last = now
        time.sleep(quiet)


def cpu_ns(pid: int) -> int:
    """Nanoseconds ``pid`` (all its threads) has run on a CPU."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def bench_echo_load(env: Env, system: str, rnd: int, keys: int) -> dict[str, float]:
    """Echo as in ``bench_echo`` while a second session of the same system floods
    output (the payload ``cat`` in a loop) to an attached client of its own, drained
    on a thread: typing next to a build log. ``flood_mib_s`` is what that client
    received meanwhile, so a system that keeps its echo fast by starving the flood
    shows it. The flood is stopped and cleaned after each sample."""
    name = f"fl{rnd}{system}"
    flood, _ = session_and_client(env, system, name, f"while :; do cat {env.data}; done")
    drain = Drain(flood.fd)
    try:
        deadline = time.monotonic() + 10
        while drain.bytes < 1 << 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        if drain.bytes < 1 << 20:
            raise RuntimeError(f"the flood's client got {drain.bytes} bytes in 10 s")
        time.sleep(0.3)
        before, t0 = drain.bytes, time.perf_counter()
        result = bench_echo(env, system, rnd, keys, prefix="el")
        flood_bytes = drain.bytes - before
        return result | {"flood_mib_s": flood_bytes / (time.perf_counter() - t0) / 2**20}
    finally:
        drain.stop()
        end_session(env, system, name, flood)


#: ``--hog-cpu N``: pin the hogs of ``echo-hog`` to CPU N (default: unpinned,
#: wherever the scheduler puts them).
HOG_CPU: int | None = None
#: ``--hogs N``: how many (1 keeps one of two cores busy; 2, both).
HOGS = 1


def bench_echo_hog(env: Env, system: str, rnd: int, keys: int) -> dict[str, float]:
    """Echo as in ``bench_echo`` with CPU hogs beside it (``HOGS`` ``yes >
    /dev/null``: one keeps the other of two cores busy), started before each
    sample and stopped after it, so that every system gets the same."""
    pin = None if HOG_CPU is None else (lambda: os.sched_setaffinity(0, {HOG_CPU}))
    hogs = [
        subprocess.Popen(["yes"], stdout=subprocess.DEVNULL, preexec_fn=pin) for _ in range(HOGS)
    ]
    try:
        time.sleep(0.2)  # the hogs running, and the scheduler used to them
        return bench_echo(env, system, rnd, keys, prefix="eh")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def bench_attach(env: Env, system: str, rnd: int) -> dict[str, float]:
    name = f"at{rnd}{system}".replace(" ", "-")
    command = (
        "for i in $(seq 1 48); do printf 'line %03d %0150d\\n' $i 0; done;"
        " echo SCREEN''-READY; sleep 3600"
    )
    argv = new_session(env, system, name, command)
    if system.startswith("tachi"):
        # The `tachi` command users run, warm (the default) or in-process.
        argv = [str(Path(PY).parent / "tachi"), *argv[len(TACHI) :]]
    time.sleep(0.5)
    t0 = time.perf_counter()
    proc = spawn(argv, env.env | _in_process(system))
    try:
        drain_until(proc, b"SCREEN-READY", 15)
        return {"ms": (time.perf_counter() - t0) * 1000}
    finally:
        end_session(env, system, name, proc)


def _in_process(system: str) -> dict[str, str]:
    """The environment that makes ``system`` run tachi without its warm CLI, or
    (``tachi-via-attach``) without handing the terminal to the daemon."""
    if system.endswith("in-process"):
        return {"TACHI_WARM": "0"}
    return {"TACHI_DIRECT": "0"} if system == VIA_ATTACH else {}


#: What `tachi ls` imports, without running it: the import share of its start-up.
_TACHI_IMPORTS = "import tachi.cli.main, tachi.cli.session_cmds, tachi.client.sync"


def bench_startup(env: Env, system: str, runs: int) -> dict[str, float]:
    """Whole-process wall time. `tachi`, `tachi send` and `tachi capture` run
    through the warm CLI (the default); the in-process rows break `tachi ls`
    without it down: interpreter (`python`), imports (`tachi imports` minus
    `python`), and the rest (connect, hello, the request, printing: `tachi ls
    in-process` minus `tachi imports`)."""
    tachi = str(Path(PY).parent / "tachi")
    argv = {
        "tachi": [tachi, "ls"],
        "tachi in-process": [tachi, "ls"],
        "tachi send": [tachi, "send", "startup", "x"],
        "tachi capture": [tachi, "capture", "startup"],
        "tachi imports": [PY, "-c", _TACHI_IMPORTS],
        "tmux": [*env.tmux, "ls"],
        "python": [PY, "-c", "pass"],
        "python -I -S": [PY, "-I", "-S", "-c", "pass"],
    }[system]
    return median_wall_ms(argv, env.env | _in_process(system), runs)


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


class ScaleOps:
    """What ``bench_scale`` does to one system: create idle session ``i``, the argv
    of a client attaching to it, how many clients the server counts on sessions
    ``0..n-1``, the server's pid, and the listing commands to time."""

    def __init__(self, env: Env, system: str) -> None:
        self.env, self.system = env, system
        self.listing: dict[str, list[str]]
        if system == "tmux":
            self.listing = {"ls": [*env.tmux, "ls"]}
            self.client: Any = None
        else:
            sys.path.insert(0, str(ROOT))
            from tachi.client.sync import Client

            self.client = Client(env.env["TACHI_SOCKET"], autostart=False)
            tachi = str(Path(PY).parent / "tachi")
            self.listing = {"ls": [tachi, "ls"], "ls_json": [tachi, "ls", "--json"]}

    def create(self, i: int) -> None:
        if self.client is None:
            self.env.tmux_cmd("new-session", "-d", "-s", f"scale{i}", "sleep 3600")
        else:
            from tachi.models import SessionRequest

            self.client.create(SessionRequest(name=f"scale{i}", command=["sleep", "3600"]))

    def attach_argv(self, i: int) -> list[str]:
        if self.client is None:
            return [*self.env.tmux, "attach", "-t", f"scale{i}"]
        return [*TACHI, "attach", f"scale{i}"]

    def attached(self, n: int) -> int:
        if self.client is None:
            return len(self.env.tmux_cmd("list-clients").splitlines())
        return sum(len(self.client.clients(f"scale{i}")) for i in range(n))

    def pid(self) -> int:
        return self.env.tmux_pid() if self.client is None else self.env.daemon_pid()

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()


def bench_scale(env: Env, system: str, sessions: int, clients: int) -> dict[str, Any]:
    """``sessions`` idle ``sleep`` sessions (tachi through the Python API, tmux with
    ``new-session -d``), then ``clients`` real attached clients on PTYs: the create
    rate, ``ls`` whole-process latency (median of 10) at 1 session and at all of
    them, and the server's RSS per session and per client. A server that fails
    part way gives the count it reached and its error, not a crash."""
    ops = ScaleOps(env, system)
    out: dict[str, Any] = {}
    procs: list[PtyProcess] = []
    try:
        ops.create(0)
        pid = ops.pid()
        out["fd_limit"] = fd_limit(pid)
        for key, argv in ops.listing.items():
            out[f"{key}_1_ms"] = median_wall_ms(argv, env.env, 10)["ms"]
        time.sleep(0.5)
        base = rss_kib(pid)
        made, t0 = 1, time.perf_counter()
        deadline = t0 + 600
        try:
            for i in range(1, sessions):
                if time.perf_counter() > deadline:
                    raise TimeoutError("creation still running after 600 s")
                ops.create(i)
                made += 1
        except Exception as exc:
            out["error"] = f"at session {made + 1}: {type(exc).__name__}: {exc}"[:300]
        seconds = time.perf_counter() - t0
        out["sessions"] = made
        if made > 1:
            out["create_per_s"] = (made - 1) / seconds
        time.sleep(0.5)
        total = rss_kib(pid)
        out |= {"rss_1_kib": base, "rss_kib": total}
        out["kib_per_session"] = (total - base) / max(made - 1, 1)
        for i in range(min(clients, made)):
            procs.append(spawn(ops.attach_argv(i), env.env))
        deadline = time.monotonic() + 60
        while ops.attached(len(procs)) < len(procs) and time.monotonic() < deadline:
            if not any(proc.isalive() for proc in procs):
                break  # every client gave up: the server refused them
            time.sleep(0.2)
        for proc in procs:  # what each client drew on attach
            while select.select([proc.fd], [], [], 0)[0] and os.read(proc.fd, 1 << 16):
                pass
        out["clients"] = ops.attached(len(procs))
        time.sleep(0.5)
        with_clients = rss_kib(pid)
        out["rss_clients_kib"] = with_clients
        if out["clients"]:
            out["kib_per_client"] = (with_clients - total) / out["clients"]
        for key, argv in ops.listing.items():
            out[f"{key}_ms"] = median_wall_ms(argv, env.env, 10)["ms"]
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except Exception as exc:
        out["error"] = (out.get("error", "") + f" then {type(exc).__name__}: {exc}")[:400]
    finally:
        for proc in procs:
            kill(proc)
        ops.close()
    return out


def run_scale(sessions: int, clients: int) -> dict[str, Any]:
    """``bench_scale`` for tmux then tachi, each on a fresh server started after
    the open-file limit is raised (they inherit it)."""
    limit = raise_nofile()
    print(f"scale: open-file limit {limit}; {sessions} sessions, {clients} clients")
    per: dict[str, Any] = {}
    for system in ["tmux", "tachi"]:
        fresh = Env()
        try:
            if system == "tachi":
                fresh.tachi("daemon", "start")
            per[system] = bench_scale(fresh, system, sessions, clients)
        except Exception as exc:
            per[system] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            fresh.close()
    return per


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
    global SCREEN, HOG_CPU, HOGS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, few rounds (a smoke run)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated: throughput,shapes,echo,echo-load,echo-hog,attach,startup,"
        "sessions,switch,"
        "recording,idle; and scale (slow: never in the default set)",
    )
    parser.add_argument(
        "--mib", type=int, default=None, help="throughput payload in MiB (default 64, --quick 4)"
    )
    parser.add_argument(
        "--hog-cpu", type=int, default=None, help="echo-hog: pin the CPU hogs to this CPU"
    )
    parser.add_argument("--hogs", type=int, default=1, help="echo-hog: how many CPU hogs")
    parser.add_argument("--scale-sessions", type=int, default=1000, help="for --only scale")
    parser.add_argument("--scale-clients", type=int, default=50, help="for --only scale")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument(
        "--screen",
        choices=sorted(SCREENS),
        default=SCREEN,
        help=f"tachi's screen emulator (default here: {SCREEN}; ghostty is plugins/tachi-ghostty)",
    )
    parser.add_argument(
        "--markdown",
        metavar="PATH",
        help="also write a Markdown table there (between the results markers, if it has them)",
    )
    args = parser.parse_args()
    SCREEN = args.screen
    HOG_CPU, HOGS = args.hog_cpu, args.hogs
    rounds = 1 if args.quick else args.rounds
    only = set(filter(None, args.only.split(",")))
    want = lambda name: (not only and name != "scale") or name in only  # noqa: E731
    systems = SYSTEMS if DTACH else [s for s in SYSTEMS if s != "dtach"]
    if not DTACH:
        print("dtach is not installed: not measured (apt-get install dtach)")
    env = Env()
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "rounds": rounds}
    try:
        size_mib = args.mib or (4 if args.quick else 64)
        results["mib"] = size_mib
        subprocess.run(
            f"head -c {size_mib * 2**20 * 3 // 4} /dev/urandom | base64 > {env.data}",
            shell=True,
            check=True,
        )
        env.tachi("daemon", "start")
        env.tmux_cmd("new-session", "-d", "-s", "keepalive", "sleep 36000")
        if want("throughput"):
            results["throughput"] = interleaved(
                rounds, systems, lambda s, r: bench_throughput(env, s, r)
            )
        shapes = make_shapes(env, size_mib) if want("shapes") or want("recording") else {}
        if want("shapes"):
            for shape, path in shapes.items():
                if shape == "lines":
                    continue
                results[f"throughput-{shape}"] = interleaved(
                    rounds,
                    systems,
                    lambda s, r, path=path: bench_throughput(env, s, r, data=path),
                )
        if want("recording"):
            # Recording on vs off, in every throughput shape.
            for shape, path in shapes.items():
                key = "recording" if shape == "lines" else f"recording-{shape}"
                results[key] = interleaved(
                    rounds,
                    ["tachi", "tachi+record"],
                    lambda s, r, path=path: bench_throughput(
                        env, s, r, record=s.endswith("record"), data=path
                    ),
                )
        if want("echo"):
            keys = 100 if args.quick else 500
            results["echo"] = interleaved(
                rounds, [*systems, VIA_ATTACH], lambda s, r: bench_echo(env, s, r, keys)
            )
        if want("echo-load"):
            keys = 100 if args.quick else 500
            results["echo-load"] = interleaved(
                rounds, [*systems, VIA_ATTACH], lambda s, r: bench_echo_load(env, s, r, keys)
            )
        if want("echo-hog"):
            keys = 100 if args.quick else 500
            results["echo-hog"] = interleaved(
                rounds, ["tmux", "tachi"], lambda s, r: bench_echo_hog(env, s, r, keys)
            )
        if want("attach"):
            env.wait_warm()
            results["attach"] = interleaved(
                rounds * 2,
                ["tmux", "tachi", "tachi in-process"],
                lambda s, r: bench_attach(env, s, r),
            )
        if want("startup"):
            runs = 5 if args.quick else 15
            env.tachi("new", "-d", "--name", "startup", "--", "cat")
            env.wait_warm()
            results["startup"] = interleaved(
                rounds,
                [
                    "python -I -S", "python", "tachi imports", "tmux", "tachi",
                    "tachi send", "tachi capture", "tachi in-process",
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
        if want("scale"):
            env.close()
            results["scale"] = run_scale(args.scale_sessions, args.scale_clients)
    finally:
        env.close()
    report(results)
    print()
    save_results(args.json, results)
    if args.markdown:
        write_markdown(Path(args.markdown), markdown(results))
        print(f"markdown: {args.markdown}")
    failed = [
        f"{b}/{s}"
        for b, r in results.items()
        if isinstance(r, dict)
        for s, v in r.items()
        if isinstance(v, dict) and ("error" in v or any("error" in x for x in v.get("samples", [])))
    ]
    if failed:
        print("errors in: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


#: CPU seconds per 64 MiB of each of tachi's processes in a flood.
CPU_METRICS = ["server_cpu_s", "recorder_cpu_s", "client_cpu_s"]
#: The metrics the tables show of each interleaved benchmark, in order.
METRICS = {
    "throughput": ["mib_s", "delivered_mib"],
    **{f"throughput-{s}": ["mib_s"] for s in ("long-line", "source", "redraw")},
    "recording": ["mib_s", "delivered_mib", "client_mib_s", *CPU_METRICS],
    **{
        f"recording-{s}": ["mib_s", "delivered_mib", "client_mib_s", *CPU_METRICS]
        for s in ("long-line", "source", "redraw")
    },
    "echo": ["p50_ms", "p99_ms", "server_us", "client_us"],
    "echo-load": ["p50_ms", "p99_ms", "flood_mib_s"],
    "echo-hog": ["p50_ms", "p99_ms", "server_us", "client_us"],
    "attach": ["ms"],
    "startup": ["ms"],
    "switch": ["median_ms", "p90_ms"],
}


def rows_of(results: dict[str, Any]) -> list[tuple[str, str, str, Any]]:
    """Every figure to report as (benchmark, metric, system, value): the value is a
    stats dict for interleaved benchmarks, a number for one-shot ones (sessions,
    scale, idle), or a string: an error's message."""
    rows: list[tuple[str, str, str, Any]] = []
    for bench, keys in METRICS.items():
        for key in keys:
            for system, data in results.get(bench, {}).items():
                if key in data:
                    rows.append((bench, key, system, data[key]))
                elif data.get("samples") and "error" in data["samples"][0]:
                    rows.append((bench, key, system, str(data["samples"][0]["error"])))
    for bench in ("sessions", "scale"):
        per = results.get(bench, {})
        by_size = sorted(per.values(), key=len, reverse=True)  # tachi's extra ls --json
        keys = list(dict.fromkeys(k for data in by_size for k in data))
        for key in keys:
            for system, data in per.items():
                if key in data:
                    rows.append((bench, key, system, data[key]))
    for key, value in results.get("idle", {}).items():
        rows.append(("idle", key, "tachi", value))
    return rows


def median_of(value: Any) -> float | None:
    if isinstance(value, dict):
        return value["median"]
    if isinstance(value, int | float):
        return float(value)
    return None


def reference(rows: list[tuple[str, str, str, Any]]) -> dict[tuple[str, str], float]:
    """The figure each (benchmark, metric) is compared with: tmux's, else tachi's."""
    ref: dict[tuple[str, str], float] = {}
    for system in ("tachi", "tmux"):
        for bench, key, sys_, value in rows:
            if sys_ == system and median_of(value):
                ref[bench, key] = median_of(value)  # type: ignore[assignment]
    return ref


def report(results: dict[str, Any]) -> None:
    rows = rows_of(results)
    ref = reference(rows)
    table = [("benchmark", "metric", "system", "median", "min", "max", "vs ref")]
    for bench, key, system, value in rows:
        med, base = median_of(value), ref.get((bench, key))
        ratio = f"{med / base:.2f}" if med is not None and base else ""
        if isinstance(value, dict):
            cells = (f"{value['median']:.2f}", f"{value['min']:.2f}", f"{value['max']:.2f}")
            table.append((bench, key, system, *cells, ratio))
        elif med is not None:
            table.append((bench, key, system, md_cell(value), "", "", ratio))
        else:
            table.append((bench, key, system, "error", "", "", str(value)[:80]))
    widths = [max(len(r[i]) for r in table) for i in range(7)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def machine() -> dict[str, Any]:
    """What the results depend on, for the JSON and the Markdown header."""

    def first_line(argv: list[str]) -> str:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]

    mem_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    return {
        "cpus": os.cpu_count(),
        "nproc": len(os.sched_getaffinity(0)),
        "mem_gib": round(mem_kib / 2**20, 1),
        "python": sys.version.split()[0],
        "tmux": first_line(["tmux", "-V"]),
        "dtach": first_line([DTACH, "--version"]) if DTACH else None,
        "screen": SCREEN,
    }


#: Where each system goes in the Markdown table; any other is written in "other".
MD_SYSTEMS = {"raw": "raw PTY", "tmux": "tmux", "dtach": "dtach", "tachi": "tachi"}
EN_DASH = "\u2013"


def md_cell(value: Any) -> str:
    if isinstance(value, dict):
        if value["n"] > 1:
            return f"{value['median']:.2f} ({value['min']:.2f}{EN_DASH}{value['max']:.2f})"
        return f"{value['median']:.2f}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.2f}"
    return f"error: {value}"[:60].replace("|", "\\|")


#: In a page that holds them, ``--markdown`` replaces only what lies between these.
MD_START, MD_END = "<!-- bench/run.py results: start -->", "<!-- bench/run.py results: end -->"


def write_markdown(path: Path, table: str) -> None:
    """Write ``table`` to ``path``; into a page with the markers, between them (so
    docs/benchmarks.md keeps its text and the table is regenerated in place)."""
    text = path.read_text() if path.exists() else ""
    if MD_START in text and MD_END in text:
        before, rest = text.split(MD_START, 1)
        after = rest.split(MD_END, 1)[1]
        text = f"{before}{MD_START}\n{table}{MD_END}{after}"
    else:
        text = table
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def markdown(results: dict[str, Any]) -> str:
    """The results as one Markdown table (for docs/benchmarks.md): per benchmark and
    metric, each system's median (min-max over rounds), then each over tmux. A
    header line says when, where and with which exact command line."""
    m = results["machine"]
    argv = [os.path.relpath(PY) if PY.startswith(str(ROOT)) else PY, *sys.argv]
    header = (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; nproc {m['nproc']}, "
        f"{m['mem_gib']} GiB; Python {m['python']}; {m['tmux']}"
        + (f"; {m['dtach']}" if m.get("dtach") else "; dtach not installed")
        + f"; tachi's screen: {m.get('screen', 'avt')}"
        + f"; {results['rounds']} round(s) per interleaved benchmark; `{shlex.join(argv)}`"
    )
    rows = rows_of(results)
    present = {system for _, _, system, _ in rows}
    columns = [s for s in MD_SYSTEMS if s in present]
    others = any(system not in MD_SYSTEMS for _, _, system, _ in rows)
    ratios = [s for s in ("tachi", "dtach") if s in columns and "tmux" in columns]
    head = ["benchmark", "metric", *(MD_SYSTEMS[s] for s in columns)]
    head += [*(["other"] if others else []), *(f"{s} / tmux" for s in ratios)]
    lines = [header, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for bench, key, system, value in rows:
        grouped.setdefault((bench, key), {})[system] = value
    for (bench, key), per in grouped.items():
        cells = [bench, key, *(md_cell(per[s]) if s in per else "" for s in columns)]
        if others:
            extra = [f"{s} {md_cell(v)}" for s, v in per.items() if s not in MD_SYSTEMS]
            cells.append("; ".join(extra))
        for system in ratios:
            mine, tmux = median_of(per.get(system)), median_of(per.get("tmux"))
            cells.append(f"**{mine / tmux:.2f}**" if mine is not None and tmux else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
