"""Every error is one `tachi:` line with the documented exit status; no traceback,
whatever the input: bad paths, full disks, closed sessions, garbage files."""

from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from tachi.cli.main import cli
from tachi.testing import DaemonProcess

EXIT_CODES = {0, 1, 2, 3, 4, 124}


def _one_error_line(stderr: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tachi: "), stderr


@pytest.fixture
def recorded(tachi_daemon):
    s = tachi_daemon.new("bash", "--norc")
    tachi_daemon.run("record", "start", s["id"], check=True)
    rec = tachi_daemon.run("record", "ls", "--json", check=True).stdout
    import json

    return s["id"], json.loads(rec)[0]["id"]


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["record", "export", "{rec}", "-o", "/nonexistent-dir/x.cast"], 1),
        (["record", "export", "{rec}", "-o", "/dev/full"], 1),
        (["record", "export", "no-such-rec", "-o", "{tmp}/never.cast"], 3),
        (["play", "{tmp}/garbage.bin"], 2),
        (["play", "{tmp}/text.txt"], 2),
        (["share", "{sid}", "--role", "observer", "--ttl", "abc"], 2),
        (["new", "-d", "--idle-timeout", "abc", "--", "true"], 2),
        (["new", "-d", "--rows", "x"], 2),
        (["share", "{sid}"], 2),
        (["no-such-command"], 2),
        (["get", "no-such-session"], 3),
        (["send", "no-such-session", "x"], 3),
        (["window", "select", "{sid}", "9"], 3),
        (["new", "-d", "--", "/no/such/program"], 2),
        (["send", "{sid}", "\\q"], 2),
        (["send", "{sid}", "a\\x4"], 2),
        (["audit", "--session", "no-such-session"], 3),
    ],
)
def test_bad_input_is_one_line(tachi_daemon, recorded, tmp_path, args, status):
    sid, rec = recorded
    (tmp_path / "garbage.bin").write_bytes(os.urandom(3000))
    (tmp_path / "text.txt").write_text("hello\n\x1b[2Jnot a recording\n")
    argv = [a.format(sid=sid, rec=rec, tmp=tmp_path) for a in args]
    result = tachi_daemon.run(*argv)
    assert result.returncode == status, result.stderr
    _one_error_line(result.stderr)
    assert "\x1b" not in result.stdout  # `play` of garbage draws nothing first
    assert not (tmp_path / "never.cast").exists()
    # An export to a device writes into it, never replaces it (as root it could).
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_commands_on_a_closed_session_are_one_line(tachi_daemon):
    s = tachi_daemon.new("true")
    tachi_daemon.run("wait", s["id"], "--exit", "--timeout", "10")
    for args in (
        ["send", s["id"], "x"],
        ["resize", s["id"], "--rows", "10", "--cols", "10"],
        ["signal", s["id"], "INT"],
        ["window", "new", s["id"]],
        ["record", "start", s["id"]],
        ["share", s["id"], "--role", "observer"],
    ):
        result = tachi_daemon.run(*args)
        assert result.returncode in (1, 2, 3), (args, result.stderr)
        _one_error_line(result.stderr)


def test_a_second_daemon_on_the_same_state_is_one_line(tachi_daemon):
    other = DaemonProcess(tachi_daemon.home)
    other.socket = tachi_daemon.home / "other.sock"
    result = tachi_daemon.run("ls", env={"TACHI_SOCKET": str(other.socket)})
    assert result.returncode == 1
    _one_error_line(result.stderr)
    assert "in use by another process" in result.stderr and "AuditWriteError" not in result.stderr


# fmt: off
WORDS = st.sampled_from(
    [
        "{sid}", "no-such", "", "-1", "0", "7", "99999", "--json", "--rows", "--cols", "abc",
        "\\q", "\\x", "/nonexistent/x", "/dev/full", "--window", "-w", "--all", "--role",
        "observer", "--ttl", "1s", "--grace", "x", "-o", "--ansi", "INT", "SIGFOO", "--name",
    ]
)
COMMANDS = st.sampled_from(
    [
        ["ls"], ["get"], ["send"], ["capture"], ["resize"], ["signal"], ["window", "ls"],
        ["window", "new"], ["window", "select"], ["window", "rename"], ["window", "close"],
        ["record", "start"], ["record", "stop"], ["record", "ls"], ["record", "export"],
        ["record", "rm"], ["share"], ["share", "ls"], ["revoke"], ["token", "rotate"],
        ["audit"], ["audit", "verify"], ["plugins"], ["daemon", "status"], ["close"],
    ]
)
# fmt: on


_SESSIONS: dict[object, str] = {}


@given(command=COMMANDS, words=st.lists(WORDS, max_size=5))
def test_random_invocations_never_crash(tachi_daemon, command, words):
    # One session per daemon, made at the first example (hypothesis reuses the fixture).
    if tachi_daemon.home not in _SESSIONS:
        _SESSIONS[tachi_daemon.home] = tachi_daemon.new("sleep", "300")["id"]
    sid = _SESSIONS[tachi_daemon.home]
    argv = command + [w.format(sid=sid) for w in words]
    runner = CliRunner()
    result = runner.invoke(cli, argv, env=tachi_daemon.env, catch_exceptions=True)
    assert result.exit_code in EXIT_CODES, (argv, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        argv,
        result.exception,
    )
    if result.exit_code:
        _one_error_line(result.stderr)
