"""The attached terminal handed to the daemon (``client.terminal``): keys and
output skip the attach process, and everything the client draws itself still
works, in the right order, with the terminal given back on the way out."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pexpect
import pytest

from helpers import SHELL, until, wait_match

PREFIX = "\x1c"  # Ctrl-\


def _clients(daemon, session: str) -> list[dict]:
    return json.loads(daemon.run("clients", session, "--json", check=True).stdout)


def _direct(daemon, session: str, client_pid: int | None = None) -> dict[str, bool]:
    for c in _clients(daemon, session):
        if client_pid is None or c["source"].endswith(f"pid:{client_pid}"):
            return c["direct"]
    return {}


def _client_pid(daemon, session: str) -> int:
    [client] = _clients(daemon, session)
    return int(client["source"].rsplit("pid:", 1)[1])


def _attach(daemon, session: str, rows: int = 30, cols: int = 100, **env: str) -> pexpect.spawn:
    argv = daemon.tachi_argv("attach", session)
    return pexpect.spawn(
        argv[0], argv[1:], env={**daemon.env, **env}, dimensions=(rows, cols), timeout=15
    )


def _handed_over_again_then_detach(daemon, session: str, child: pexpect.spawn, tag: str) -> None:
    """The terminal goes back to the daemon, typing still works, detach ends it."""
    assert until(lambda: _handed_over(daemon, session), timeout=10)
    child.send(f"echo {tag}-$((20+22))\r")
    child.expect(f"{tag}-42")
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)


def _handed_over(daemon, session: str) -> bool:
    direct = _direct(daemon, session)
    return direct.get("input") is True and direct.get("output") is True


@pytest.mark.parametrize("direct", [True, False], ids=["handed-over", "TACHI_DIRECT=0"])
def test_keys_and_output_skip_a_stopped_attach_process(tachi_daemon, direct):
    """With the terminal handed over, a session answers typing even while the
    attach process is stopped: it is on neither leg of a keystroke."""
    s = tachi_daemon.new(*SHELL)
    child = _attach(tachi_daemon, s["id"], **({} if direct else {"TACHI_DIRECT": "0"}))
    child.expect(r"\$|#")
    if direct:
        assert until(lambda: _handed_over(tachi_daemon, s["id"]))
    else:
        time.sleep(0.5)
        assert _direct(tachi_daemon, s["id"]) == {"input": False, "output": False, "floods": 0}
    pid = _client_pid(tachi_daemon, s["id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        child.send("echo while-$((6*7))-stopped\r")
        if direct:
            child.expect("while-42-stopped", timeout=10)
        else:
            with pytest.raises(pexpect.TIMEOUT):
                child.expect("while-42-stopped", timeout=1)
    finally:
        os.kill(pid, signal.SIGCONT)
    if not direct:
        child.expect("while-42-stopped")  # once the attach process runs again
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_prefix_commands_take_the_terminal_back_and_hand_it_over_again(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    child = _attach(tachi_daemon, s["id"])
    child.expect(r"\$|#")
    assert until(lambda: _handed_over(tachi_daemon, s["id"]))
    # A new window: the prefix goes to the client, which asks for the window;
    # the daemon draws it on the terminal it writes to.
    child.send(PREFIX + "c")
    assert until(lambda: len(_windows(tachi_daemon, s["id"])) == 2)
    child.send("echo in-window-$((1+1))\r")
    child.expect("in-window-2")
    # The window list is drawn by the client itself (it takes the output back).
    child.send(PREFIX + "w")
    child.expect(r"0:\S+ 1:\S+\*")
    assert until(lambda: _direct(tachi_daemon, s["id"])["output"] is False)
    # The flash is redrawn over after 2 s; then the output goes back to the daemon.
    _handed_over_again_then_detach(tachi_daemon, s["id"], child, "after")


def test_a_smaller_session_hands_the_output_back_for_the_unused_area(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    big = _attach(tachi_daemon, s["id"], rows=30, cols=100)
    big.expect(r"\$|#")
    assert until(lambda: _handed_over(tachi_daemon, s["id"]))
    big_pid = _client_pid(tachi_daemon, s["id"])
    # A second, smaller client: the session takes its size, and the bigger
    # terminal shows the rest as unused area, which only its client draws.
    small = _attach(tachi_daemon, s["id"], rows=20, cols=60)
    small.expect(r"\$|#")
    big.expect(("·" * 20).encode())
    assert until(lambda: _direct(tachi_daemon, s["id"], big_pid)["output"] is False)
    small.send("echo from-small-$((3*3))\r")
    big.expect("from-small-9")
    small.send(PREFIX + "d")
    small.expect(pexpect.EOF)
    # Back to the big client's size: its output is handed over again.
    assert until(lambda: _direct(tachi_daemon, s["id"], big_pid)["output"] is True, timeout=10)
    big.send("stty size\r")
    big.expect("30 100")
    big.send(PREFIX + "d")
    big.expect(pexpect.EOF)


def test_keys_typed_after_detach_go_to_the_shell_not_the_session(tachi_daemon, tmp_path):
    s = tachi_daemon.new("cat")
    attach = " ".join(tachi_daemon.tachi_argv("attach", s["id"]))
    script = f"{attach}; read -r line; echo got=[$line]"
    child = pexpect.spawn(
        "bash", ["--norc", "-c", script], env=tachi_daemon.env, dimensions=(30, 100), timeout=15
    )
    assert until(lambda: _handed_over(tachi_daemon, s["id"]))
    child.send(PREFIX + "d")
    child.expect(r"\[detached from session")
    child.send("after-detach\r")
    child.expect(r"got=\[after-detach\]")
    child.expect(pexpect.EOF)
    with tachi_daemon.client() as client:
        assert "after-detach" not in client.capture(s["id"])


def test_copy_mode_and_resize_with_the_terminal_handed_over(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    child = _attach(tachi_daemon, s["id"], rows=24, cols=80)
    child.expect(r"\$|#")
    tachi_daemon.run("send", s["id"], r"seq 1 200 | sed 's/^/line-/'\n", check=True)
    child.expect("line-200")
    assert until(lambda: _handed_over(tachi_daemon, s["id"]))
    # A resize: the daemon redraws at the new size on the terminal it writes to.
    child.setwinsize(20, 70)
    child.kill(signal.SIGWINCH)
    wait_match(tachi_daemon, s["id"], "line-200")
    child.send("stty size\r")
    child.expect("20 70")
    # Copy mode is drawn by the client: the output comes back to it first.
    child.send(PREFIX + "[")
    # Keys before copy mode is up go to the program (it waits for the capture).
    child.expect(r"\[copy mode\]")
    child.send("g")
    child.expect(r"\[copy mode\] 1/")
    child.send("q")
    _handed_over_again_then_detach(tachi_daemon, s["id"], child, "copy")


def test_a_peer_without_a_terminal_is_refused_and_keeps_its_output(tachi_daemon):
    """The daemon opens only the terminal the peer process holds on stdin: a
    client whose stdin is not a terminal gets a clear error, and its output
    keeps coming as frames."""
    s = tachi_daemon.new("cat")
    script = f"""
