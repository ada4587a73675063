"""Window and session names cannot drive a terminal: names with control
characters (OSC 52 clipboard writes, OSC 0 titles, bidi overrides) are refused
with exit 2, and tables escape whatever such text reaches them anyway."""

from __future__ import annotations

import json

import pytest

from tachi.cli.output import table

OSC52 = "\x1b]52;c;cHduZWQ=\x07"
HOSTILE = [
    f"x{OSC52}",
    "\x1b]0;owned\x07",
    "tab\there",
    "line\nbreak",
    "bidi\u202eevil",
    "c1\x9b2J",
]


def _windows(daemon, sid):
    return json.loads(daemon.run("window", "ls", sid, "--json", check=True).stdout)


@pytest.mark.parametrize("name", HOSTILE)
def test_a_window_name_with_control_characters_is_refused(tachi_daemon, name):
    sid = tachi_daemon.new("sleep", "300")["id"]
    created = tachi_daemon.run("window", "new", sid, "--name", name, "--", "sleep", "300")
    assert created.returncode == 2, created.stderr
    assert "control characters are not allowed" in created.stderr
    assert "\x1b" not in created.stderr and "\x07" not in created.stderr
    renamed = tachi_daemon.run("window", "rename", sid, "0", name)
    assert renamed.returncode == 2 and "control characters" in renamed.stderr
    assert "\x1b" not in renamed.stderr
    assert [w["name"] for w in _windows(tachi_daemon, sid)] == ["sleep"]
    # A plain name still works.
    tachi_daemon.run("window", "rename", sid, "0", "logs é", check=True)
    assert [w["name"] for w in _windows(tachi_daemon, sid)] == ["logs é"]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_session_name_with_control_characters_is_refused(tachi_daemon, name):
    made = tachi_daemon.run("new", "-d", "--name", name, "--", "sleep", "300")
    assert made.returncode == 2 and "\x1b" not in made.stderr
    sid = tachi_daemon.new("sleep", "300")["id"]
    renamed = tachi_daemon.run("rename", sid, name)
    assert renamed.returncode == 2 and "\x1b" not in renamed.stderr


def test_a_window_named_after_a_hostile_command_lists_escaped(tachi_daemon, tmp_path):
    """The default window name is the command's file name, which may hold
    anything: `window ls` shows it escaped, never raw."""
    program = tmp_path / f"evil{OSC52}"
    program.write_text("#!/bin/sh\nexec sleep 300\n")
    program.chmod(0o755)
    sid = tachi_daemon.new("sleep", "300")["id"]
    tachi_daemon.run("window", "new", sid, "--", str(program), check=True)
    listed = tachi_daemon.run("window", "ls", sid, check=True).stdout
    assert "\x1b" not in listed and "\x07" not in listed
    assert "evil\\x1b]52;c;cHduZWQ=\\x07" in listed


def test_tables_escape_control_characters_in_names_from_old_state(capsys):
    table(["ID", "NAME"], [["s1", f"old{OSC52}"], ["s2", "bidi\u202eevil"], ["s3", "plain"]])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "old\\x1b]52;c;cHduZWQ=\\x07" in out and "bidi\\u202eevil" in out
    lines = out.splitlines()
    assert len(lines) == 4 and lines[3].split() == ["s3", "plain"]


def test_tachi_audit_escapes_what_peers_and_plugins_put_in_records(tachi_home, tmp_path):
    """A policy plugin's denial reason (or a peer's name) lands in the audit log
    as given; `tachi audit` prints it escaped, never as an escape sequence."""
    from helpers import installed_plugin
    from tachi.testing import DaemonProcess

    plugin = f"""
import pluggy
from tachi.errors import PermissionDenied

hookimpl = pluggy.HookimplMarker("tachi")


@hookimpl
def tachi_authorize(principal, action, session):
    if action == "session.signal":
        raise PermissionDenied({OSC52!r})
    return None
"""
    env = installed_plugin(tmp_path / "site", "hostile", plugin)
    daemon = DaemonProcess(tachi_home, extra_env={**env, "TACHI_LOAD_PLUGINS": "hostile"})
    daemon.start()
    try:
        s = daemon.new("sleep", "60")
        assert daemon.run("signal", s["id"], "TERM").returncode == 4
        shown = daemon.run("audit", check=True).stdout
    finally:
        daemon.stop()
    assert "\x1b" not in shown and "\x07" not in shown
    assert "\\x1b]52;c;cHduZWQ=\\x07" in shown
