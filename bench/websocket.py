"""tachi over WebSocket+TLS (plugins/tachi-websocket) vs over the Unix socket.

Two ways to reach a program's terminal, measured side by side and interleaved
round by round (see bench/run.py for the method):

- ``unix``: ``tachi attach`` on the local socket;
- ``wss``: ``tachi --host wss://127.0.0.1:PORT attach`` with a daemon token
  and the pinned self-signed certificate (TLS on loopback).

ttyd is the tool people would compare with; Debian has no ``ttyd`` package on
this machine, so it is reported as not measured when it is not on PATH.

Throughput: a base64 file ``cat`` in the session, drained by the client's PTY.
Echo: single keystrokes to a raw-mode echo program, round trip p50/p99.
Command: wall time of ``tachi ls`` locally and remotely. Nothing asserts a timing.

    .venv/bin/python bench/websocket.py [--quick] [--rounds N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness
import ssh as ssh_bench


class WebSocketEnv(harness.Env):
    """A private tachi daemon with a TLS WebSocket listener and a daemon token."""

    def __init__(self) -> None:
        super().__init__()
        self.env["TACHI_LOAD_PLUGINS"] = "websocket"
        (self.dir / "config.toml").write_text(
            '[transports.websocket]\nlisten = "127.0.0.1:0"\ntls = "self-signed"\n'
        )

    def start(self) -> None:
        self.tachi("daemon", "start")
        status = json.loads(self.tachi("daemon", "status", "--json"))
        (listener,) = [x for x in status["listeners"] if x["transport"] == "websocket"]
        token = json.loads(self.tachi("token", "create", "--json"))["token"]
        self.env |= {
            "TACHI_TOKEN": token,
            "TACHI_FINGERPRINT": listener["fingerprint"],
        }
        self.url = listener["url"]

    def remote(self) -> list[str]:
        return [*harness.TACHI, "--host", self.url]

    def close(self) -> None:
        self.tachi("daemon", "stop", check=False)
        super().close()


def _client(env: WebSocketEnv, system: str, name: str, command: str) -> Any:
    size = ["--rows", str(harness.ROWS), "--cols", str(harness.COLS)]
    env.tachi("new", "-d", "--name", name, *size, "--", "bash", "--norc", "-c", command)
    tachi = harness.TACHI if system == "unix" else env.remote()
    return harness.spawn([*tachi, "attach", name], env.env)


def bench_throughput(env: WebSocketEnv, system: str, rnd: int) -> dict[str, float]:
    name = f"wstp{rnd}{system}"
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


def bench_echo(env: WebSocketEnv, system: str, rnd: int, keys: int) -> dict[str, float]:
    name = f"wsec{rnd}{system}"
    proc = _client(env, system, name, f'{harness.PY} -c "{harness.ECHO_PROGRAM}"')
    try:
        harness.drain_until(proc, b"ready", 15)
        ssh_bench._settle(proc)
        return harness.echo_round_trips(proc, keys)
    finally:
        harness.kill(proc)
        env.tachi("close", name, check=False)


def bench_command(env: WebSocketEnv, system: str, runs: int) -> dict[str, float]:
    argv = [*(harness.TACHI if system == "unix" else env.remote()), "ls"]
    return harness.median_wall_ms(argv, env.env, runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--json", default=str(harness.ROOT / "bench" / "results" / "websocket-latest.json")
    )
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    env = WebSocketEnv()
    results: dict[str, Any] = {"rounds": rounds, "quick": args.quick}
    if shutil.which("ttyd") is None:
        print(
            "ttyd: not measured (not installed; Debian has no ttyd package here)", file=sys.stderr
        )
    try:
        size_mib = 4 if args.quick else 32
        subprocess.run(
            f"head -c {size_mib * 3 // 4 * 2**20} /dev/urandom | base64 > {env.data}",
            shell=True,
            check=True,
        )
        env.start()
        systems = ["unix", "wss"]
        results["throughput"] = harness.interleaved(
            rounds, systems, lambda s, r: bench_throughput(env, s, r)
        )
        keys = 100 if args.quick else 500
        results["echo"] = harness.interleaved(
            rounds, systems, lambda s, r: bench_echo(env, s, r, keys)
        )
        results["command"] = harness.interleaved(
            rounds, systems, lambda s, r: bench_command(env, s, 5 if args.quick else 10)
        )
    finally:
        env.close()
    harness.print_table(
        results, [("throughput", ["mib_s"]), ("echo", ["p50_ms", "p99_ms"]), ("command", ["ms"])]
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"raw samples: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