import json, sys
from tachi.client.wire import WireConnection
from tachi import protocol
wire = WireConnection({str(tachi_daemon.socket)!r}, autostart=False)
wire.call("session.attach", {{"session": {s["id"]!r}}})
try:
    wire.call("client.terminal", {{"output": True, "handover": 1}})
    print("ACCEPTED")
except Exception as exc:
    print("REFUSED", exc)
events = [json.loads(f.payload) for f in wire.pending if f.channel == protocol.CONTROL]
print("MARKER", any(e.get("event") == "terminal" and e.get("handover") == 1 for e in events))
for bad in ({{"input": True, "prefix": "ab"}}, {{"input": True, "prefix": 7}},
            {{"output": True, "handover": "one"}}, {{"output": True}}):
    try:
        wire.call("client.terminal", bad)
        print("BAD-ACCEPTED", bad)
    except Exception as exc:
        print("BAD-REFUSED", type(exc).__name__)
wire.send_stdin(b"still-framed\\n")
seen = b""
while b"still-framed" not in seen:
    frame = wire.next_frame(10)
    assert frame is not None
    if frame.channel == protocol.STDOUT:
        seen += protocol.decode_output(frame.payload)[2]
print("OUTPUT", seen.count(b"still-framed") > 0)
# Detached, asking for the terminal back is still answered by the event (attach
# waits for it on its way out), naming the hand-over it was asked about.
wire.call("client.detach", {{}})
wire.send_request("client.terminal", {{"output": False, "input": False, "handover": 3}})
answer = None
while answer is None:
    frame = wire.next_frame(10)
    assert frame is not None
    if frame.channel == protocol.CONTROL:
        event = json.loads(frame.payload)
        if event.get("event") == "terminal":
            answer = event
