"""Remote that feels local (issue 32): tachi over WebSocket + TLS against the Unix socket.

One private daemon with a TLS WebSocket listener on 127.0.0.1 and a daemon
token; every metric is taken round by round with the systems interleaved (see
bench/run.py), so whatever else runs on the machine hits both alike. The
client runs with every installed plugin loaded, as ``./scripts/run`` installs
them (the daemon loads only the WebSocket plugin and its screen).

- ``command``: whole-process wall time of ``tachi ls``, ``send``, ``capture``
  and ``exec -- true`` (the ``bin/tachi`` launcher, through the local
  daemon's warm CLI): ``unix``; ``wss`` (``--host wss://…``, through the
  connection keeper, the default); ``wss-direct`` (``TACHI_WS_KEEPER=0``:
  each command connects itself); ``wss-cold`` (``TACHI_WARM=0``: interpreter and
  imports in the command); median of ``--runs`` per round;
- ``echo``: single keystrokes to a raw-mode echo program through ``tachi
  attach``, round trip p50/p99 (bench/websocket.py's); with ``--baseline
  REV``, also ``wss-base``: the WebSocket client of git REV (A/B of the
  client alone, both in-process);
- ``throughput``: a base64 file ``cat`` through an attached client;
- ``browser``: keystroke-to-paint in Chromium (Playwright, Debian's
  chromium): from ``keydown`` to the character drawn in the page, over the
  WebSocket, direct and through a delay proxy at ``--rtt`` ms, with predictive
  echo off and on;
- ``ssh``: ``tachi ls`` / ``capture`` over ``ssh://`` (a private daemon with
  the SSH transport), one ssh per command and through an OpenSSH
  ControlMaster connection, against the Unix socket; and ``tmux+cm``: ``tmux
  ls`` / ``tmux capture-pane -p -t S`` run by ``ssh`` through a ControlMaster
  on OpenSSH's own sshd on the same host. For that one the benchmark, run as
  root, **installs openssh-server with apt-get when /usr/sbin/sshd is
  missing** (services kept from starting by ``policy-rc.d``: the machine's
  sshd is neither started nor configured), then runs a private sshd on
  127.0.0.1 only, on a free port, with its own host key and an authorized key
  it makes (bench/ssh.py's), logging in a throw-away user ``tachi-bench``.

    .venv/bin/python bench/remote.py [--rounds N] [--runs N] [--only command,echo,...]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness
import websocket as ws_bench

BIN = str(Path(harness.PY).parent / "tachi")


class RemoteEnv(ws_bench.WebSocketEnv):
    """bench/websocket.py's daemon; the client's commands load every installed plugin.
    The listener also takes browsers coming through the delay proxy (its origin)."""

    def __init__(self) -> None:
        super().__init__()
        from browser_echo import DelayProxy

        self.proxy = DelayProxy(0)
        with socket.socket() as probe:  # a free port, so that its origin can be listed
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        origins = [f"https://127.0.0.1:{p}" for p in (port, self.proxy.port)]
        (self.dir / "config.toml").write_text(
            f'[transports.websocket]\nlisten = "127.0.0.1:{port}"\ntls = "self-signed"\n'
            f"origins = {json.dumps(origins)}\n"
        )

    def start(self) -> None:
        super().start()
        self.wait_warm()
        self.client_env = {k: v for k, v in self.env.items() if k != "TACHI_LOAD_PLUGINS"}
        self.tachi("new", "-d", "--name", "cmd", "--", "sleep", "1d")
        #: Extra environment per system (``wss-base``: the baseline client).
        self.systems_env: dict[str, dict[str, str]] = {}

    def argv(self, system: str, *args: str) -> list[str]:
        host = ["--host", self.url] if system.startswith("wss") else []
        return [BIN, *host, *args]


#: Loaded by every Python process of the ``wss-base`` system (PYTHONPATH): the
#: WebSocket client of ``--baseline REV`` in place of the current one.
SHIM = """
import importlib.util, os, sys
try:
    import tachi_websocket.client as current
    spec = importlib.util.spec_from_file_location("baseline_ws_client", os.environ["BASE_CLIENT"])
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    current.open_connection = base.open_connection
except Exception as exc:
    print("baseline client shim:", exc, file=sys.stderr)
