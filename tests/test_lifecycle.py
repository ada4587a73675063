"""Sessions from a script's point of view: create, list, get, close, and the JSON contract."""

from __future__ import annotations

import json
import pwd
import re

from helpers import SHELL, get, until, wait_match

RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
SEED_SESSION_FIELDS = {
    "id",
    "agentId",
    "userId",
    "state",
    "pty",
    "createdAt",
    "lastActivity",
    "idleTimeout",
    "maxDuration",
}


def test_create_list_get_close(tachi_daemon):
    s = tachi_daemon.new("sleep", "300", name="build", agent="agent-7")
    assert s["state"] == "suspended"
    assert s["name"] == "build" and s["agentId"] == "agent-7"
    assert s["userId"] == pwd.getpwuid(__import__("os").getuid()).pw_name

    listed = json.loads(tachi_daemon.run("ls", "--json", check=True).stdout)
    assert [x["id"] for x in listed] == [s["id"]]
    by_name = get(tachi_daemon, "build")
    assert by_name["id"] == s["id"]

    closed = json.loads(tachi_daemon.run("close", "build", "--json", check=True).stdout)
    assert closed["state"] == "closed" and closed["closeReason"] == "closed"
    after = get(tachi_daemon, s["id"])
    assert after["state"] == "closed" and after["closeReason"] == "closed"
    assert RFC3339_NS.match(after["closedAt"])


def test_json_uses_the_seed_field_names_and_go_encodings(tachi_daemon):
    s = tachi_daemon.new("sleep", "300", idle_timeout="30m", max_duration="8h", rows=40, cols=120)
    assert s.keys() >= SEED_SESSION_FIELDS
    assert set(s["pty"]) == {"term", "rows", "cols", "xPixel", "yPixel"}
    assert s["pty"]["term"] == "xterm-256color" and (s["pty"]["rows"], s["pty"]["cols"]) == (
        40,
        120,
    )
    # time.Duration is integer nanoseconds.
    assert s["idleTimeout"] == 30 * 60 * 10**9 and isinstance(s["idleTimeout"], int)
    assert s["maxDuration"] == 8 * 3600 * 10**9
    for key in ("createdAt", "lastActivity"):
        assert RFC3339_NS.match(s[key]), s[key]
    (window,) = s["windows"]
    assert {"id", "name", "active", "createdAt"} <= window.keys()
    assert window["id"] == 0 and window["active"] is True and window["name"] == "sleep"


def test_ls_filters_by_state_agent_and_user(tachi_daemon):
    a = tachi_daemon.new("sleep", "300", agent="alpha")
    b = tachi_daemon.new("sleep", "300", agent="beta")
    tachi_daemon.run("close", b["id"], check=True)

    def ids(*args):
        return {
            x["id"] for x in json.loads(tachi_daemon.run("ls", "--json", *args, check=True).stdout)
        }

    assert ids("--agent", "alpha") == {a["id"]}
    assert ids("--state", "closed") == {b["id"]}
    assert ids("--state", "suspended") == {a["id"]}
    assert ids("--user", a["userId"]) == {a["id"]}
    assert ids("--user", a["userId"], "--all") == {a["id"], b["id"]}
    assert ids("--user", "nobody-else") == set()


def test_unknown_session_exits_3_with_one_clear_line(tachi_daemon):
    for args in (
        ["get", "nope"],
        ["attach", "nope"],
        ["send", "nope", "x"],
        ["capture", "nope"],
        ["close", "nope"],
    ):
        result = tachi_daemon.run(*args)
        assert result.returncode == 3, (args, result.stderr)
        assert result.stderr.strip().splitlines() == ["tachi: no session 'nope' (see 'tachi ls')"]


def test_bad_input_is_a_usage_error(tachi_daemon):
    result = tachi_daemon.run("new", "-d", "--idle-timeout", "soon", "--", "true")
    assert result.returncode == 2 and "invalid duration" in result.stderr
    result = tachi_daemon.run("new", "-d", "--", "/no/such/program")
    assert result.returncode == 2 and "cannot start '/no/such/program'" in result.stderr
    result = tachi_daemon.run("signal", "x", "SIGNOPE")
    assert result.returncode in (2, 3)


def test_default_command_is_the_login_shell(tachi_daemon):
    s = tachi_daemon.new()
    assert s["command"] == [pwd.getpwuid(__import__("os").getuid()).pw_shell]