print("DETACHED-ANSWER", answer.get("output"), answer.get("handover"))
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=tachi_daemon.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "REFUSED" in out.stdout and "not a terminal" in out.stdout, out.stdout + out.stderr
    assert "MARKER True" in out.stdout
    # Malformed requests get a clear error each, and the connection goes on.
    assert out.stdout.count("BAD-REFUSED InvalidRequest") == 4, out.stdout
    assert "OUTPUT True" in out.stdout
    assert "DETACHED-ANSWER False 3" in out.stdout, out.stdout + out.stderr


def test_a_terminal_that_hangs_up_takes_nothing_else_down(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    other = tachi_daemon.new("cat")
    child = _attach(tachi_daemon, s["id"])
    child.expect(r"\$|#")
    assert until(lambda: _handed_over(tachi_daemon, s["id"]))
    tachi_daemon.run("send", s["id"], "yes | head -c 20000000 | tr y z\n", check=True)
    child.close(force=True)  # the terminal goes away under the daemon's writes
    assert until(lambda: not _clients(tachi_daemon, s["id"]), timeout=10)
    tachi_daemon.run("send", other["id"], "still-alive\n", check=True)
    wait_match(tachi_daemon, other["id"], "still-alive")
    again = _attach(tachi_daemon, s["id"])
    again.expect(r"\$|#")
    again.send(PREFIX + "d")
    again.expect(pexpect.EOF)


def _windows(daemon, session: str) -> list:
    with daemon.client() as client:
        return client.list_windows(session)


def test_a_flood_goes_through_the_client_and_the_output_comes_back_after(tachi_daemon):
    """The daemon gives the output back when the terminal cannot take a write
    whole (the client writes a flood faster), and gets it again once the
    output has paused; nothing of the end of the flood is lost on the way."""
    s = tachi_daemon.new(*SHELL)
    child = _attach(tachi_daemon, s["id"])
    child.expect(r"\$|#")
    assert until(lambda: _handed_over(tachi_daemon, s["id"]))
    child.send("seq 1 300000 | tr '\\n' ' '; echo; echo FLOOD-$((40+2))-DONE\r")
    child.expect("FLOOD-42-DONE", timeout=60)
    assert until(lambda: _handed_over(tachi_daemon, s["id"]), timeout=10)
    assert _direct(tachi_daemon, s["id"])["floods"] >= 1
    child.send("echo calm-$((2*3))\r")
    child.expect("calm-6")
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)


def test_an_observer_is_written_directly_and_its_keys_never_arrive(tachi_daemon):
    s = tachi_daemon.new("cat")
    owner = _attach(tachi_daemon, s["id"], rows=30, cols=100)
    assert until(lambda: _handed_over(tachi_daemon, s["id"]))
    argv = tachi_daemon.tachi_argv("attach", "--read-only", s["id"])
    observer = pexpect.spawn(
        argv[0], argv[1:], env=tachi_daemon.env, dimensions=(30, 100), timeout=15
    )
    assert until(lambda: len(_clients(tachi_daemon, s["id"])) == 2)
    observer_pid = _client_pid_of(tachi_daemon, s["id"], read_only=True)
    # The same size as the session: its output is written by the daemon; its
    # keys are not read there (an observer's input is dropped anyway).
    assert until(
        lambda: (
            _direct(tachi_daemon, s["id"], observer_pid)
            == {"input": False, "output": True, "floods": 0}
        )
    )
    observer.send("typed-by-observer\r")
    owner.send("typed-by-owner\r")
    observer.expect("typed-by-owner")
    with tachi_daemon.client() as client:
        assert "typed-by-observer" not in client.capture(s["id"])
    # Its terminal grows; the session keeps its size (an observer never sets
    # it), so the observer takes the output back to draw the unused area.
    observer.setwinsize(36, 120)
    observer.expect(("·" * 20).encode())
    assert until(lambda: _direct(tachi_daemon, s["id"], observer_pid)["output"] is False)
    for child in (observer, owner):
        child.send(PREFIX + "d")
        child.expect(pexpect.EOF)


