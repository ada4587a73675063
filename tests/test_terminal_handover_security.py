"""The terminal handed to the daemon (``client.terminal``) is only ever one the
peer itself opened and sent over the socket (issue 26, F3).

The daemon used to open ``/proc/PID/fd/0`` of the peer with its own
credentials. A shared-socket user could put an ``O_PATH`` descriptor of a
terminal she may not open there, and a root daemon then wrote the session's
output into that terminal and read its keystrokes into the shared session.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import select
import socket
import struct
import termios
import threading
import tty

import pexpect
import pytest

from helpers import SHELL, until, wait_match
from tachi import protocol
from tachi.client.wire import WireConnection
from tachi.errors import TachiError
from users import as_user, ensure_users

PREFIX = "\x1c"


@pytest.fixture
def users():
    return ensure_users()


def share(daemon, sid: str, user: str) -> None:
    daemon.run("share", sid, "--role", "collaborator", "--user", user, check=True)


def denials(daemon, sid: str) -> list[dict]:
    records = json.loads(daemon.run("audit", "--json", "--session", sid, check=True).stdout)
    return [r for r in records if r["action"] == "client.terminal" and r["result"] == "denied"]


def read_available(fd: int, wait: float) -> bytes:
    """What ``fd`` has to read now (waiting at most ``wait`` for the first byte)."""
    seen = b""
    while select.select([fd], [], [], wait)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
        wait = 0.2
    return seen


def framed_output_until(wire: WireConnection, needle: bytes, timeout: float = 10) -> bool:
    """Whether ``needle`` comes to this client as output frames (not written to
    a terminal by the daemon) within ``timeout``."""
    import time

    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and (left := deadline - time.monotonic()) > 0:
        frame = wire.next_frame(left)
        if frame is not None and frame.channel == protocol.STDOUT:
            seen += protocol.decode_output(frame.payload)[2]
    return needle in seen


def ask_for_terminal(wire: WireConnection, descriptor: int | None) -> dict[str, str]:
    """Every way to get the daemon onto a terminal: hand ``descriptor`` over
    (if given), then ask for the keys and the output. What each answer was."""
    answers = {}
    if descriptor is not None:
        try:
            wire.call("client.terminal", {"descriptor": "offer"})
            wire.call("client.terminal", {"descriptor": "sent"}, descriptor=descriptor)
            answers["descriptor"] = "accepted"
        except TachiError as exc:
            answers["descriptor"] = str(exc)
    for name, args in (
        ("input", {"input": True, "prefix": ""}),
        ("output", {"output": True, "handover": 1}),
    ):
        try:
            wire.call("client.terminal", args)
            answers[name] = "accepted"
        except TachiError as exc:
            answers[name] = str(exc)
    return answers


@pytest.mark.parametrize("hand_over", [False, True], ids=["asks-only", "sends-its-O_PATH"])
def test_an_O_PATH_descriptor_of_roots_terminal_is_never_used(tachi_daemon, users, hand_over):
    """Alice (a collaborator on the shared socket) holds only an O_PATH descriptor
    of a terminal of root's (mode 600) on her stdin and stdout, and asks for the
    hand-over, with that descriptor or without: the daemon refuses, audits it,
    writes none of the session's output there and reads none of its keys."""
    s = tachi_daemon.new(*SHELL)
    sid = s["id"]
    share(tachi_daemon, sid, "tachi-alice")
    master, victim = os.openpty()
    tty.setraw(victim)  # bytes typed on it are readable at once, and not echoed
    # The session's size: a terminal of another size would get its output back.
    fcntl.ioctl(victim, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    victim_path = os.ttyname(victim)
    os.chmod(victim_path, 0o600)
    assert os.stat(victim_path).st_uid == 0
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    shared = str(tachi_daemon.shared_socket)

    def alice() -> dict:
        handle = os.open(victim_path, os.O_PATH)
        # She may not open it: only the O_PATH handle is hers.
        try:
            os.open(victim_path, os.O_RDWR | os.O_NOCTTY)
            raise AssertionError("alice could open root's terminal")
        except PermissionError:
            pass
        os.dup2(handle, 0)
        os.dup2(handle, 1)
        wire = WireConnection(shared, autostart=False)
        wire.call("session.attach", {"session": sid, "size": {"rows": 24, "cols": 80}})
        answers = ask_for_terminal(wire, 0 if hand_over else None)
        wire.send_request("session.send", {"session": sid, "text": "echo LEAK-$((6*7))\n"})
        answers["framed"] = framed_output_until(wire, b"LEAK-42")
        os.write(ready_w, b"r")
        os.read(done_r, 1)  # attached while root types on the terminal
        wire.close()
        return answers

    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(as_user("tachi-alice", alice)))
    worker.start()
    try:
        assert select.select([ready_r], [], [], 30)[0], "alice's client never got going"
        assert os.read(ready_r, 1) == b"r"
        # Nothing of the session reached root's terminal...
        leaked = read_available(master, 0.5)
        assert b"LEAK" not in leaked, leaked
        # ...and what root types there stays there, unread by the daemon.
        os.write(master, b"echo TYPED-$((40+2))\r")
        tachi_daemon.run("send", sid, "echo MARK-$((1+1))\n", check=True)
        wait_match(tachi_daemon, sid, "MARK-2")
        assert read_available(victim, 2) == b"echo TYPED-$((40+2))\r"
        assert "TYPED-42" not in tachi_daemon.run("capture", sid, check=True).stdout
    finally:
        os.write(done_w, b"d")
        worker.join(30)
        for fd in (master, victim, ready_r, ready_w, done_r, done_w):
            os.close(fd)
    answers = result
    assert "not handed over" in answers["input"], answers
    assert "not handed over" in answers["output"], answers
    if hand_over:
        assert "not open for reading and writing" in answers["descriptor"], answers
    assert answers["framed"], "the session's output must keep coming to alice as frames"
    refused = [r for r in denials(tachi_daemon, sid) if r["principal"] == "tachi-alice"]
    assert len(refused) == (3 if hand_over else 2), refused


