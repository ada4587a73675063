"""What `tachi --host ssh://…` says when ssh itself cannot get through: ssh's
own message, then one line naming the URL and ssh's exit status (it once said
`lost the connection to the daemon`, as if a daemon had been reached); and
docs/ssh.md's `send` line, run as written through a shell and the real ssh."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ssh_support import SSH, ssh_daemon, until

__all__ = ["ssh_daemon"]


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
    env["TACHI_LOAD_PLUGINS"] = "ssh"  # the suite loads none unless a test asks
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


DOCS = Path(__file__).resolve().parents[3] / "docs" / "ssh.md"


def _documented(command: str) -> str:
    """The line of docs/ssh.md's examples that runs ``command``, comment cut off."""
    (line,) = [
        x
        for x in DOCS.read_text().splitlines()
        if x.startswith("ssh -p 2222 host ") and command in x
    ]
    return line.split("  #", 1)[0].rstrip()


def _in_a_shell(s, line: str, sid: str) -> subprocess.CompletedProcess[str]:
    """Run a documented ``ssh -p 2222 host …`` line through a real shell, as a
    reader would type it, with this daemon's ssh options and ``ID`` filled in."""
    ssh = shlex.join(s.ssh_argv())  # … -T 127.0.0.1
    line = re.sub(r"\bID\b", sid, line.replace("ssh -p 2222 host", ssh, 1))
    return subprocess.run(
        ["sh", "-c", line], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )


def test_the_documented_send_line_works_as_written(ssh_daemon):
    s = ssh_daemon
    session = s.daemon.new("bash", "--norc", "--noprofile")
    line = _documented("send ID")
    result = _in_a_shell(s, line, session["id"])
    assert result.returncode == 0, (line, result.stderr)
    # The shell ran `echo hi`: "hi" on a line of its own.
    until(lambda: "hi" in s.daemon.run("capture", session["id"]).stdout.splitlines())


def test_send_without_the_outer_quotes_is_the_usage_error_the_docs_describe(ssh_daemon):
    s = ssh_daemon
    session = s.daemon.new("bash", "--norc", "--noprofile")
    result = _in_a_shell(s, "ssh -p 2222 host send ID 'echo hi\\n'", session["id"])
    assert result.returncode == 2, result.stderr