def _client_pid_of(daemon, session: str, *, read_only: bool) -> int:
    [client] = [c for c in _clients(daemon, session) if c["readOnly"] is read_only]
    return int(client["source"].rsplit("pid:", 1)[1])


@contextlib.contextmanager
def _scripted_bridge(tmp_path, answer):
    """An attach bridge on a real terminal, connected over a real Unix socket to
    a scripted daemon: it greets, then hands every other request (and the
    socket) to ``answer``, until the client hangs up."""
    from tachi import protocol
    from tachi.cli.attach import _Bridge
    from tachi.client.wire import WireConnection

    path = tmp_path / "peer.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)

    def scripted_daemon() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        decoder = protocol.FrameDecoder()
        while data := conn.recv(65536):
            for frame in decoder.feed(data):
                request = json.loads(frame.payload)
                if request["op"] == "hello":
                    reply = {"id": request["id"], "ok": True, "result": {"version": 1}}
                    conn.sendall(protocol.encode_control(reply))
                else:
                    answer(request, conn)
        conn.close()

    server = threading.Thread(target=scripted_daemon, daemon=True)
    server.start()
    wire = WireConnection(path, autostart=False)
    master, terminal = os.openpty()
    try:
        yield _Bridge(wire, terminal, terminal, PREFIX.encode(), read_only=False), wire
    finally:
        wire.close()
        server.join(5)
        listener.close()
        os.close(master)
        os.close(terminal)


def test_output_sent_with_the_hand_back_is_not_left_in_the_decoder(tmp_path):
    """The frames the daemon sends right after its ``terminal`` event often come
    in the same read: taking the output back must leave them where the attach
    loop looks (``pending``), not decoded and unseen while it waits on select()."""
    from tachi import protocol

    ops: list[str] = []

    def answer(request: dict, conn: socket.socket) -> None:
        ops.append(request["op"])
        marker = {"event": "terminal", "output": False, "handover": 1, "reason": "asked"}
        conn.sendall(
            protocol.encode_control(marker) + protocol.encode_output(0, 10, b"held-output")
        )

    with _scripted_bridge(tmp_path, answer) as (bridge, wire):
        bridge.direct, bridge.owns_output, bridge.handover = True, False, 1
        bridge._take_output()
        assert ops == ["client.terminal"]
        assert bridge.owns_output
        assert [f.channel for f in wire.pending] == [protocol.STDOUT]
        assert protocol.decode_output(wire.pending[0].payload)[2] == b"held-output"


def test_a_daemon_that_refuses_the_terminal_gets_a_redraw_request(tmp_path):
    """Attach stops drawing output the moment it offers the terminal. If the
    daemon refuses (a transport that cannot take it, as over SSH, or an older
    daemon), attach keeps the terminal and asks for a redraw, so output that
    came meanwhile is not missing from the screen (it was, under load: the
    shell's first prompt never showed over SSH)."""
    from tachi import protocol

    seen: list[str] = []
    redraw_asked = threading.Event()

    def answer(request: dict, conn: socket.socket) -> None:
        seen.append(request["op"])
        if request["op"] == "client.terminal":
            error = {"code": "invalid", "message": "not over this transport"}
            reply = {"id": request["id"], "ok": False, "error": error}
            conn.sendall(protocol.encode_control(reply))
        else:
            redraw_asked.set()

    with _scripted_bridge(tmp_path, answer) as (bridge, wire):
        bridge.direct = True
        bridge.session_size = bridge.term_size[:2]  # the first screen is up
        bridge._hand_over()
        assert not bridge.owns_input and not bridge.owns_output
        deadline = time.monotonic() + 10
        while not redraw_asked.is_set() and time.monotonic() < deadline:
            frame = wire.recv_frame(0.2)
            if frame is not None:
                bridge._apply_all([frame])
        assert redraw_asked.is_set(), seen
        assert seen == ["client.terminal", "client.terminal", "client.redraw"]
        assert bridge.owns_input and bridge.owns_output and not bridge.direct
