"""``tachi exec --pty``: stdin of any size reaches the command and comes back, and
the daemon keeps serving other sessions meanwhile.

Issue 33: one 256 KiB ``exec.stdin`` to ``cat`` on a PTY hung the whole daemon
for good (a blocking write to the PTY on the event loop, whose echo only that
loop reads).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from tachi.testing import DaemonProcess


class KeyEcho(threading.Thread):
    """Types a key into another session's ``cat`` every 0.1 s and times its echo."""

    def __init__(self, daemon: DaemonProcess, session_id: str) -> None:
        super().__init__(daemon=True)
        self._daemon, self._session = daemon, session_id
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failure: str | None = None

    def run(self) -> None:
        with self._daemon.client() as client, client.attach(self._session) as conn:
            n = 0
            while not self.stop.is_set():
                n += 1
                key = f"key{n}-".encode()
                started = time.monotonic()
                conn.write(key)
                try:
                    conn.read_until(key, timeout=10)
                except (TimeoutError, EOFError) as exc:
                    self.failure = f"key {n} never echoed: {exc}"
                    return
                self.latencies.append(time.monotonic() - started)
                self.stop.wait(0.1)


def _lines(size: int) -> bytes:
    """Printable numbered lines (a terminal in cooked mode takes lines)."""
    count = size // 8
    return b"".join(b"%07d\n" % i for i in range(count))


def _run_exec(daemon: DaemonProcess, source: Path, command: list[str]) -> bytes:
    """``tachi exec --pty -- COMMAND < source`` as a real CLI process, while
    another session's keys are typed and timed; returns what it printed."""
    other = daemon.new("cat")
    typing = KeyEcho(daemon, other["id"])
    typing.start()
    try:
        with source.open("rb") as stdin:
            done = subprocess.run(
                daemon.tachi_argv("exec", "--pty", "--", *command),
                env=daemon.env,
                stdin=stdin,
                capture_output=True,
                timeout=180,
            )
    finally:
        typing.stop.set()
        typing.join(15)
    assert done.returncode == 0, done.stderr
    assert typing.failure is None, typing.failure
    assert typing.latencies, "the other session was never typed into"
    assert max(typing.latencies) < 5, f"an echo took {max(typing.latencies):.1f} s"
    return done.stdout


@pytest.mark.timeout(240)
@pytest.mark.parametrize("size", [256 * 1024, 16 * 1024 * 1024], ids=["256KiB", "16MiB"])
def test_exec_pty_cat_gives_back_all_of_stdin_while_another_session_echoes_keys(
    tachi_daemon: DaemonProcess, tmp_path: Path, size: int
) -> None:
    data = _lines(size)
    source = tmp_path / "stdin"
    source.write_bytes(data)
    out = _run_exec(tachi_daemon, source, ["cat"])
    # The terminal echoes each line and cat prints it again, interleaved at any
    # byte. The kernel drops echoes it has no room for (n_tty's echo buffer),
    # so the echo is no exact copy; cat's is: all of it, in order, is in there.
    sent = data.replace(b"\n", b"\r\n")
    assert len(out) >= len(sent)
    assert out.endswith(sent[-10:])
    if size <= 1 << 20:  # byte by byte (the 16 MiB copy is checked exactly below)
        at = 0
        for byte in out:
            if at < len(sent) and byte == sent[at]:
                at += 1
        assert at == len(sent), f"byte {at} of {len(sent)} never came back"


@pytest.mark.timeout(240)
def test_exec_pty_returns_every_byte_in_order(tachi_daemon: DaemonProcess, tmp_path: Path) -> None:
    """16 MiB through ``tr``: its copy (letters) is told apart from the
    terminal's echo (digits), so it is checked byte for byte."""
    data = _lines(16 * 1024 * 1024)
    source = tmp_path / "stdin"
    source.write_bytes(data)
    out = _run_exec(tachi_daemon, source, ["tr", "0-9", "a-j"])
    letters = out.translate(None, b"0123456789\r\n")
    assert letters == data.translate(bytes.maketrans(b"0123456789", b"abcdefghij"), b"\n")
