"""Small helpers shared by the scenario tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect

from tachi.testing import DaemonProcess


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


def memory_kib(pid: int) -> dict[str, int]:
    """The memory figures of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``, …), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        fields = (line.split(":", 1) for line in status)
        return {key: int(value.split()[0]) for key, value in fields if value.endswith("kB\n")}


def run_tachi(
    *args: str, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``tachi ARGS`` as a real process with exactly ``env`` (no daemon implied:
    for what a user meets before one runs, or starts one)."""
    return subprocess.run(
        [sys.executable, "-m", "tachi", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def saved_screen(daemon: DaemonProcess, session: str) -> str:
    """The last screen snapshot the daemon saved for the session's window 0."""
    db = sqlite3.connect(f"file:{daemon.state_dir / 'tachi.db'}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT screen FROM kept_windows WHERE session_id = ? AND window_id = 0", (session,)
        ).fetchone()
    except sqlite3.OperationalError:
        return ""
    finally:
        db.close()
    return row[0] if row else ""


@contextlib.contextmanager
def surviving_daemon(home: Path, **options: Any) -> Iterator[DaemonProcess]:
    """A started daemon that the test may kill and have replaced (``tachi ls``
    starts the next one, which adopts the sessions). Stopped afterwards by the
    CLI, which reaches whichever daemon serves the socket by then, and then the
    first one (and a keeper it left) too."""
    daemon = DaemonProcess(home, **options)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.run("daemon", "stop", timeout=30)
        daemon.stop()


def shell_session(daemon: DaemonProcess, name: str = "bash", rc: str = "") -> str:
    """A session running the shell ``name`` (bash, zsh or fish) with a private
    HOME, so the machine's rc files cannot slow or change it: its prompt is
    ``my-prompt$ ``, then ``rc``. Returns the session's id at once (the prompt
    may not be drawn yet)."""
    path = shutil.which(name)
    assert path, f"{name} is not installed (.ci/run installs it)"
    home = daemon.home / f"home-{name}"
    home.mkdir(exist_ok=True)
    (home / ".bashrc").write_text("PS1='my-prompt$ '\n" + rc)
    (home / ".zshrc").write_text("PS1='my-prompt$ '\n" + rc)
    (home / ".config/fish").mkdir(parents=True, exist_ok=True)
    (home / ".config/fish/config.fish").write_text(
        "function fish_prompt; echo -n 'my-prompt$ '; end\n" + rc
    )
    return daemon.new(path, env=f"HOME={home}")["id"]


@contextlib.contextmanager
def events_json(daemon: DaemonProcess) -> Iterator[subprocess.Popen[str]]:
    """``tachi events --json`` as a real process, subscribed by the time the
    block runs; ended after it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tachi", "events", "--json"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.8)  # for the subscription (not a timing assertion)
        yield proc
    finally:
        proc.terminate()
        proc.wait(5)


def events_until_closed(proc: subprocess.Popen[str], timeout: float) -> list[dict[str, Any]]:
    """The events ``proc`` (see :func:`events_json`) prints, up to the first
    ``closed`` one, or what came within ``timeout`` seconds."""
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events.append(json.loads(proc.stdout.readline()))
        if events[-1]["type"] == "closed":
            break
    return events


def get(daemon: DaemonProcess, ref: str) -> dict[str, Any]:
    result = daemon.run("get", ref, "--json", check=True)
    return json.loads(result.stdout)


def capture(daemon: DaemonProcess, ref: str, *args: str) -> str:
    return daemon.run("capture", ref, *args, check=True).stdout


def wait_match(daemon: DaemonProcess, ref: str, pattern: str, timeout: float = 10) -> str:
    result = daemon.run("wait", ref, "--match", pattern, "--timeout", str(timeout))
    assert result.returncode == 0, (
        f"wait for {pattern!r} failed: {result.stderr}\nscreen:\n{capture(daemon, ref)}"
    )
    return result.stdout


def shows(daemon: DaemonProcess, sid: str, text: str) -> None:
    """Wait until the session's screen shows ``text`` (polling ``capture``)."""
    until(lambda: text in capture(daemon, sid), timeout=20, interval=0.1)


def share(daemon: DaemonProcess, sid: str, *args: str) -> dict[str, Any]:
    """``tachi share SID --json ARGS``: the grant made, with its token."""
    return json.loads(daemon.run("share", sid, "--json", *args, check=True).stdout)


def audit_records(daemon: DaemonProcess, *args: str) -> list[dict[str, Any]]:
    """``tachi audit --json ARGS``: the audit records it lists."""
    return json.loads(daemon.run("audit", "--json", *args, check=True).stdout)


def spawn_attach(
    daemon: DaemonProcess, *args: str, rows: int = 30, cols: int = 100
) -> pexpect.spawn:
    """``tachi attach ARGS`` in a real PTY driven by pexpect."""
    argv = daemon.tachi_argv("attach", *args)
    return pexpect.spawn(argv[0], argv[1:], env=daemon.env, dimensions=(rows, cols), timeout=15)


SHELL = ["bash", "--norc", "--noprofile"]


def shell_env() -> dict[str, str]:
    return {"PS1": "$ ", **os.environ}


def installed_plugin(site: Path, name: str, source: str) -> dict[str, str]:
    """Make ``source`` an installed third-party plugin named ``name``, as ``pip
    install`` would (a module and a ``.dist-info`` with a ``tachi`` entry point) in
    the directory ``site``. Returns the environment that puts ``site`` on the path."""
    site.mkdir(parents=True, exist_ok=True)
    module = f"tachi_test_{name}"
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[tachi]\n{name} = {module}\n")
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{site}{os.pathsep}{path}" if path else str(site)}


@contextlib.contextmanager
def tcp_relay(unix_socket: Path) -> Iterator[int]:
    """A TCP port on 127.0.0.1 whose connections go to the daemon's Unix socket
    (what a real deployment of tcpfwd puts in front of the daemon)."""
    server = socket.create_server(("127.0.0.1", 0))

    def pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            unix = socket.socket(socket.AF_UNIX)
            unix.connect(str(unix_socket))
            for a, b in ((conn, unix), (unix, conn)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