"""


def baseline_env(env: RemoteEnv, rev: str) -> dict[str, str]:
    """An environment whose processes use the WebSocket client of git ``rev``."""
    where = env.dir / "baseline"
    where.mkdir(exist_ok=True)
    source = harness.subprocess.run(
        ["git", "show", f"{rev}:plugins/tachi-websocket/tachi_websocket/client.py"],
        cwd=harness.ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (where / "baseline_ws_client.py").write_text(source)
    (where / "sitecustomize.py").write_text(SHIM)
    return {
        "PYTHONPATH": str(where),
        "BASE_CLIENT": str(where / "baseline_ws_client.py"),
        # In-process: a forked warm CLI child has the current client imported.
        "TACHI_WARM": "0",
    }


def _attached(env: RemoteEnv, system: str, name: str, command: str) -> Any:
    size = ["--rows", str(harness.ROWS), "--cols", str(harness.COLS)]
    env.tachi("new", "-d", "--name", name, *size, "--", "bash", "--norc", "-c", command)
    extra = env.systems_env.get(system, {})
    return harness.spawn([*env.argv(system, "attach", name)], env.env | extra)


def bench_echo(env: RemoteEnv, system: str, rnd: int, keys: int) -> dict[str, float]:
    name = f"rec{rnd}{system}"
    proc = _attached(env, system, name, f'{harness.PY} -c "{harness.ECHO_PROGRAM}"')
    return harness.attached_echo(env, name, proc, keys)


def bench_throughput(env: RemoteEnv, system: str, rnd: int) -> dict[str, float]:
    name = f"rtp{rnd}{system}"
    proc = _attached(env, system, name, harness.THROUGHPUT_COMMAND.format(data=env.data))
    return harness.attached_throughput(env, name, proc)


COMMANDS = {
    "ls": ["ls"],
    "send": ["send", "cmd", "x"],
    "capture": ["capture", "cmd"],
    "exec": ["exec", "--", "true"],
}


#: The command systems: the Unix socket; wss through the warm CLI (the
#: connection keeper's, the default); the same with the keeper off, each
#: command connecting itself; and wss run in the launcher (no warm CLI: the
#: cold path, interpreter and imports included).
COMMAND_SYSTEMS = ["unix", "wss", "wss-direct", "wss-cold"]


def command_env(env: RemoteEnv, system: str) -> dict[str, str]:
    extra = {
        "wss-direct": {"TACHI_WS_KEEPER": "0"},
        "wss-cold": {"TACHI_WARM": "0"},
    }.get(system, {})
    return env.client_env | extra


def bench_command(env: RemoteEnv, system: str, runs: int) -> dict[str, float]:
    out = {}
    for name, args in COMMANDS.items():
        argv = env.argv(system, *args)
        samples = [harness.wall_ms(argv, command_env(env, system)) for _ in range(runs)]
        out[f"{name}_ms"] = statistics.median(samples)
    return out


def ensure_sshd(sshd: str) -> bool:
    """Install openssh-server with apt-get if ``sshd`` is missing and we are
    root, without starting or configuring the machine's sshd (``policy-rc.d``
    answers 101, "not allowed", to the package's service start). Whether
    ``sshd`` is there now."""
    if os.path.exists(sshd):
        return True
    if os.getuid() != 0:
        print("sshd: not measured (not installed, and not root to install it)", file=sys.stderr)
        return False
    policy = Path("/usr/sbin/policy-rc.d")
    made = not policy.exists()
    if made:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q",
                     "--no-install-recommends", "openssh-server"]):  # fmt: skip
            harness.subprocess.run(argv, env=env, capture_output=True, timeout=600)
    finally:
        if made:
            policy.unlink()
    if not os.path.exists(sshd):
        print("sshd: not measured (apt-get install openssh-server failed)", file=sys.stderr)
    return os.path.exists(sshd)


def run_ssh(rounds: int, runs: int) -> dict[str, Any]:
    """``tachi ls`` / ``capture`` on the Unix socket, over ``ssh://`` with a
    fresh ssh per command, and with an OpenSSH ControlMaster connection
    (``ssh+cm``); and ``tmux ls`` / ``tmux capture-pane`` through ``ssh`` with
    a ControlMaster to a private OpenSSH sshd (``tmux+cm``), interleaved; its
    own daemon, with the SSH transport."""
    import shlex

    import ssh as ssh_bench

    have_sshd = ensure_sshd(ssh_bench.SSHD)
    env = ssh_bench.SSHEnv()
    env.data.touch()  # the sshd's copy of the payload (bench/ssh.py's; unused here)
    sshd_cm: list[str] = []
    try:
        env.start()
        env.wait_warm()
        env.tachi("new", "-d", "--name", "cmd", "--", "sleep", "1d")
        remote = env.remote_tachi()[len(harness.TACHI) :]  # --host ssh://…
        base = env.env["TACHI_SSH_COMMAND"]
        control = env.dir / "cm-%C"
        master = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}",
                  "-o", "ControlPersist=120"]  # fmt: skip
        shared = f"{base} {shlex.join(master)}"
        envs = {
            "unix": env.env,
            "ssh": env.env,
            "ssh+cm": env.env | {"TACHI_SSH_COMMAND": shared},
        }
        if have_sshd and env.sshd is not None:
            ssh = env.ssh(env.sshd_port, tty=False)
            sshd_cm = [*ssh[: ssh.index("-T")], *master, "-T", "127.0.0.1"]
            # The master up, and a tmux server with session S on the sshd's side.
            harness.subprocess.run(
                [*sshd_cm, "tmux", "new-session", "-d", "-s", "S", "sleep 1d"],
                env=env.env, capture_output=True, timeout=30, check=True,
            )  # fmt: skip
            envs["tmux+cm"] = env.env

        def one(system: str, _rnd: int) -> dict[str, float]:
            out = {}
            for name, args in (("ls", ["ls"]), ("capture", ["capture", "cmd"])):
                if system == "tmux+cm":
                    tmux = (
                        ["tmux", "ls"]
                        if name == "ls"
                        else ["tmux", "capture-pane", "-p", "-t", "S"]
                    )
                    argv = [*sshd_cm, *tmux]
                else:
                    argv = [BIN, *([] if system == "unix" else remote), *args]
                samples = [harness.wall_ms(argv, envs[system]) for _ in range(runs)]
                out[f"{name}_ms"] = statistics.median(samples)
            return out

        return harness.interleaved(rounds, list(envs), one)
    finally:
        harness.subprocess.run(
            [*shlex.split(base), "-o", f"ControlPath={env.dir / 'cm-%C'}", "-O", "exit",
             "-p", str(env.port), "127.0.0.1"],
            capture_output=True,
            timeout=10,
        )  # fmt: skip
        if sshd_cm:
            harness.subprocess.run(
                [*sshd_cm, "tmux", "kill-server"], capture_output=True, timeout=10
            )
            harness.subprocess.run(
                [*sshd_cm[:-2], "-O", "exit", "127.0.0.1"], capture_output=True, timeout=10
            )
        env.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10, help="command runs per round")
    parser.add_argument("--keys", type=int, default=300, help="keystrokes per echo round")
    parser.add_argument("--only", default="command,echo,throughput,browser,ssh")
    parser.add_argument("--rtt", type=float, default=150.0, help="browser delay proxy RTT, ms")
    parser.add_argument("--json", default=str(harness.ROOT / "bench/results/remote-latest.json"))
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure echo and throughput with the WebSocket client of git REV (wss-base)",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    env = RemoteEnv()
    results: dict[str, Any] = {"rounds": args.rounds, "when": time.strftime("%Y-%m-%d %H:%M UTC")}
    try:
        if "throughput" in only:
            harness.subprocess.run(
                f"head -c {24 * 2**20} /dev/urandom | base64 > {env.data}", shell=True, check=True
            )
        env.start()
        if "command" in only:
            results["command"] = harness.interleaved(
                args.rounds, COMMAND_SYSTEMS, lambda s, r: bench_command(env, s, args.runs)
            )
        attached = ["unix", "wss"]
        if args.baseline:
            env.systems_env["wss-base"] = baseline_env(env, args.baseline)
            env.systems_env["wss"] = {"TACHI_WARM": "0"}  # as wss-base: only the client differs
            attached.append("wss-base")
        if "echo" in only:
            results["echo"] = harness.interleaved(
                args.rounds, attached, lambda s, r: bench_echo(env, s, r, args.keys)
            )
        if "throughput" in only:
            results["throughput"] = harness.interleaved(
                args.rounds, attached, lambda s, r: bench_throughput(env, s, r)
            )
        if "ssh" in only:
            results["ssh"] = run_ssh(args.rounds, args.runs)
        if "browser" in only:
            import browser_echo

            results["browser"] = browser_echo.run(env, args.rounds, args.keys // 3, args.rtt)
    finally:
        env.close()
    report(results)
    harness.save_results(args.json, results)
    return 0


def report(results: dict[str, Any]) -> None:
    """Median (min-max) per system, and the ratio to the Unix socket."""
    for bench, data in results.items():
        if not isinstance(data, dict):
            continue
        systems = [s for s in data if isinstance(data[s], dict)]
        keys = sorted({k for s in systems for k in data[s] if k != "samples"})
        for key in keys:
            cells = []
            base = data.get("unix", {}).get(key, {}).get("median")
            for system in systems:
                s = data[system].get(key)
                if not s:
                    continue
                ratio = f" x{s['median'] / base:.2f}" if base and system != "unix" else ""
                cells.append(f"{system} {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}){ratio}")
            print(f"{bench:10} {key:14} " + " | ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
