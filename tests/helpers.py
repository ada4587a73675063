"""Small helpers shared by the scenario tests."""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Callable
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
