"""What a tmux user expects on day one: attach without an id, `new -A`,
`attach -d`, `clients`, `detach --client`, `rename`, `--cwd`, live `ls`,
`prune`, `tachi` inside a session, completion, and output made for people."""

from __future__ import annotations

import json
import shutil
import time

import pexpect

from helpers import SHELL, capture, get, spawn_attach, until, wait_match
from tachi.testing import DaemonProcess

PREFIX = "\x1c"


def _ids(daemon: DaemonProcess, *args: str) -> list[str]:
    return [s["id"] for s in json.loads(daemon.run("ls", "--json", *args, check=True).stdout)]


def _clients(daemon: DaemonProcess, sid: str) -> list[dict]:
    return json.loads(daemon.run("clients", sid, "--json", check=True).stdout)


def test_send_with_an_unknown_escape_types_nothing(tachi_daemon):
    s = tachi_daemon.new("cat")
    result = tachi_daemon.run("send", s["id"], r"abc\q")
    assert result.returncode == 2
    assert "unknown escape '\\\\q'" in result.stderr
    tachi_daemon.run("send", s["id"], "marker\n", check=True)
    wait_match(tachi_daemon, s["id"], "marker")
    assert "abc" not in capture(tachi_daemon, s["id"])


def test_audit_accepts_a_session_name(tachi_daemon):
    s = tachi_daemon.new("sleep", "60", name="build")
    tachi_daemon.run("send", s["id"], "x", check=True)
    by_name = json.loads(tachi_daemon.run("audit", "--session", "build", "--json").stdout)
    by_id = json.loads(tachi_daemon.run("audit", "--session", s["id"], "--json").stdout)
    assert by_name == by_id and by_name
    assert {r["session"] for r in by_name} == {s["id"]}


def test_human_output_has_no_python_reprs(tachi_daemon):
    s = tachi_daemon.new("bash", "--norc", "-c", "sleep 60", idle_timeout="30m")
    shown = tachi_daemon.run("get", s["id"], check=True).stdout
    status = tachi_daemon.run("daemon", "status", check=True).stdout
    for text in (shown, status):
        for repr_ in ("None", "True", "False", "['", "{'"):
            assert repr_ not in text, (repr_, text)
    assert "bash --norc -c 'sleep 60'" in shown
    assert "30m" in shown
    uptime = next(line for line in status.splitlines() if line.startswith("uptime"))
    assert uptime.split()[1][-1] in "smhd"
    stopped = tachi_daemon.run("daemon", "stop", check=True).stderr
    assert "(1 session closed)" in stopped


def test_attach_without_an_id_takes_the_most_recently_used(tachi_daemon):
    first = tachi_daemon.new(*SHELL)
    second = tachi_daemon.new(*SHELL)
    tachi_daemon.run("send", first["id"], "echo picked-$((6*7))\n", check=True)
    wait_match(tachi_daemon, first["id"], "picked-42")
    child = spawn_attach(tachi_daemon)
    child.expect("picked-42")
    until(lambda: get(tachi_daemon, first["id"])["clients"] == 1)
    assert get(tachi_daemon, second["id"])["clients"] == 0
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)


def test_attach_without_any_live_session_says_so(tachi_daemon):
    result = tachi_daemon.run("attach")
    assert result.returncode == 3
    assert "no live session" in result.stderr


def test_new_A_attaches_to_the_named_session_or_creates_it(tachi_daemon):
    made = json.loads(
        tachi_daemon.run("new", "-A", "--name", "work", "-d", "--json", "--", *SHELL).stdout
    )
    again = json.loads(
        tachi_daemon.run("new", "-A", "--name", "work", "-d", "--json", "--", *SHELL).stdout
    )
    assert made["id"] == again["id"] and _ids(tachi_daemon) == [made["id"]]
    tachi_daemon.run("send", "work", "echo in-work-$((1+1))\n", check=True)
    wait_match(tachi_daemon, "work", "in-work-2")
    argv = tachi_daemon.tachi_argv("new", "-A", "--name", "work")
    child = pexpect.spawn(argv[0], argv[1:], env=tachi_daemon.env, timeout=15)
    child.expect("in-work-2")
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)
    assert _ids(tachi_daemon) == [made["id"]]
    refused = tachi_daemon.run("new", "-A", "-d", "--", "true")
    assert refused.returncode == 2 and "-A needs --name" in refused.stderr


