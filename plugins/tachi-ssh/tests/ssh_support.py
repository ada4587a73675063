"""A real daemon with the SSH transport, and the real OpenSSH client to reach it."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tachi.core.principal import user_name
from tachi.testing import DaemonProcess

SSH = shutil.which("ssh")
OWNER = user_name(os.getuid())
#: SSH principals named after local users, so `tachi share --user` can name them.
BOB, CAROL = "tachi-bob", "tachi-alice"


def ensure_local_user(name: str) -> None:
    """Create local user ``name`` (needs root, as in CI); parallel workers may race."""
    for _ in range(50):
        try:
            pwd.getpwnam(name)
            return
        except KeyError:
            if os.getuid() != 0:
                pytest.skip(f"creating the local user {name} needs root (CI runs as root)")
            subprocess.run(
                ["useradd", "--no-create-home", "--shell", "/bin/sh", name], capture_output=True
            )
            time.sleep(0.05)
    raise RuntimeError(f"could not create the test user {name}")


def until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def make_key(directory: Path, name: str) -> Path:
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
    )
    return path


@dataclass
class SSHDaemon:
    """A tachid with ``[transports.ssh]`` on an ephemeral port, plus client keys."""

    daemon: DaemonProcess
    home: Path
    keys: dict[str, Path] = field(default_factory=dict)
    port: int = 0
    host_key_line: str = ""
    fingerprint: str = ""

    @property
    def known_hosts(self) -> Path:
        return self.home / "known_hosts"

    def refresh_listener(self) -> dict[str, Any]:
        status = json.loads(self.daemon.run("daemon", "status", "--json", check=True).stdout)
        (listener,) = [item for item in status["listeners"] if item["transport"] == "ssh"]
        self.port = int(listener["url"].rsplit(":", 1)[1])
        self.host_key_line = listener["hostKeyLine"]
        self.fingerprint = listener["hostKey"]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_key_line}\n")
        return listener

    def ssh_argv(
        self,
        *command: str,
        key: str | None = "owner",
        tty: bool = False,
        user: str | None = None,
        options: tuple[str, ...] = (),
        bind: str | None = None,
        batch: bool = True,
    ) -> list[str]:
        assert SSH is not None
        argv = [
            SSH,
            "-F",
            "none",
            "-p",
            str(self.port),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
        ]
        if batch:
            argv += ["-o", "BatchMode=yes"]
        if key is not None:
            argv += ["-i", str(self.keys[key])]
            cert = self.keys[key].with_name(self.keys[key].name + "-cert.pub")
            if cert.exists():
                argv += ["-o", f"CertificateFile={cert}"]
        else:
            argv += ["-o", "PubkeyAuthentication=no"]
        if bind is not None:
            argv += ["-b", bind]
        if user is not None:
            argv += ["-l", user]
        argv += ["-tt" if tty else "-T", *options, "127.0.0.1", *command]
        return argv

    def ssh(
        self, *command: str, timeout: float = 30, input: str | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ssh … COMMAND`` non-interactively (BatchMode, no TTY)."""
        return subprocess.run(
            self.ssh_argv(*command, **kwargs),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def spawn(self, *command: str, rows: int = 24, cols: int = 80, **kwargs: Any) -> pexpect.spawn:
        """``ssh -tt … COMMAND`` in a real terminal driven by pexpect."""
        kwargs.setdefault("tty", True)
        argv = self.ssh_argv(*command, **kwargs)
        return pexpect.spawn(argv[0], argv[1:], dimensions=(rows, cols), timeout=15)

    def audit(self) -> list[dict[str, Any]]:
        return json.loads(self.daemon.run("audit", "--json", check=True).stdout)

    def session(self, ref: str) -> dict[str, Any]:
        return json.loads(self.daemon.run("get", ref, "--json", check=True).stdout)


def authorized_line(key: Path, principal: str, options: str = "") -> str:
    extra = f",{options}" if options else ""
    return f'tachi-principal="{principal}"{extra} {key.with_suffix(".pub").read_text().strip()}'


def start_ssh_daemon(
    home: Path, extra_config: str = "", extra_ssh: str = "", listen: str = "127.0.0.1:0"
) -> SSHDaemon:
    """Keys ``owner`` (the daemon's user), ``bob`` (principal ``tachi-bob``) and
    ``stranger`` (not authorized); the SSH listener on ``listen``."""
    keydir = home / "keys"
    keydir.mkdir()
    keys = {name: make_key(keydir, name) for name in ("owner", "bob", "stranger")}
    (home / "authorized_keys").write_text(
        authorized_line(keys["owner"], OWNER) + "\n" + authorized_line(keys["bob"], BOB) + "\n"
    )
    config = (
        f'{extra_config}\n[transports.ssh]\nlisten = "{listen}"\n'
        f'authorized_keys = "{home / "authorized_keys"}"\n{extra_ssh}\n'
    )
    daemon = DaemonProcess(home, extra_env={"TACHI_LOAD_PLUGINS": "ssh"}, config=config)
    daemon.start()
    served = SSHDaemon(daemon, home, keys)
    served.refresh_listener()
    return served


@pytest.fixture
def ssh_daemon(tachi_home: Path) -> Iterator[SSHDaemon]:
    if SSH is None:
        pytest.fail("the OpenSSH client (ssh) is not installed: apt-get install openssh-client")
    served = start_ssh_daemon(tachi_home)
    try:
        yield served
    finally:
        served.daemon.stop()
