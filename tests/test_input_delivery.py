"""Input is never dropped: pastes into an attached client and `tachi send` arrive
whole, in order, however slowly the program reads; a send that cannot be
accepted is refused before any of it is typed."""

from __future__ import annotations

import hashlib

import pexpect
import pytest

from helpers import get, spawn_attach, until
from tachi.errors import Conflict

PREFIX = "\x1c"


def _lines(total: int, tag: str) -> str:
    """``total`` bytes of numbered 99-character lines (each ends in a newline)."""
    out = []
    n = 0
    while sum(map(len, out)) < total:
        out.append(f"{tag}-{n:08d}-".ljust(99, "x") + "\n")
        n += 1
    return "".join(out)


def _file_when_complete(path, size: int) -> bytes:
    until(lambda: path.exists() and path.stat().st_size >= size, timeout=30)
    return path.read_bytes()


# 80 KB fits under the 256 KiB the daemon lets pile up for a program; 600 KB
# outruns it, so keystrokes that came in below the mark were applied as they
# arrived and the rest waited in the connection's loop. Nothing may be lost or
# overtake what came before it.
@pytest.mark.parametrize("size", [80 * 1024, 600 * 1024], ids=["80KB", "600KB"])
def test_a_paste_into_an_attached_session_arrives_whole_and_in_order(tachi_daemon, tmp_path, size):
    out = tmp_path / "pasted.txt"
    # A slow reader: the program takes input in small bites with pauses, so a
    # paste outruns it by far and the daemon must hold (not drop) the rest.
    reader = (
        "stty -echo; echo READY;"
        f" while IFS= read -r line; do printf '%s\\n' \"$line\"; done > {out}"
    )
    s = tachi_daemon.new("bash", "--norc", "--noprofile", "-c", reader)
    child = spawn_attach(tachi_daemon, s["id"])
    child.expect("READY")  # the client's terminal is in raw mode from here on
    paste = _lines(size, "paste")
    child.send(paste)
    data = _file_when_complete(out, len(paste))
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(paste.encode()).hexdigest()
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)


def test_send_delivers_80_kb_whole(tachi_daemon, tmp_path):
    out = tmp_path / "sent.txt"
    s = tachi_daemon.new("bash", "--norc", "--noprofile", "-c", f"stty -echo; cat > {out}")
    payload = _lines(80 * 1024, "send")
    result = tachi_daemon.run("send", s["id"], "--literal", payload)
    assert result.returncode == 0, result.stderr
    assert _file_when_complete(out, len(payload)) == payload.encode()


def test_a_send_past_the_input_limit_is_refused_whole(tachi_daemon):
    # A program that never reads, on a terminal in raw mode (in canonical mode
    # the kernel itself discards a line past 4 KiB): input piles up in the daemon.
    s = tachi_daemon.new("sh", "-c", "stty raw -echo; exec sleep 600")
    accepted = 0
    with tachi_daemon.client() as client:
        for _ in range(20):
            try:
                client.send(s["id"], "a" * 700_000)
            except Conflict as exc:
                assert "nothing of these 700000 bytes was sent" in str(exc)
                break
            accepted += 1
        else:
            raise AssertionError("a window took 14 MB of unread input")
    assert accepted >= 10  # the limit is generous (8 MiB), not a PTY-buffer-sized trap
    for _ in range(8):  # what is left below the limit is under 700 kB
        before = get(tachi_daemon, s["id"])["windows"][0]["inputPending"]
        result = tachi_daemon.run("send", s["id"], "--literal", "b" * 100_000)
        if result.returncode != 0:
            break
    assert result.returncode == 1, result.stderr  # not a usage error: retrying later is right
    assert "nothing of these 100000 bytes was sent" in result.stderr
    assert result.stderr.count("\n") == 1
    # Nothing of the refused sends was queued; the session lives on.
    session = get(tachi_daemon, s["id"])
    assert session["windows"][0]["inputPending"] == before
    assert session["state"] != "closed"
    tachi_daemon.run("close", s["id"], check=True)
