"""Windows in a session: each its own PTY, switched by CLI or prefix keys, redrawn at once."""

from __future__ import annotations

import json

import pexpect

from helpers import SHELL, capture, get, spawn_attach, until

PREFIX = "\x1c"


def _windows(daemon, sid):
    return json.loads(daemon.run("window", "ls", sid, "--json", check=True).stdout)


def _active(daemon, sid):
    return next(w["id"] for w in _windows(daemon, sid) if w["active"])


def _three_windows(daemon):
    s = daemon.new(*SHELL)
    sid = s["id"]
    for n in (1, 2):
        out = daemon.run("window", "new", sid, "--name", f"w{n}", "--", *SHELL, check=True)
        assert out.stdout.strip() == str(n)
    for n in (0, 1, 2):
        daemon.run("send", sid, rf"echo content-of-window-{n}\n", "--window", str(n), check=True)
        pattern = rf"^content-of-window-{n}"
        args = ("wait", sid, "--window", str(n), "--match", pattern, "--timeout", "10")
        assert daemon.run(*args).returncode == 0
    return sid


def test_window_api_matches_the_seed(tachi_daemon):
    sid = _three_windows(tachi_daemon)
    windows = _windows(tachi_daemon, sid)
    assert [w["id"] for w in windows] == [0, 1, 2]
    assert [w["name"] for w in windows] == ["bash", "w1", "w2"]
    assert {"id", "name", "active", "createdAt", "command", "pid"} <= windows[0].keys()
    assert [w["active"] for w in windows] == [False, False, True]
    assert len({w["pid"] for w in windows}) == 3
    tachi_daemon.run("window", "rename", sid, "1", "editor", check=True)
    assert _windows(tachi_daemon, sid)[1]["name"] == "editor"


def test_each_windows_output_survives_switching(tachi_daemon):
    sid = _three_windows(tachi_daemon)
    for n in (0, 1, 2):
        tachi_daemon.run("window", "select", sid, str(n), check=True)
        screen = capture(tachi_daemon, sid)
        assert f"content-of-window-{n}" in screen.replace("echo content-of-window", "")
        for other in {0, 1, 2} - {n}:
            assert f"\ncontent-of-window-{other}" not in "\n" + screen
    assert "content-of-window-1" in capture(tachi_daemon, sid, "--window", "1")


def test_attached_client_redraws_on_switch_by_cli_and_by_prefix_keys(tachi_daemon):
    sid = _three_windows(tachi_daemon)
    child = spawn_attach(tachi_daemon, sid)
    child.expect("content-of-window-2")
    tachi_daemon.run("window", "select", sid, "0", check=True)
    # The redraw clears the screen first, then draws window 0's content.
    child.expect(r"\x1b\[2J")
    child.expect("content-of-window-0")
    child.send(PREFIX + "1")
    child.expect(r"\x1b\[2J")
    child.expect("content-of-window-1")
    assert until(lambda: _active(tachi_daemon, sid) == 1)
    child.send(PREFIX + "n")
    child.expect("content-of-window-2")
    assert until(lambda: _active(tachi_daemon, sid) == 2)
    child.send(PREFIX + "p")
    child.expect("content-of-window-1")
    child.send(PREFIX + "c")
    assert until(lambda: len(_windows(tachi_daemon, sid)) == 4 and _active(tachi_daemon, sid) == 3)
    child.send("echo typed-in-new-$((2*2))\r")
    child.expect("typed-in-new-4")
    child.send(PREFIX + "w")
    child.expect(r"0:bash 1:w1 2:w2 3:bash\*")
    child.send(PREFIX + ",renamed\r")
    assert until(lambda: _windows(tachi_daemon, sid)[3]["name"] == "renamed")
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)


def test_active_window_exit_falls_back_to_the_most_recent_one(tachi_daemon):
    sid = _three_windows(tachi_daemon)
    tachi_daemon.run("window", "select", sid, "0", check=True)
    tachi_daemon.run("window", "select", sid, "1", check=True)
    tachi_daemon.run("send", sid, r"exit\n", check=True)  # window 1 exits
    assert until(lambda: [w["id"] for w in _windows(tachi_daemon, sid)] == [0, 2])
    assert _active(tachi_daemon, sid) == 0  # most recently used before 1
    tachi_daemon.run("window", "close", sid, "0", check=True)
    assert until(lambda: [w["id"] for w in _windows(tachi_daemon, sid)] == [2])
    assert _active(tachi_daemon, sid) == 2
    # Ids are never reused.
    out = tachi_daemon.run("window", "new", sid, "--", *SHELL, check=True)
    assert out.stdout.strip() == "3"


