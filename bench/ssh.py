"""tachi over SSH (plugins/tachi-ssh) vs over the Unix socket vs OpenSSH's sshd.

Three ways to reach a program's terminal, measured side by side and
interleaved round by round (see bench/run.py for the method):

- ``unix``: ``tachi attach`` on the local socket;
- ``ssh``: ``ssh -tt -p PORT host attach NAME`` to the daemon's SSH transport
  (the tachi CLI runs on the daemon's side);
- ``ssh-host``: the local ``tachi --host ssh://127.0.0.1:PORT attach NAME``
  (frames over the ``tachi`` SSH subsystem);
- ``sshd``: ``ssh -tt`` to OpenSSH's own sshd running the program directly (no
  tachi at all), when ``/usr/sbin/sshd`` exists and we are root.

Throughput: a base64 file ``cat`` in the session, drained by the client's PTY.
Echo: single keystrokes to a raw-mode echo program, round trip p50/p99.
Command: wall time of one non-interactive command (``tachi ls`` vs
``ssh host ls`` vs ``ssh sshd-host true``). Nothing asserts a timing.

    .venv/bin/python bench/ssh.py [--quick] [--rounds N] [--json PATH]
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness

SSHD = "/usr/sbin/sshd"
#: The user sshd logs in for the comparison (made if missing; needs root).
SSHD_USER = "tachi-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SSHEnv(harness.Env):
    """A private tachi daemon with the SSH transport, and (if possible) an sshd."""

    def __init__(self) -> None:
        super().__init__()
        self.env["TACHI_LOAD_PLUGINS"] = "ssh"
        d = self.dir
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "id")], check=True
        )
        user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        pub = (d / "id.pub").read_text().strip()
        (d / "authorized_keys").write_text(f'tachi-principal="{user}" {pub}\n')
        (d / "config.toml").write_text(
            '[transports.ssh]\nlisten = "127.0.0.1:0"\n'
            f'authorized_keys = "{d / "authorized_keys"}"\n'
        )
        self.sshd_dir = Path(f"{d}-sshd")
        self.sshd: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.sshd_port = 0

    def start(self) -> None:
        self.tachi("daemon", "start")
        status = json.loads(self.tachi("daemon", "status", "--json"))
        (listener,) = [x for x in status["listeners"] if x["transport"] == "ssh"]
        self.port = int(listener["url"].rsplit(":", 1)[1])
        lines = [f"[127.0.0.1]:{self.port} {listener['hostKeyLine']}"]
        if os.path.exists(SSHD) and os.getuid() == 0:
            lines.append(self._start_sshd())
        (self.dir / "known_hosts").write_text("\n".join(lines) + "\n")

    def _start_sshd(self) -> str:
        """sshd on a free port, logging in a throw-away user whose shell is /bin/sh
        (root's shell rc files would be timed otherwise; "*" as the password
        hash: no password, but not a locked account, which sshd refuses)."""
        if subprocess.run(["id", SSHD_USER], capture_output=True).returncode != 0:
            subprocess.run(
                ["useradd", "--no-create-home", "--shell", "/bin/sh", "-p", "*", SSHD_USER],
                check=True,
            )
        d = self.sshd_dir
        d.mkdir(mode=0o755)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True
        )
        shutil.copy(self.dir / "id.pub", d / "authorized_keys")
        shutil.copy(self.data, d / "payload.b64")
        for f in (d / "authorized_keys", d / "payload.b64"):
            f.chmod(0o644)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        self.sshd_port = _free_port()
        self.sshd = subprocess.Popen(
            [
                SSHD, "-D", "-e", "-f", "/dev/null", "-p", str(self.sshd_port),
                "-o", "ListenAddress=127.0.0.1", "-h", str(d / "host_key"),
                "-o", f"AuthorizedKeysFile={d / 'authorized_keys'}",
                "-o", "PidFile=none", "-o", "UsePAM=no", "-o", "StrictModes=no",
                "-o", "PasswordAuthentication=no", "-o", "PrintMotd=no", "-o", "PrintLastLog=no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "sshd.log", "wb"),  # noqa: SIM115 (the child keeps it)
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.sshd_port), 0.5),
            ):
                break
            time.sleep(0.05)
        key = (d / "host_key.pub").read_text().split()
        return f"[127.0.0.1]:{self.sshd_port} {key[0]} {key[1]}"

    def ssh(self, port: int, *command: str, tty: bool = True) -> list[str]:
        return [
            "ssh", "-F", "none", "-p", str(port), "-i", str(self.dir / "id"),
            "-o", f"UserKnownHostsFile={self.dir / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            "-l", SSHD_USER if port == self.sshd_port else "tachi",
            "-tt" if tty else "-T", "127.0.0.1", *command,
        ]  # fmt: skip

    def remote_tachi(self) -> list[str]:
        """``tachi --host ssh://…``, with ssh told our key and known_hosts."""
        ssh = self.ssh(self.port, tty=False)
        self.env["TACHI_SSH_COMMAND"] = shlex.join(ssh[: ssh.index("-T")])
        return [*harness.TACHI, "--host", f"ssh://127.0.0.1:{self.port}"]

    def close(self) -> None:
        if self.sshd is not None:
            self.sshd.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sshd.wait(5)
        shutil.rmtree(self.sshd_dir, ignore_errors=True)
        with contextlib.suppress(Exception):
            self.tachi("daemon", "stop", check=False)
        super().close()


