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

import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness


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
    proc = _client(env, system, name, harness.THROUGHPUT_COMMAND.format(data=env.data))
    return harness.attached_throughput(env, name, proc)


def bench_echo(env: WebSocketEnv, system: str, rnd: int, keys: int) -> dict[str, float]:
    name = f"wsec{rnd}{system}"
    proc = _client(env, system, name, f'{harness.PY} -c "{harness.ECHO_PROGRAM}"')
    return harness.attached_echo(env, name, proc, keys)


def bench_command(env: WebSocketEnv, system: str, runs: int) -> dict[str, float]:
    argv = [*(harness.TACHI if system == "unix" else env.remote()), "ls"]
    return harness.median_wall_ms(argv, env.env, runs)


def main() -> int:
    if shutil.which("ttyd") is None:
        print(
            "ttyd: not measured (not installed; Debian has no ttyd package here)", file=sys.stderr
        )
    return harness.transport_main(
        __doc__ or "",
        "websocket",
        WebSocketEnv,
        lambda env: ["unix", "wss"],
        {
            "throughput": lambda env, s, r, quick: bench_throughput(env, s, r),
            "echo": lambda env, s, r, quick: bench_echo(env, s, r, 100 if quick else 500),
            "command": lambda env, s, r, quick: bench_command(env, s, 5 if quick else 10),
        },
    )


if __name__ == "__main__":
    sys.exit(main())