def test_closing_the_last_window_closes_the_session_with_its_exit_code(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    tachi_daemon.run(
        "window", "new", s["id"], "--", "bash", "--norc", "-c", "read; exit 9", check=True
    )
    tachi_daemon.run("window", "close", s["id"], "0", check=True)
    until(lambda: len(_windows(tachi_daemon, s["id"])) == 1)
    tachi_daemon.run("send", s["id"], r"\n", check=True)
    result = tachi_daemon.run("wait", s["id"], "--exit", "--timeout", "10")
    assert result.returncode == 9
    info = get(tachi_daemon, s["id"])
    assert info["closeReason"] == "exit" and info["exitCode"] == 9


def test_resize_reaches_every_window(tachi_daemon):
    sid = _three_windows(tachi_daemon)
    tachi_daemon.run("resize", sid, "--rows", "27", "--cols", "91", check=True)
    for n in (0, 1, 2):
        tachi_daemon.run("send", sid, r"stty size\n", "--window", str(n), check=True)
        until(lambda n=n: "27 91" in capture(tachi_daemon, sid, "--window", str(n)))


def test_send_capture_wait_signal_take_a_window(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    sid = s["id"]
    tachi_daemon.run(
        "window",
        "new",
        sid,
        "-d",
        "--",
        "bash",
        "--norc",
        "-c",
        "trap 'echo W1-GOT-INT' INT; echo w1-ready; while :; do sleep 0.05; done",
        check=True,
    )
    assert _active(tachi_daemon, sid) == 0  # -d did not switch
    assert (
        tachi_daemon.run(
            "wait", sid, "--window", "1", "--match", "w1-ready", "--timeout", "10"
        ).returncode
        == 0
    )
    tachi_daemon.run("signal", sid, "INT", "--window", "1", check=True)
    result = tachi_daemon.run(
        "wait", sid, "--window", "1", "--match", "W1-GOT-INT", "--timeout", "10"
    )
    assert result.returncode == 0
    assert "W1-GOT-INT" not in capture(tachi_daemon, sid)
    unknown = tachi_daemon.run("capture", sid, "--window", "7")
    assert unknown.returncode == 3 and "no window 7" in unknown.stderr


def test_a_read_only_client_cannot_open_or_rename_windows(tachi_daemon):
    import time

    s = tachi_daemon.new(*SHELL)
    with tachi_daemon.client() as client:
        conn = client.attach(s["id"], read_only=True)
        conn.request("window.new", session=s["id"], command=[])
        conn.request("window.rename", session=s["id"], window=0, name="mine")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len([e for e in conn.events if "ok" in e]) < 2:
            conn.read(timeout=0.2)
        replies = [e for e in conn.events if "ok" in e]
        conn.close()
    assert [r["error"]["code"] for r in replies] == ["permission_denied"] * 2
    assert [w["name"] for w in _windows(tachi_daemon, s["id"])] == ["bash"]


def test_keys_sent_right_after_a_window_switch_go_to_the_new_window(tachi_daemon):
    # The switch is a request, handled beside the connection's loop; keystrokes
    # arriving with it (one write, one read by the daemon) must not overtake it
    # and be typed into the window the user just left.
    from tachi import protocol

    s = tachi_daemon.new("cat", name="two")
    tachi_daemon.run("window", "new", s["id"], "--", "cat", check=True)  # now active: 1
    with tachi_daemon.client() as client, client.attach(s["id"]) as conn:
        for n in range(5):
            target = n % 2
            select = {"id": 900 + n, "op": "window.select",
                      "args": {"session": s["id"], "window": target}}  # fmt: skip
            conn._wire.sock.sendall(
                protocol.encode_control(select)
                + protocol.encode(protocol.STDIN, b"typed-into-%d-%d\r" % (target, n))
            )
            until(lambda n=n, t=target: f"typed-into-{t}-{n}" in _screen(tachi_daemon, s, t))
    for window in (0, 1):
        text = _screen(tachi_daemon, s, window)
        assert f"typed-into-{1 - window}" not in text, (window, text)


def _screen(daemon, session, window: int) -> str:
    return capture(daemon, session["id"], "--window", str(window))
