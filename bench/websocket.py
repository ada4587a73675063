"""tachi over WebSocket+TLS (plugins/tachi-websocket) vs over the Unix socket.

Two ways to reach a program's terminal, measured side by side and interleaved
round by round (see bench/run.py for the method):

- ``unix``: ``tachi attach`` on the local socket (its terminal handed to the
  daemon: no process between the program and the terminal);
- ``unix-relay``: the same with ``TACHI_DIRECT=0``: the attach process relays
  every byte, as a remote client must (the like-for-like baseline for wss);
- ``wss``: ``tachi --host wss://127.0.0.1:PORT attach`` with a daemon token
  and the pinned self-signed certificate (TLS on loopback).

ttyd is the tool people would compare with; Debian has no ``ttyd`` package on
this machine, so it is reported as not measured when it is not on PATH.

Throughput: a base64 file ``cat`` in the session, drained by the client's PTY.
Echo: single keystrokes to a raw-mode echo program, round trip p50/p99.
Command: wall time of ``tachi ls`` locally and remotely. Nothing asserts a timing.

``--baseline REV`` adds ``wss-base``: a second daemon, and its warm CLI, with
the WebSocket plugin of git ``REV`` (listener and client) ahead on
``PYTHONPATH``, the rest of the code the same: an A/B of the plugin in one run.

    .venv/bin/python bench/websocket.py [--quick] [--rounds N] [--json PATH]
        [--baseline REV]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness

from tachi.testing import command_lines


class WebSocketEnv(harness.Env):
    """A private tachi daemon with a TLS WebSocket listener and a daemon token."""

    def __init__(self) -> None:
        super().__init__()
        self.env["TACHI_LOAD_PLUGINS"] = "websocket"
        (self.dir / "config.toml").write_text(
            '[transports.websocket]\nlisten = "127.0.0.1:0"\ntls = "self-signed"\n'
        )
        #: The runtime directory of the run's connection keeper (remote commands
        #: take their connections from one by default), private to the run.
        self.runtime = self.dir / "run"
        self.runtime.mkdir(mode=0o700)
        self.env["XDG_RUNTIME_DIR"] = str(self.runtime)

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
        keeper = str(self.runtime / "tachi" / "ws-keeper.sock").encode()
        for pid, argv in command_lines():
            if b"tachi_websocket.keeper" in argv and keeper in argv:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        super().close()


#: ``--baseline REV``: the git revision whose WebSocket plugin ``wss-base`` runs.
BASELINE: str | None = None


class BenchEnv(WebSocketEnv):
    """The run's daemon, and with ``--baseline`` a second one (``base``) that
    runs the WebSocket plugin of that revision."""

    def __init__(self) -> None:
        super().__init__()
        self.base: WebSocketEnv | None = None
        if BASELINE:
            self.base = WebSocketEnv()
            plugin = self.base.dir / "baseline"
            plugin.mkdir()
            archive = subprocess.run(
                ["git", "archive", BASELINE, "plugins/tachi-websocket/tachi_websocket"],
                cwd=harness.ROOT,
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(
                ["tar", "-x", "--strip-components=2", "-C", str(plugin)], input=archive, check=True
            )
            self.base.env["PYTHONPATH"] = str(plugin)
            self.base.data = self.data  # one payload for both

    def start(self) -> None:
        super().start()
        if self.base is not None:
            self.base.start()

    def close(self) -> None:
        if self.base is not None:
            self.base.close()
        super().close()

    def of(self, system: str) -> WebSocketEnv:
        """The daemon that serves ``system``."""
        return self.base if system == "wss-base" and self.base is not None else self


def _client(env: BenchEnv, system: str, name: str, command: str) -> Any:
    env = env.of(system)
    size = ["--rows", str(harness.ROWS), "--cols", str(harness.COLS)]
    env.tachi("new", "-d", "--name", name, *size, "--", "bash", "--norc", "-c", command)
    if system.startswith("unix"):
        # ``unix-relay``: the attach process relays every byte (TACHI_DIRECT=0),
        # as a remote one must; ``unix`` hands its terminal to the daemon.
        relay = {"TACHI_DIRECT": "0"} if system == "unix-relay" else {}
        return harness.spawn([*harness.TACHI, "attach", name], env.env | relay)
    return harness.spawn([*env.remote(), "attach", name], env.env)


def bench_throughput(env: BenchEnv, system: str, rnd: int) -> dict[str, float]:
    name = f"wstp{rnd}{system}"
    proc = _client(env, system, name, harness.THROUGHPUT_COMMAND.format(data=env.data))
    return harness.attached_throughput(env.of(system), name, proc)


def bench_echo(env: BenchEnv, system: str, rnd: int, keys: int) -> dict[str, float]:
    name = f"wsec{rnd}{system}"
    proc = _client(env, system, name, f'{harness.PY} -c "{harness.ECHO_PROGRAM}"')
    return harness.attached_echo(env.of(system), name, proc, keys)


def bench_command(env: BenchEnv, system: str, runs: int) -> dict[str, float]:
    target = env.of(system)
    argv = [*(harness.TACHI if system.startswith("unix") else target.remote()), "ls"]
    return harness.median_wall_ms(argv, target.env, runs)


def main() -> int:
    global BASELINE
    if "--baseline" in sys.argv:  # ours; the rest is the shared command line
        at = sys.argv.index("--baseline")
        BASELINE = sys.argv[at + 1]
        del sys.argv[at : at + 2]
    if shutil.which("ttyd") is None:
        print(
            "ttyd: not measured (not installed; Debian has no ttyd package here)", file=sys.stderr
        )
    return harness.transport_main(
        __doc__ or "",
        "websocket",
        BenchEnv,
        lambda env: ["unix", "unix-relay", "wss", *(["wss-base"] if env.base is not None else [])],
        {
            "throughput": lambda env, s, r, quick: bench_throughput(env, s, r),
            "echo": lambda env, s, r, quick: bench_echo(env, s, r, 100 if quick else 500),
            "command": lambda env, s, r, quick: bench_command(env, s, 5 if quick else 10),
        },
    )


if __name__ == "__main__":
    sys.exit(main())