def test_clients_attach_d_and_detach_one_client(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    one = spawn_attach(tachi_daemon, s["id"], rows=20, cols=70)
    until(lambda: len(_clients(tachi_daemon, s["id"])) == 1)
    two = spawn_attach(tachi_daemon, s["id"], "--read-only")
    listed = until(
        lambda: len(_clients(tachi_daemon, s["id"])) == 2 and _clients(tachi_daemon, s["id"])
    )
    assert [c["readOnly"] for c in listed] == [False, True]
    assert listed[0]["size"] == {"cols": 70, "rows": 20}
    assert listed[0]["principal"] == listed[1]["principal"]
    table = tachi_daemon.run("clients", s["id"], check=True).stdout
    assert "70x20" in table and "read-only" in table

    tachi_daemon.run("detach", s["id"], "--client", str(listed[1]["id"]), check=True)
    two.expect(pexpect.EOF)
    assert [c["id"] for c in _clients(tachi_daemon, s["id"])] == [listed[0]["id"]]
    missing = tachi_daemon.run("detach", s["id"], "--client", "999999")
    assert missing.returncode == 3

    three = spawn_attach(tachi_daemon, s["id"], "-d")
    one.expect(pexpect.EOF)
    assert "detached" in one.before.decode()
    until(lambda: len(_clients(tachi_daemon, s["id"])) == 1)
    three.send(PREFIX + "d")
    three.expect(pexpect.EOF)


def test_rename(tachi_daemon):
    a = tachi_daemon.new("sleep", "60", name="alpha")
    tachi_daemon.new("sleep", "60", name="beta")
    tachi_daemon.run("rename", "alpha", "gamma", check=True)
    assert get(tachi_daemon, "gamma")["id"] == a["id"]
    taken = tachi_daemon.run("rename", "gamma", "beta")
    assert taken.returncode == 1 and "already named 'beta'" in taken.stderr
    bad = tachi_daemon.run("rename", "gamma", "no spaces")
    assert bad.returncode == 2


def test_new_cwd_is_used_and_a_missing_one_is_an_error(tachi_daemon, tmp_path):
    s = tachi_daemon.new(*SHELL, cwd=str(tmp_path), cols=300)  # a long path never wraps
    tachi_daemon.run("send", s["id"], "pwd\n", check=True)
    wait_match(tachi_daemon, s["id"], str(tmp_path))
    result = tachi_daemon.run("new", "-d", "--cwd", str(tmp_path / "nope"), "--", "true")
    assert result.returncode == 2, result.stderr
    assert "no such directory" in result.stderr


def test_ls_shows_live_sessions_and_prune_forgets_closed_ones(tachi_daemon):
    live = tachi_daemon.new("sleep", "60")
    done = tachi_daemon.new("true")
    tachi_daemon.run("wait", done["id"], "--exit", "--timeout", "10", check=True)
    assert _ids(tachi_daemon) == [live["id"]]
    assert set(_ids(tachi_daemon, "--all")) == {live["id"], done["id"]}
    kept = tachi_daemon.run("prune", "--older-than", "1h", check=True)
    assert "forgot 0 closed sessions" in kept.stderr
    assert tachi_daemon.run("prune", check=True).stderr.strip() == "forgot 1 closed session"
    assert _ids(tachi_daemon, "--all") == [live["id"]]


def test_retention_forgets_old_closed_sessions_at_start(tachi_home):
    daemon = DaemonProcess(tachi_home, config='[session]\nretention = "1s"\n')
    daemon.start()
    try:
        done = daemon.new("true")
        daemon.run("wait", done["id"], "--exit", "--timeout", "10", check=True)
        assert _ids(daemon, "--all") == [done["id"]]
        daemon.run("daemon", "stop", check=True)
        time.sleep(1.2)
        daemon.start()
        assert _ids(daemon, "--all") == []
    finally:
        daemon.stop()


def test_tachi_works_inside_a_session(tachi_daemon):
    bare_path = "/usr/bin:/bin"
    assert shutil.which("tachi", path=bare_path) is None
    s = tachi_daemon.new(*SHELL, env=f"PATH={bare_path}")
    tachi_daemon.run("send", s["id"], 'tachi get "$TACHI_SESSION" --json | grep -c state\n')
    wait_match(tachi_daemon, s["id"], r"^1\s*$")
    tachi_daemon.run("send", s["id"], 'test -x "$TACHI" && echo has-$((2+3))\n', check=True)
    wait_match(tachi_daemon, s["id"], "has-5")


def test_nested_attach_warns_and_refuses_its_own_session(tachi_daemon):
    outer = tachi_daemon.new(*SHELL, name="outer")
    inner = tachi_daemon.new(*SHELL)
    env = {**tachi_daemon.env, "TACHI_SESSION": outer["id"]}
    for ref in (outer["id"], "outer"):  # by its name too: it would feed itself for ever
        argv = tachi_daemon.tachi_argv("attach", ref)
        own = pexpect.spawn(argv[0], argv[1:], env=env, timeout=15)
        own.expect(pexpect.EOF)
        own.close()
        assert own.exitstatus == 2 and "to itself" in own.before.decode(), ref
    argv = tachi_daemon.tachi_argv("attach", inner["id"])
    nested = pexpect.spawn(argv[0], argv[1:], env=env, timeout=15)
    nested.expect("warning: attaching from inside session")
    nested.send(PREFIX + "d")
    nested.expect(pexpect.EOF)


def test_session_names_complete_in_the_shell(tachi_daemon):
    tachi_daemon.new("sleep", "60", name="builder")
    tachi_daemon.new("sleep", "60", name="other")
    env = {
        **tachi_daemon.env,
        "_TACHI_COMPLETE": "bash_complete",
        "COMP_WORDS": "tachi attach bu",
        "COMP_CWORD": "2",
    }
    result = tachi_daemon.run("attach", "bu", env=env)
    assert "builder" in result.stdout and "other" not in result.stdout
    down = {**env, "TACHI_SOCKET": str(tachi_daemon.home / "none.sock")}
    quiet = tachi_daemon.run("attach", "bu", env=down)
    assert quiet.returncode == 0 and quiet.stdout.strip() == ""
    assert not (tachi_daemon.home / "none.sock").exists()


def test_listen_on_a_running_daemon_is_an_error_not_ignored(tachi_daemon):
    # It adds the listener (tachi daemon listen); here no plugin can make one.
    result = tachi_daemon.run("daemon", "start", "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert "already running" in result.stderr
    assert "no loaded plugin serves transport 'websocket'" in result.stderr
