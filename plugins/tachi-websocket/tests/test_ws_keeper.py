"""The connection keeper (TACHI_WS_KEEPER=1, issue 32): commands take connections
opened ahead, and each still acts with its own token, checked by the daemon."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

from ws_support import Remote

from tachi.testing import command_lines


def _run(remote: Remote, runtime: Path, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        remote.daemon.tachi_argv(*remote.flags(), *args),
        env={
            **remote.daemon.env,
            "TACHI_TOKEN": token,
            "TACHI_WS_KEEPER": "1",
            "XDG_RUNTIME_DIR": str(runtime),
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _share(remote: Remote, sid: str, role: str) -> str:
    out = remote.daemon.run("share", sid, "--role", role, "--json", check=True).stdout
    return json.loads(out)["token"]


def test_kept_connections_serve_each_token_as_itself_and_a_rotated_token_at_once(
    remote: Remote, tmp_path: Path
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    s = remote.daemon.new("cat", name="kept")
    writer = _share(remote, s["id"], "collaborator")
    reader = _share(remote, s["id"], "observer")
    try:
        for i in range(3):  # interleaved: a spare made after the writer's command serves the reader
            wrote = _run(remote, runtime, "send", s["id"], f"w{i}\\n", token=writer)
            assert wrote.returncode == 0, wrote.stderr
            refused = _run(remote, runtime, "send", s["id"], f"r{i}\\n", token=reader)
            assert refused.returncode == 4, refused.stderr
        keeper = runtime / "tachi" / "ws-keeper.sock"
        assert stat.S_ISSOCK(keeper.stat().st_mode)
        assert stat.S_IMODE(keeper.stat().st_mode) == 0o600
        assert stat.S_IMODE(keeper.parent.stat().st_mode) == 0o700
        screen = remote.daemon.run("capture", s["id"], check=True).stdout
        assert all(f"w{i}" in screen for i in range(3))
        assert not any(f"r{i}" in screen for i in range(3))
        # The writer's spare is already open when its token is rotated: refused all the same.
        remote.daemon.run("token", "rotate", s["id"], "--grace", "0", check=True)
        late = _run(remote, runtime, "send", s["id"], "late\\n", token=writer)
        assert late.returncode == 4
        assert "late" not in remote.daemon.run("capture", s["id"], check=True).stdout
    finally:
        _stop_keeper(runtime)


def test_a_keeper_that_died_is_replaced(remote: Remote, tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    try:
        assert _run(remote, runtime, "ls", token=remote.token).returncode == 0
        assert _stop_keeper(runtime, signal.SIGKILL) == 1  # its socket stays behind
        assert (runtime / "tachi" / "ws-keeper.sock").exists()
        again = _run(remote, runtime, "ls", token=remote.token)
        assert again.returncode == 0, again.stderr
        assert _stop_keeper(runtime) == 1  # a new keeper took the socket over
    finally:
        _stop_keeper(runtime)


def _stop_keeper(runtime: Path, signum: int = signal.SIGTERM) -> int:
    """Signal the keeper this test started (found by its socket path on its
    command line); how many there were."""
    path = str(runtime / "tachi" / "ws-keeper.sock")
    found = 0
    for pid, argv in command_lines():
        if b"tachi_websocket.keeper" in argv and path.encode() in argv:
            proc = Path(f"/proc/{pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
                found += 1
                deadline = time.monotonic() + 10
                while (proc / "cmdline").exists() and time.monotonic() < deadline:
                    if not (proc / "cmdline").read_bytes():  # a zombie: it is gone
                        break
                    time.sleep(0.02)
    return found