def test_a_terminal_of_another_user_is_refused_even_open_for_writing(tachi_daemon, users):
    """Root's terminal left world-writable: alice can open it read-write, but it
    is not hers, so the daemon will not take it from her."""
    s = tachi_daemon.new(*SHELL)
    sid = s["id"]
    share(tachi_daemon, sid, "tachi-alice")
    master, victim = os.openpty()
    victim_path = os.ttyname(victim)
    os.chmod(victim_path, 0o666)
    shared = str(tachi_daemon.shared_socket)

    def alice() -> dict:
        fd = os.open(victim_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        wire = WireConnection(shared, autostart=False)
        wire.call("session.attach", {"session": sid})
        return ask_for_terminal(wire, fd)

    try:
        answers = as_user("tachi-alice", alice)
        assert "belongs to another user" in answers["descriptor"], answers
        assert "not handed over" in answers["output"], answers
        assert b"$" not in read_available(master, 0.3)  # no screen drawn there
    finally:
        os.close(master)
        os.close(victim)
    reasons = [r["reason"] for r in denials(tachi_daemon, sid)]
    assert any("belongs to another user" in r for r in reasons), reasons


def test_a_shared_user_hands_over_her_own_terminal(tachi_daemon, users):
    """Alice's own terminal (a PTY she opened, so hers) is taken: the daemon
    draws the session on it."""
    s = tachi_daemon.new(*SHELL)
    sid = s["id"]
    share(tachi_daemon, sid, "tachi-alice")
    shared = str(tachi_daemon.shared_socket)

    def alice() -> tuple[dict, bool]:
        master, terminal = os.openpty()
        assert os.fstat(terminal).st_uid == os.getuid()
        # The session's size: a terminal of another size gets its output back.
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        fd = os.open(os.ttyname(terminal), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        wire = WireConnection(shared, autostart=False)
        wire.call("session.attach", {"session": sid, "size": {"rows": 24, "cols": 80}})
        answers = ask_for_terminal(wire, fd)
        os.close(fd)
        wire.send_request("session.send", {"session": sid, "text": "echo MINE-$((6*7))\n"})
        seen = b""
        for _ in range(50):
            seen += read_available(master, 0.2)
            if b"MINE-42" in seen:
                break
        return answers, b"MINE-42" in seen

    answers, drawn = as_user("tachi-alice", alice)
    assert answers == {"descriptor": "accepted", "input": "accepted", "output": "accepted"}
    assert drawn, "the daemon writes the session's output on her terminal"
    assert not denials(tachi_daemon, sid)


def _daemon_fds(daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))


def test_descriptors_sent_in_bulk_or_unasked_are_closed(tachi_daemon):
    """A peer cannot make the daemon hold descriptors: one is kept per offer
    (the rest closed by the kernel), a wrong one is closed, and any sent
    without an offer never arrive."""
    s = tachi_daemon.new("cat")
    wire = WireConnection(tachi_daemon.socket, autostart=False)
    wire.call("session.attach", {"session": s["id"]})
    before = _daemon_fds(tachi_daemon)
    null = os.open(os.devnull, os.O_RDWR)
    many = array.array("i", [null] * 200).tobytes()
    try:
        for _ in range(20):
            wire.call("client.terminal", {"descriptor": "offer"})
            data = protocol.encode_control(
                {"id": 0, "op": "client.terminal", "args": {"descriptor": "sent"}}
            )
            wire.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, many)])
            # Unasked: the transport reads these, and the kernel closes them.
            wire.sock.sendmsg(
                [protocol.encode(protocol.STDIN, b"x")],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, many)],
            )
        with pytest.raises(TachiError, match="not a terminal"):
            wire.call("client.terminal", {"output": True, "handover": 1})
        assert until(lambda: _daemon_fds(tachi_daemon) <= before, timeout=5), (
            before,
            _daemon_fds(tachi_daemon),
        )
    finally:
        os.close(null)
        wire.close()
    tachi_daemon.run("send", s["id"], "still-here\n", check=True)
    wait_match(tachi_daemon, s["id"], "still-here")


def test_tachi_attach_still_hands_its_terminal_over(tachi_daemon):
    """The real client, in a real terminal: the daemon takes keys and output
    (its own descriptor of the terminal), and the shell gets its terminal back
    blocking, as it was."""
    s = tachi_daemon.new(*SHELL)
    argv = tachi_daemon.tachi_argv("attach", s["id"])
    check = (
        "import fcntl, os; print('FLAGS', 'nonblocking' if fcntl.fcntl(0, fcntl.F_GETFL)"
        " & os.O_NONBLOCK else 'blocking')"
    )
    script = " ".join(map(_quote, argv)) + f"; {_quote(argv[0])} -c {_quote(check)}"
    child = pexpect.spawn(
        "/bin/sh", ["-c", script], env=tachi_daemon.env, dimensions=(30, 100), timeout=15
    )
    child.expect(r"\$|#")

    def handed_over() -> bool:
        clients = json.loads(tachi_daemon.run("clients", s["id"], "--json", check=True).stdout)
        return bool(clients) and clients[0]["direct"]["input"] and clients[0]["direct"]["output"]

    assert until(handed_over)
    child.send("echo direct-$((20+22))\r")
    child.expect("direct-42")
    child.send(PREFIX + "d")
    child.expect("FLAGS (\\w+)")
    assert child.match.group(1) == b"blocking"
    child.expect(pexpect.EOF)
    assert not denials(tachi_daemon, s["id"])


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)
