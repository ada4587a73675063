"""What `tachi --host ssh://…` says when ssh itself cannot get through: ssh's
own message, then one line naming the URL and ssh's exit status (it once said
`lost the connection to the daemon`, as if a daemon had been reached)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from ssh_support import SSH


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(SSH is None, reason="needs the OpenSSH client")
def test_nothing_listening_says_ssh_could_not_reach_it(tmp_path):
    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TACHI_SOCKET", "TACHI_HOST")}
    env["TACHI_HOME"] = str(tmp_path)  # no local daemon to fall back on
    env["TACHI_SSH_COMMAND"] = f"{SSH} -o BatchMode=yes -o ConnectTimeout=5"
    result = subprocess.run(
        [sys.executable, "-m", "tachi", "--host", f"ssh://127.0.0.1:{port}", "ls"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    # ssh's own message first (it goes to the terminal), then ours.
    assert any("Connection refused" in line and line.startswith("ssh:") for line in lines), lines
    assert lines[-1] == (
        f"tachi: cannot reach ssh://127.0.0.1:{port}: ssh exited with status 255"
        " (its message is above)"
    )
    assert "lost the connection" not in result.stderr