def test_script_flow_send_wait_capture_exit_code(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    tachi_daemon.run("send", s["id"], r"echo result=$((6*7))\n", check=True)
    assert wait_match(tachi_daemon, s["id"], r"result=\d+").strip() == "result=42"
    screen = tachi_daemon.run("capture", s["id"], check=True).stdout
    assert "result=42" in screen
    tachi_daemon.run("send", s["id"], r"exit 7\n", check=True)
    result = tachi_daemon.run("wait", s["id"], "--exit", "--timeout", "10")
    assert result.returncode == 7
    closed = get(tachi_daemon, s["id"])
    assert closed["closeReason"] == "exit" and closed["exitCode"] == 7


def test_wait_times_out_with_124(tachi_daemon):
    s = tachi_daemon.new("sleep", "300")
    result = tachi_daemon.run("wait", s["id"], "--match", "never-printed", "--timeout", "0.3")
    assert result.returncode == 124 and "timed out" in result.stderr


def test_send_understands_c_escapes(tachi_daemon):
    s = tachi_daemon.new("cat", "-v")
    tachi_daemon.run("send", s["id"], r"a\tb\x01\e\n", check=True)
    # cat -v echoes tab as is; on the screen it is cursor movement.
    assert wait_match(tachi_daemon, s["id"], r"a\s+b\^A\^\[").startswith("a")


def test_names_must_be_unique_among_live_sessions(tachi_daemon):
    tachi_daemon.new("sleep", "300", name="dup")
    result = tachi_daemon.run("new", "-d", "--name", "dup", "--", "sleep", "1")
    assert result.returncode == 1 and "already named 'dup'" in result.stderr


def test_config_term_applies_to_new_sessions(tachi_home):
    from tachi.testing import DaemonProcess

    daemon = DaemonProcess(tachi_home, config='[session]\nterm = "screen-256color"\n')
    daemon.start()
    try:
        s = daemon.new("sh", "-c", 'echo "TERM=$TERM"; sleep 30')
        assert s["pty"]["term"] == "screen-256color"
        wait_match(daemon, s["id"], "TERM=screen-256color")
        assert daemon.new("sleep", "30", term="vt100")["pty"]["term"] == "vt100"
    finally:
        daemon.stop()


def test_the_live_filter_leaves_the_history_out_in_the_daemon(tachi_daemon):
    # `tachi ls` asks for live sessions only: the daemon must not send (or read)
    # its closed history, which a busy CI host fills with hundreds of entries.
    from tachi.models import SessionFilter

    closed = [tachi_daemon.new("true")["id"] for _ in range(5)]
    live = tachi_daemon.new("sleep", "300")["id"]
    with tachi_daemon.client() as client:
        until(lambda: all(get(tachi_daemon, sid)["state"] == "closed" for sid in closed))
        assert [s.id for s in client.list(SessionFilter(live=True))] == [live]
        everything = {s.id for s in client.list(SessionFilter())}
    assert everything == {*closed, live}
    shown = json.loads(tachi_daemon.run("ls", "--json", check=True).stdout)
    assert [s["id"] for s in shown] == [live]


def test_a_field_mask_sends_only_the_fields_asked_for(tachi_daemon):
    # `tachi ls` asks for its columns only; the values must be the full listing's.
    from tachi.models import SessionFilter

    closed = tachi_daemon.new("true", name="done")["id"]
    live = tachi_daemon.new("sleep", "300", name="work", rows=30, cols=90)["id"]
    tachi_daemon.run("window", "new", live, "--", "sleep", "300", check=True)
    until(lambda: get(tachi_daemon, closed)["state"] == "closed")
    fields = ["state", "closeReason", "pty.cols", "windows.id", "windows.pid", "createdAt"]
    with tachi_daemon.client() as client:
        full = {s["id"]: s for s in client.list_json(SessionFilter())}
        masked = client.list_json(SessionFilter(), fields=fields)
    assert [s["id"] for s in masked] == [closed, live]
    for s in masked:
        whole = full[s["id"]]
        assert set(s) == {"id", "state", "closeReason", "pty", "windows", "createdAt"}
        assert s["pty"] == {"cols": whole["pty"]["cols"]}
        assert s["windows"] == [{"id": w["id"], "pid": w["pid"]} for w in whole["windows"]]
        assert (s["state"], s["closeReason"], s["createdAt"]) == (
            whole["state"],
            whole["closeReason"],
            whole["createdAt"],
        )
    assert masked[1]["pty"] == {"cols": 90} and [w["id"] for w in masked[1]["windows"]] == [0, 1]
    assert masked[0]["closeReason"] == "exit"


def test_a_bad_field_mask_is_refused_by_name_and_the_daemon_keeps_serving(tachi_daemon):
    from tachi.errors import InvalidRequest

    s = tachi_daemon.new("sleep", "300")
    with tachi_daemon.client() as client:
        for fields, named in (
            (["state", "colour"], "unknown field 'colour'"),
            (["pty.depth"], "'pty.depth' (pty has: cols, rows, term, xPixel, yPixel)"),
            (["name.first"], "'name' has no fields"),
            ([7], "a field is a string"),
            ("state", "'fields' must be a list"),
        ):
            try:
                client.call("session.list", filter={}, fields=fields)
            except InvalidRequest as exc:
                assert named in str(exc), (fields, str(exc))
            else:
                raise AssertionError(f"{fields!r} was accepted")
        assert [x.id for x in client.list()] == [s["id"]]


def test_ls_shows_each_column(tachi_daemon):
    s = tachi_daemon.new("sleep", "300", name="build", agent="ci-7", rows=30, cols=90)
    tachi_daemon.run("window", "new", s["id"], "--", "sleep", "300", check=True)
    done = tachi_daemon.new("true", name="once")
    until(lambda: get(tachi_daemon, done["id"])["state"] == "closed")
    user = pwd.getpwuid(__import__("os").getuid()).pw_name
    lines = tachi_daemon.run("ls", "--all", check=True).stdout.splitlines()
    assert lines[0].split() == [
        "ID", "NAME", "STATE", "USER", "AGENT", "SIZE", "WIN", "CREATED", "COMMAND",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[s["id"]][:7] == [s["id"], "build", "suspended", user, "ci-7", "90x30", "2"]
    assert re.fullmatch(r"\d+s", rows[s["id"]][7]) and rows[s["id"]][8:] == ["ago", "sleep", "300"]
    assert rows[done["id"]][1:4] == ["once", "closed", "(exit)"]
    live_only = tachi_daemon.run("ls", check=True).stdout
    assert s["id"] in live_only and done["id"] not in live_only
