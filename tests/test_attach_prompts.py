"""Keys in ``tachi attach`` taken as whole keys (issue 29's review): an arrow
typed into the rename prompt is neither text nor a cancel, and a prefix key
that the terminal sends as several bytes (a UTF-8 character, Alt-x) works; a
prefix that could never be recognised is refused when the config is read."""

from __future__ import annotations

import json
from pathlib import Path

import pexpect
import pytest

from helpers import SHELL, capture, spawn_attach, until
from tachi.cli.attach_keys import Command, KeyParser, PromptClosed, PromptEdited, Send
from tachi.cli.keys import parse_key

PREFIX = "\x1c"
LEFT = "\x1b[D"


def _windows(daemon, sid: str) -> list[dict]:
    return json.loads(daemon.run("window", "ls", sid, "--json", check=True).stdout)


def _config(daemon, text: str) -> None:
    Path(daemon.env["TACHI_HOME"], "config.toml").write_text(text)


# -- the rename prompt ---------------------------------------------------------------
def test_an_arrow_in_the_rename_prompt_is_not_typed_into_the_name(tachi_daemon):
    s = tachi_daemon.new(*SHELL, env="PS1=$ ")
    sid = s["id"]
    child = spawn_attach(tachi_daemon, sid)
    child.expect(r"\$ ")
    child.send(PREFIX + ",")
    child.expect("rename window: ")
    # One write per key, as a terminal sends them.
    for key in ("a", "b", LEFT, "c", "\x1bOD", "\r"):
        child.send(key)
    assert until(lambda: _windows(tachi_daemon, sid)[0]["name"] == "abc", timeout=10), _windows(
        tachi_daemon, sid
    )
    # Nothing of the arrows reached the program either.
    child.send("echo after-$((1+1))\r")
    child.expect("after-2")
    assert "[D" not in capture(tachi_daemon, sid) and "OD" not in capture(tachi_daemon, sid)
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)


def test_the_prompt_parser_takes_escape_sequences_whole():
    parser = KeyParser(b"\x1c")
    assert list(parser.feed(b"\x1c,")) == [Command(b",")]
    parser.open_prompt()
    assert list(parser.feed(b"x\x1b[Dy\x1b[5~")) == [
        PromptEdited("x"),
        PromptEdited("x"),
        PromptEdited("xy"),
        PromptEdited("xy"),
    ]
    # A lone Escape still cancels.
    assert list(parser.feed(b"\x1b")) == [PromptClosed(None)]


# -- prefixes of several bytes ---------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "keys"), [("§", "§"), ("M-a", "\x1ba")], ids=["utf8-character", "alt-key"]
)
def test_a_prefix_of_several_bytes_detaches(tachi_daemon, spec, keys):
    _config(tachi_daemon, f'prefix_key = "{spec}"\n')
    s = tachi_daemon.new(*SHELL, env="PS1=$ ")
    child = spawn_attach(tachi_daemon, s["id"])
    child.expect(r"\$ ")
    # Typed twice, the prefix reaches the program once.
    child.send(f"echo [{keys}{keys}]-$((3+4))\r")
    child.expect(r"-7")
    child.send(keys + "d")
    child.expect(r"\[detached from session")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    if spec == "§":
        assert "[§]-7" in capture(tachi_daemon, s["id"])


def test_the_prefix_is_matched_as_a_whole_sequence():
    parser = KeyParser(parse_key("M-a"))
    assert list(parser.feed(b"hi\x1bad")) == [Send(b"hi"), Command(b"d")]
    # Alt-b, an arrow and the prefix's first byte alone are keys for the program.
    assert list(parser.feed(b"\x1bb\x1b[A\x1b")) == [Send(b"\x1bb\x1b[A\x1b")]
    parser = KeyParser(parse_key("é"))
    # Prefix then space is a command; the prefix twice is the prefix, once.
    assert list(parser.feed("café éé é".encode())) == [
        Send(b"caf"),
        Command(b" "),
        Send("é ".encode()),
    ]
    assert parser.prefix_pending  # the last key was the prefix


