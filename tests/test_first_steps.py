"""What a new user meets first: help with no arguments, one variable that isolates a daemon."""

from __future__ import annotations

import json
import os

from helpers import run_tachi
from tachi.testing import short_tempdir


def test_tachi_alone_prints_the_help_on_several_lines(tachi_home):
    env = {**os.environ, "TACHI_HOME": str(tachi_home), "TACHI_SOCKET": str(tachi_home / "s")}
    for argv in ((), ("window",), ("record",)):
        result = run_tachi(*argv, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert result.stdout.startswith("Usage: tachi"), result.stdout
        assert len(result.stdout.splitlines()) > 5
        assert "Commands:" in result.stdout


def test_tachi_home_alone_isolates_the_daemon():
    """Two jobs that set only TACHI_HOME get two daemons, each writing in its own home."""
    env = {k: v for k, v in os.environ.items() if k not in ("TACHI_SOCKET", "XDG_RUNTIME_DIR")}
    with short_tempdir() as one, short_tempdir() as two:
        envs = [{**env, "TACHI_HOME": str(home)} for home in (one, two)]
        try:
            for job in envs:
                result = run_tachi("new", "-d", "--json", "--", "sleep", "60", env=job)
                assert result.returncode == 0, result.stderr
            statuses = [
                json.loads(run_tachi("daemon", "status", "--json", env=job).stdout) for job in envs
            ]
            assert statuses[0]["pid"] != statuses[1]["pid"]
            for home, status in zip((one, two), statuses, strict=True):
                assert status["socket"] == str(home / "tachi.sock")
                assert status["stateDir"] == str(home / "state")
                assert status["sessions"] == 1
        finally:
            for job in envs:
                run_tachi("daemon", "stop", env=job)


def test_token_ls_shows_each_tokens_state(tachi_daemon):
    active = json.loads(tachi_daemon.run("token", "create", "--json", check=True).stdout)
    revoked = json.loads(tachi_daemon.run("token", "create", "--json", check=True).stdout)
    tachi_daemon.run("token", "revoke", revoked["id"], check=True)
    rows = tachi_daemon.run("token", "ls", "--all", check=True).stdout.splitlines()
    state = {row.split()[0]: row.split()[-1] for row in rows[1:]}
    assert state == {active["id"]: "active", revoked["id"]: "revoked"}


def test_a_name_that_looks_like_an_id_is_refused(tachi_daemon):
    """Ids are looked up first: a session named like an id could never be reached by name."""
    first = tachi_daemon.new("sleep", "60")
    for name in (first["id"], "0badc0de"):
        result = tachi_daemon.run("new", "-d", "--name", name, "--", "sleep", "60")
        assert result.returncode == 2, result.stderr
        assert "looks like a session id" in result.stderr
    s = tachi_daemon.new("sleep", "60", name="deadbeef-2")
    assert tachi_daemon.run("rename", s["id"], "feedface").returncode == 2
    assert tachi_daemon.new("sleep", "60", name="c0ffee42x")["name"] == "c0ffee42x"