def _client(env: SSHEnv, system: str, name: str, command: str) -> Any:
    """A client PTY showing ``command``'s terminal through ``system``."""
    if system == "sshd":
        return harness.spawn(env.ssh(env.sshd_port, command), env.env)
    size = ["--rows", str(harness.ROWS), "--cols", str(harness.COLS)]
    env.tachi("new", "-d", "--name", name, *size, "--", "bash", "--norc", "-c", command)
    if system == "unix":
        return harness.spawn([*harness.TACHI, "attach", name], env.env)
    if system == "ssh-host":
        return harness.spawn([*env.remote_tachi(), "attach", name], env.env)
    return harness.spawn(env.ssh(env.port, "attach", name), env.env)


_settle = harness.settle  # bench/fleet_transport.py and others call it by this name


def bench_throughput(env: SSHEnv, system: str, rnd: int) -> dict[str, float]:
    name = f"sshtp{rnd}{system}"
    size = env.data.stat().st_size
    data = env.sshd_dir / "payload.b64" if system == "sshd" else env.data
    command = f"read x; cat {data}; echo __E''ND__; sleep 3600"
    proc = _client(env, system, name, command)
    try:
        _settle(proc)
        if system == "sshd":
            os.write(proc.fd, b"\r")
        else:
            env.tachi("send", name, "\\n")
        seconds, delivered = harness.drain_until(proc, b"__END__")
        return {"mib_s": size / seconds / 2**20, "delivered_mib": delivered / 2**20}
    finally:
        harness.kill(proc)
        if system != "sshd":
            env.tachi("close", name, check=False)


def bench_echo(env: SSHEnv, system: str, rnd: int, keys: int) -> dict[str, float]:
    name = f"sshec{rnd}{system}"
    python = "/usr/bin/python3" if system == "sshd" else harness.PY
    proc = _client(env, system, name, f'{python} -c "{harness.ECHO_PROGRAM}"')
    try:
        harness.drain_until(proc, b"ready", 15)
        _settle(proc)
        return harness.echo_round_trips(proc, keys)
    finally:
        harness.kill(proc)
        if system != "sshd":
            env.tachi("close", name, check=False)


def bench_command(env: SSHEnv, system: str, runs: int) -> dict[str, float]:
    argv = {
        "unix": [*harness.TACHI, "ls"],
        "ssh": env.ssh(env.port, "ls", tty=False),
        "ssh-host": [*env.remote_tachi(), "ls"],
        "sshd": env.ssh(env.sshd_port, "true", tty=False),
    }[system]
    return harness.median_wall_ms(argv, env.env, runs)


def _ssh_systems(env: SSHEnv) -> list[str]:
    if env.sshd is None:
        print("sshd: not measured (needs /usr/sbin/sshd and root)", file=sys.stderr)
        return ["unix", "ssh", "ssh-host"]
    return ["unix", "ssh", "ssh-host", "sshd"]


def main() -> int:
    return harness.transport_main(
        __doc__ or "",
        "ssh",
        SSHEnv,
        _ssh_systems,
        {
            "throughput": lambda env, s, r, quick: bench_throughput(env, s, r),
            "echo": lambda env, s, r, quick: bench_echo(env, s, r, 100 if quick else 500),
            "command": lambda env, s, r, quick: bench_command(env, s, 5 if quick else 10),
        },
    )


if __name__ == "__main__":
    sys.exit(main())