@pytest.mark.parametrize("spec", ["C-[", "M-[", "M-O", "F1", "ab"])
def test_a_prefix_that_could_never_be_recognised_is_refused_at_config_load(tachi_daemon, spec):
    s = tachi_daemon.new(*SHELL)
    _config(tachi_daemon, f'prefix_key = "{spec}"\n')
    result = tachi_daemon.run("attach", s["id"])
    assert result.returncode == 2
    assert "prefix_key" in result.stderr and spec in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- a demotion, as the daemon says it ---------------------------------------------------
def _attach_in_a_pty_as_alice(socket: Path, sid: str, on_output, seconds: float) -> str:
    """Run ``tachi attach SID`` (this process's tachi, forked: tachi_alice cannot
    read the interpreter's files) on a new PTY of 30x100; ``on_output(text, pty)``
    is called with all output so far after each read and returns True once the
    scenario is done, then the client detaches. Returns everything it wrote."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import sys
    import termios
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the attach process
        status = 1
        try:
            os.environ.update(
                TACHI_SOCKET=str(socket), TACHI_CONFIG="/nonexistent/config.toml", TERM="xterm"
            )
            # pytest's captured streams, not the PTY: back to the real descriptors.
            sys.stdin = open(0, closefd=False)  # noqa: SIM115
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            sys.argv = ["tachi", "attach", sid]
            from tachi.cli.main import cli

            cli(prog_name="tachi")
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(status)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    out = b""
    deadline = time.monotonic() + seconds
    done = False
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not done and on_output(out.decode(errors="replace"), fd):
            done = True
            os.write(fd, PREFIX.encode() + b"d")
            deadline = min(deadline, time.monotonic() + 10)
    os.waitpid(pid, 0) if done else os.kill(pid, 9)
    return out.decode(errors="replace")


def test_a_demoted_client_stops_resizing_and_says_what_the_daemon_said(tachi_daemon):
    import threading
    import time

    # Imported before the fork: alice cannot read the interpreter's files.
    import tachi.cli.attach
    import tachi.cli.main
    import tachi.cli.session_cmds
    import tachi.config  # noqa: F401
    from helpers import audit_records, share
    from users import as_user, ensure_users

    ensure_users()
    s = tachi_daemon.new(*SHELL, env="PS1=$ ", rows=30, cols=100)
    sid = s["id"]
    collaborator = share(tachi_daemon, sid, "--role", "collaborator", "--user", "tachi-alice")
    share(tachi_daemon, sid, "--role", "observer", "--user", "tachi-alice")

    def owner() -> None:
        # Once alice has typed, her collaborator grant goes (the observer one stays).
        with tachi_daemon.client() as client:
            until(
                lambda: "typed-2" in client.call("session.capture", session=sid)["text"],
                timeout=20,
                interval=0.1,
            )
            client.call("share.revoke", session=sid, grant=collaborator["id"])

    step = {"typed": False, "resized_at": None}

    def scenario(text: str, fd: int) -> bool:
        import fcntl
        import os
        import struct
        import termios

        if not step["typed"] and "$ " in text:
            step["typed"] = True
            os.write(fd, b"echo typed-$((1+1))\r")
        if step["resized_at"] is None and "you are now observer" in text:
            # Her terminal shrinks: a read-only client has no size to give the session.
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 20, 70, 0, 0))
            step["resized_at"] = time.monotonic()
        return step["resized_at"] is not None and time.monotonic() - step["resized_at"] > 1.5

    thread = threading.Thread(target=owner, daemon=True)
    thread.start()
    shared = tachi_daemon.shared_socket
    shown = as_user(
        "tachi-alice", lambda: _attach_in_a_pty_as_alice(shared, sid, scenario, 40), timeout=60
    )
    thread.join(30)
    assert "you are now observer (read-only)" in shown, shown[-2000:]
    assert "[detached from session" in shown
    denied = [
        r
        for r in audit_records(tachi_daemon, "--session", sid)
        if r["action"] == "session.resize" and r.get("result") == "denied"
    ]
    assert denied == [], denied
