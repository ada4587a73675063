"""``session.run``: type a command into a session's shell, wait for it to finish,
and return its output and exit status.

Every run carries an id of its own. The typed line prints an OSC 133 start
mark (C) and an end mark (D, with the status) that both name that id, around
``eval`` of the command, quoted so that it is one line whatever it holds
(newlines, heredocs, TABs, a syntax error, a comment). So the boundaries never
depend on prompt hooks the user's configuration may replace, an earlier
command's end is never taken for this one's, and a shell that could not parse
the command still prints the end mark with its status (2 in bash).

Before typing, the run waits until a shell is in the window's foreground (the
PTY's foreground process group is a known shell): a command still running from
an earlier, timed-out run, or a REPL, is never sent keystrokes meant for the
shell. If none comes before the timeout, the run fails with ``busy`` (exit 125)
and names what is in front. A nested shell (``sh``, ``bash --norc``) is fine.

Output comes from the window's stream, not the screen, and is cleaned as it
arrives (escape sequences removed, ``\\n`` line ends). With ``stream`` the
caller gets it in ``run.output`` events as it comes (the PTY waits for a
caller that reads slower than the command writes, so nothing is dropped);
without, the reply holds it. ``maxOutput`` keeps the first and last halves and
marks what was left out. The daemon holds at most ``maxOutput`` bytes of it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import os
import re
import secrets
import termios
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tachi.core.shell_integration import shell_of
from tachi.core.window import BACKLOG_BYTES, WindowRuntime, strip_escapes
from tachi.daemon import limits
from tachi.daemon.ops import RequestContext, SessionRef, arg_float, arg_int, arg_str, operation
from tachi.errors import InvalidRequest, NotFound, TachiError, TimedOut, WindowBusy
from tachi.gotime import format_rfc3339, now_ns

if TYPE_CHECKING:
    from tachi.daemon.sharing import BoundStream

#: ``maxOutput`` for a reply that carries the output: it must fit one frame.
MAX_REPLY_OUTPUT = 256 * 1024
#: A reply's JSON stays below this (the frame limit is 1 MiB).
_REPLY_BUDGET = 900 * 1024
#: Unsent bytes on the caller's connection above which the window waits for it.
_STREAM_BUDGET = 1024 * 1024
#: Streamed output is sent once this old, or this large (see ``_Streamer``).
_GATHER_SECONDS = 0.01
_GATHER_BYTES = 64 * 1024
#: The longest incomplete line held back before it is cleaned and passed on.
_HOLD = 64 * 1024
#: Runs a window keeps for ``run wait``/``run output``/``run ls``; past it the
#: oldest finished one is dropped.
RUNS_PER_WINDOW = 16
#: Output a kept run holds: its first and last halves (the gap is marked).
RUN_KEEP = 256 * 1024
#: A shell continuously in front this long, with an earlier run not ended,
#: is idle at its prompt: that run no longer holds later ones back.
_SETTLE = 1.0
#: How long a process group in front other than the window's shell must stay
#: the same (pid and name) before a run is typed for it (see _wait_for_shell).
_NESTED_SETTLE = 0.05
#: After the window's process exits, how long output a grandchild still writes
#: may take to arrive before a run or a wait reports the end.
_EXIT_GRACE = 0.05
#: A command this long is typed only once the shell reads its terminal raw
#: (its line editor): between commands the terminal is canonical, and the
#: kernel keeps 4095 bytes of a line then, dropping the rest.
_CANONICAL_LINE = 3500
#: How long a long command waits for the line editor before it is typed anyway
#: (a shell with none, dash say, reads canonical lines all along).
_EDITOR_WAIT = 2.0
#: The commands tachi knows how to type a line for: (syntax, names).
_SYNTAX = {
    "fish": "fish",
    **dict.fromkeys(("bash", "zsh", "ksh", "ksh93", "mksh", "lksh", "busybox"), "ansi"),
    **dict.fromkeys(("sh", "dash", "ash", "yash", "posh", "oksh"), "posix"),
}
_LINE_START_CR = re.compile(rb"(?m)^\r+")
log = logging.getLogger("tachi.run")


def omitted_marker(count: int) -> str:
    """The line put where output was left out (``maxOutput``)."""
    return f"\n[tachi: {count} bytes of output omitted]\n"


# -- what to type ------------------------------------------------------------------
#: Plain words: nothing a shell quotes, expands, redirects or separates on.
_PLAIN_WORDS = re.compile(r"[A-Za-z0-9_./:=+,@%-]+(?: [A-Za-z0-9_./:=+,@%-]+)*")
#: Words that open or close a compound command (or ``time`` a pipeline): a
#: line that starts with one is left to ``eval``, whose syntax error ends the
#: run with a status instead of taking the end mark with it.
_KEYWORDS = frozenset(
    {
        *("if", "then", "else", "elif", "fi", "case", "esac", "for", "select", "while"),
        *("until", "do", "done", "in", "function", "time", "coproc", "foreach", "repeat", "end"),
    }
)


def _plain(command: str) -> bool:
    """Whether ``command`` is plain words, not starting with a keyword: typed
    as it is, it runs as ``eval`` of it would (bash, zsh)."""
    return (
        _PLAIN_WORDS.fullmatch(command) is not None and command.partition(" ")[0] not in _KEYWORDS
    )


def _quote_ansi(text: str) -> str:
    """``$'…'`` (bash, zsh, ksh): control characters as escapes, so the typed
    line is one line with no TAB (which would complete) or newline in it."""
    out = []
    for ch in text:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "$'" + "".join(out) + "'"


def _quote_posix(text: str) -> str:
    """Single quotes for a plain POSIX shell (no ``$'…'``): newlines stay, as
    continuation lines of one quoted word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _quote_fish(text: str) -> str:
    """fish: quoted runs joined with unquoted escapes for control characters."""
    out, run = [], []

    def close() -> None:
        if run:
            out.append("'" + "".join(run).replace("\\", "\\\\").replace("'", "\\'") + "'")
            run.clear()

    for ch in text:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            close()
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\x{ord(ch):02x}"))
        else:
            run.append(ch)
    close()
    return "".join(out) or "''"


def typed_line(command: str, syntax: str, ident: str, short: bool = False) -> str:
    """The line typed for ``command`` in a shell of ``syntax`` (``ansi``,
    ``posix``, ``fish``): start mark, ``eval`` of the quoted command, end mark
    with its status, both naming ``ident``. ``__tachi_id`` and ``__tachi_s``
    tell tachi's prompt hook about the run: when Ctrl-C (a child killed by
    SIGINT) makes the shell drop the rest of the line, the hook prints the end
    mark instead. A leading space keeps the line out of the history of shells
    that ignore such lines. ``short``: the shell has tachi's integration
    loaded, whose ``__tachi_b``/``__tachi_e`` print the marks (a shorter line
    on the screen, and one its history leaves out); a command of plain words
    (``ls -la /tmp``, ``make test``) is typed without ``eval`` and quotes."""
    if short:
        # As short as it can be: the shell reads a typed line a byte at a time
        # (a select and a read each, about 4 µs a byte).
        if syntax != "fish" and _plain(command):
            return f" __tachi_b {ident};{command};__tachi_e"
        if syntax == "fish":
            quoted = _quote_fish(command)
        else:
            # ``--`` only where the command would be read as eval's option.
            quoted = ("-- " if command.startswith("-") else "") + _quote_ansi(command)
        return f" __tachi_b {ident};eval {quoted};__tachi_e"
    if syntax == "fish":
        return (
            f" set -g __tachi_id {ident}; printf '\\e]133;C;%s\\a' {ident};"
            f" eval {_quote_fish(command)}; set -g __tachi_s $status;"
            f" printf '\\e]133;D;%s;%s\\a' $__tachi_s {ident}"
        )
    quoted = f"-- {_quote_ansi(command)}" if syntax == "ansi" else _quote_posix(command)
    return (
        f" __tachi_id={ident}; printf '\\033]133;C;%s\\007' {ident}; eval {quoted};"
        f" __tachi_s=$?; printf '\\033]133;D;%s;%s\\007' $__tachi_s {ident}"
    )


# -- what the output is ----------------------------------------------------------
class OutputLimit:
    """Passes output on (``emit``) up to ``limit`` bytes: the first half as it
    comes, the last half at the end, and one ``omitted`` call for the gap.
    Holds at most about ``limit`` bytes."""

    def __init__(
        self, limit: int | None, emit: Callable[[bytes], None], omitted: Callable[[int], None]
    ) -> None:
        self._emit = emit
        self._omitted = omitted
        self.limit = limit
        self._head_left = limit - limit // 2 if limit is not None else 0
        self._tail_cap = limit // 2 if limit is not None else 0
        self._tail = bytearray()
        self.total = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        if not data:
            return
        self.total += len(data)
        if self.limit is None:
            self._emit(data)
            return
        if self._head_left:
            head = data[: self._head_left]
            self._head_left -= len(head)
            self._emit(head)
            data = data[len(head) :]
        self._tail += data
        if len(self._tail) > 2 * self._tail_cap + _HOLD:
            self._trim()

    def _trim(self) -> None:
        extra = len(self._tail) - self._tail_cap
        if extra > 0:
            del self._tail[:extra]
            self.dropped += extra

    def finish(self) -> None:
        self._trim()
        if self.dropped:
            self._omitted(self.dropped)
        if self._tail:
            self._emit(bytes(self._tail))
            self._tail.clear()


#: A run's start and end marks (``typed_line``), whichever run they name.
_RUN_START = re.compile(rb"\x1b\]133;C;([^\x07\x1b;]*)(?:\x07|\x1b\\)")
_RUN_END = re.compile(rb"\x1b\]133;D;(-?\d{0,9});([^\x07\x1b;]*)(?:\x07|\x1b\\)")


def _mark_of(pattern: re.Pattern[bytes], buf: bytearray, ident: bytes) -> re.Match[bytes] | None:
    """The first mark of ``pattern`` in ``buf`` that names run ``ident`` (its
    last group)."""
    for m in pattern.finditer(buf):
        if m.group(pattern.groups) == ident:  # the id is the last group
            return m
    return None


class RunCapture:
    """Follows one run in a window's raw output: waits for its start mark, cleans
    what follows line by line into ``sink``, and stops at its end mark
    (``code``). Feed it every chunk; it never holds more than ``_HOLD`` bytes."""

    def __init__(
        self,
        ident: str,
        sink: Callable[[bytes], None],
        on_end: Callable[[int], None] | None = None,
    ) -> None:
        """``on_end(code)`` is called at the end mark, from inside ``feed``."""
        # One pattern for every run, the id compared after the match: a
        # pattern compiled per run cost more than the rest of the run's work
        # in the daemon (each id is new, so ``re``'s cache never hit).
        self._ident = ident.encode()
        self._sink = sink
        self._on_end = on_end
        self._buf = bytearray()
        self._started = False
        self._line_start = True
        self.code: int | None = None
        self.finished: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def feed(self, data: bytes) -> None:
        if self.code is not None:
            return
        self._buf += data
        if not self._started:
            m = _mark_of(_RUN_START, self._buf, self._ident)
            if m is None:
                # Keep what may be the first part of the mark.
                esc = self._buf.rfind(b"\x1b", max(0, len(self._buf) - 64))
                del self._buf[: esc if esc != -1 else len(self._buf)]
                return
            del self._buf[: m.end()]
            self._started = True
        m = _mark_of(_RUN_END, self._buf, self._ident)
        if m is not None:
            # (The match reads the buffer: take what it found before clearing it.)
            # No status: the prompt hook could not know it (a hook ran before it).
            self.code = int(m.group(1)) if m.group(1).lstrip(b"-") else -1
            self._clean(bytes(self._buf[: m.start()]))
            self._buf.clear()
            if not self.finished.done():
                self.finished.set_result(self.code)
            if self._on_end is not None:
                self._on_end(self.code)
            return
        cut = self._buf.rfind(b"\n") + 1
        if len(self._buf) - cut > _HOLD:
            # A long line: pass it on, but not an escape sequence (or the end
            # mark) that may still be arriving.
            esc = self._buf.rfind(b"\x1b", max(cut, len(self._buf) - 256))
            cut = esc if esc != -1 else len(self._buf)
        if cut:
            self._clean(bytes(self._buf[:cut]))
            del self._buf[:cut]

    def _clean(self, raw: bytes) -> None:
        """Text for programs: no escape sequences, ``\\n`` line ends, and no
        carriage return a shell sent to redraw at the start of a line."""
        if not raw:
            return
        text = strip_escapes(raw).replace(b"\r\n", b"\n")
        if self._line_start:
            text = text.lstrip(b"\r")
        text = _LINE_START_CR.sub(b"", text)
        self._line_start = raw.endswith(b"\n")
        if text:
            self._sink(text)


# -- who is in front ---------------------------------------------------------------
async def _until_line_editor(window: WindowRuntime, deadline: float | None) -> None:
    """Return once the window's terminal is not canonical (a shell's line
    editor reads it), after :data:`_EDITOR_WAIT`, or at ``deadline``. The
    shell prints a command's end mark before its prompt hooks run and its
    editor starts: a run right after another comes in between."""
    loop = asyncio.get_running_loop()
    until = loop.time() + _EDITOR_WAIT
    if deadline is not None:
        until = min(until, deadline)
    while _canonical(window) and window.exit_code is None and loop.time() < until:
        await asyncio.sleep(0.005)


def _canonical(window: WindowRuntime) -> bool:
    try:
        return bool(termios.tcgetattr(window.child.fd)[3] & termios.ICANON)
    except (OSError, termios.error):
        return False


def keys_unread(window: WindowRuntime, runs: dict[str, RunRecord]) -> bool:
    """Whether input reached the window after the shell last showed it had
    read it: neither a command started (mark C) and then a prompt (mark A),
    nor the end of the run whose line was the last input, came after it. (A
    prompt alone is not enough: the one drawn after the last command can come
    after the input, from a slow prompt hook, before the shell reads it.)"""
    typed_at = getattr(window.child, "_typed_at", 0.0)
    marks = window.marks
    if not typed_at or marks.prompt_at > marks.command_at > typed_at:
        return False
    last = next((r for r in reversed(list(runs.values())) if r.window is window), None)
    return not (last is not None and last.line_at == typed_at and last.done.done())


def integrated_in_front(window: WindowRuntime, pgid: int, runs: dict[str, RunRecord]) -> bool:
    """Whether the shell in front is the window's own, started with tachi's
    integration and not replaced since (``exec bash``): only that one has the
    functions of the short typed line. A nested shell is another process
    group; a replaced one has lost the argument or variable tachi gave it."""
    from tachi.core.shell_integration import RC_MARK

    pid = window.child.pid
    if pgid != pid or shell_of(window.command) is None:
        return False
    # Input typed since its last prompt may start another shell that reads
    # what is typed now (`send 'bash --norc\n'`, then a run).
    if keys_unread(window, runs):
        return False
    try:
        line = _read(f"/proc/{pid}/cmdline", once=True)
        argv = line.split(b"\0")
        name = os.path.basename(argv[0]).lstrip(b"-")
        if name == b"bash":
            # The rc file counts once, when the shell starts: a shell whose
            # command line is the same (the same pid, not replaced since) has
            # the functions still, whatever the file holds now.
            known = _BASH_INTEGRATED.get((pid, line))
            if known is None:
                i = argv.index(b"--rcfile")
                known = _read(argv[i + 1], len(RC_MARK)) == RC_MARK.encode()
                if len(_BASH_INTEGRATED) >= 256:
                    _BASH_INTEGRATED.clear()
                _BASH_INTEGRATED[pid, line] = known
            return known
        if name == b"zsh":
            return b"\0TACHI_USER_ZDOTDIR=" in b"\0" + _read(f"/proc/{pid}/environ")
        if name == b"fish":
            i = argv.index(b"--init-command")
            return b"__tachi_b" in argv[i + 1]
    except (OSError, ValueError, IndexError):
        pass
    return False


#: Whether bash (by pid and command line) started with tachi's rc file.
_BASH_INTEGRATED: dict[tuple[int, bytes], bool] = {}


def _read(path: str | bytes, limit: int = 1 << 20, *, once: bool = False) -> bytes:
    """Up to ``limit`` bytes of a file, with plain system calls: ``open()``
    costs nine of them a file (a run reads three), these three or four.
    ``once``: one read of up to 64 KiB, for a small /proc file the kernel
    hands out whole (``comm``, a shell's ``cmdline``): no read to see the end."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if once:
            return os.read(fd, min(limit, 1 << 16))
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(limit - size, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def foreground(window: WindowRuntime) -> tuple[str | None, str, int]:
    """(syntax, program name, pid) of the window's foreground process group:
    syntax is ``None`` unless it is a shell tachi can type a run for."""
    pgid = window.child.foreground_pgrp()
    try:
        name = _read(f"/proc/{pgid}/comm", once=True).decode(errors="replace").strip().lstrip("-")
    except OSError:
        name = "?"
    return _SYNTAX.get(name), name, pgid


async def _wait_for_shell(
    window: WindowRuntime, deadline: float | None, runs: dict[str, RunRecord]
) -> str:
    """The syntax of the shell in front, once one is (polled: a process
    group's change makes no output to wait on) and no earlier run in the
    window is still going. Raises ``WindowBusy``."""
    loop = asyncio.get_running_loop()
    pause = 0.005
    # A shell tachi integrated prints its first prompt mark once it reads
    # commands: typing before that shows the line twice (echoed, then redrawn).
    prompt_by = loop.time() + 5.0
    integrated = shell_of(window.command) is not None
    front_since: float | None = None
    nested: tuple[int, str] | None = None
    nested_since = 0.0
    while True:
        if window.exit_code is not None:
            raise NotFound(f"window {window.id} has exited")
        syntax, name, pid = foreground(window)
        now = loop.time()
        if pid != window.child.pid and (pid, name) != nested:
            nested, nested_since = (pid, name), now
        pending = [
            r for r in runs.values() if r.window is window and not r.done.done() and not r.overtaken
        ]
        if pending and syntax is not None:
            # An earlier run (detached, or timed out) has not ended: wait for
            # it, unless the shell sits at its prompt without its end mark.
            front_since = now if front_since is None else front_since
            if now - front_since >= _SETTLE and now - pending[-1].typed_at >= _SETTLE:
                for record in pending:
                    record.overtaken = True
                pending = []
        else:
            front_since = None
        ready = not integrated or window.marks.integrated or now >= prompt_by
        if ready and syntax is not None and integrated and pid == window.child.pid:
            # Keys typed since its last prompt may be a command that starts
            # another program (`bash --norc`): give the shell a moment to read
            # them, so the line is typed for whoever reads it.
            typed_at = getattr(window.child, "_typed_at", 0.0)
            if keys_unread(window, runs) and time.monotonic() - typed_at < _SETTLE:
                ready = False
        elif syntax is not None and pid != window.child.pid and now - nested_since < _NESTED_SETTLE:
            # Another group in front named as a shell may be the window
            # shell's own child between fork and exec (it took the terminal,
            # and is still called ``fish``): the line would be typed in fish's
            # syntax for the bash it becomes. It counts once it holds still.
            ready = False
        if syntax is not None and ready and not pending:
            return syntax
        if deadline is not None and now >= deadline:
            if pending:
                raise WindowBusy(
                    f"window {window.id} is busy: run {pending[-1].id}"
                    f" ({pending[-1].command!r}) is still running; the command was not typed"
                )
            if syntax is not None:
                return syntax  # the shell is there; its prompt hook may be gone
            raise WindowBusy(
                f"window {window.id} is busy: {name} (pid {pid}) is in the foreground,"
                " not a shell; the command was not typed"
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)


def _fit_reply(result: dict[str, Any]) -> None:
    """Cut the middle of ``result["output"]`` until the reply fits one frame
    (non-ASCII text takes up to 6 bytes a character in JSON)."""
    output: str = result["output"]
    while len(json.dumps(result)) > _REPLY_BUDGET:
        keep = len(output) * 3 // 8
        cut = output[keep : len(output) - keep]
        result["omitted"] += len(cut.encode(errors="surrogateescape"))
        output = output[:keep] + omitted_marker(result["omitted"]) + output[len(output) - keep :]
        result["output"] = output


# -- runs kept for later ------------------------------------------------------------
class RunRecord:
    """One run, from the moment it is typed until it ends or is evicted: what
    ``run wait``, ``run output`` and ``run ls`` read. Keeps the first and last
    halves of its output (:data:`RUN_KEEP` bytes at most) and hands every
    piece to its ``listeners`` (a caller waiting for it, followers)."""

    def __init__(self, ident: str, window: WindowRuntime, command: str) -> None:
        loop = asyncio.get_running_loop()
        self.id = ident
        self.window = window
        self.command = command
        self.started = now_ns()
        self.typed_at = loop.time()
        self.ended: int | None = None
        #: ``running``, ``finished`` (its end mark came) or ``exited`` (the
        #: window's process ended first: ``exit`` in the command).
        self.state = "running"
        self.code: int | None = None
        #: A later run found the shell idle at its prompt with no end mark from
        #: this one (Ctrl-C cut its line and the prompt hook is gone): it no
        #: longer holds later runs back, and still ends if its mark comes.
        self.overtaken = False
        self.listeners: list[Callable[[bytes], None]] = []
        self.total = 0
        self.dropped = 0
        self._head = bytearray()
        self._tail = bytearray()
        self.done: asyncio.Future[None] = loop.create_future()
        #: When its line was given to the PTY (``PtyChild._typed_at``).
        self.line_at = -1.0
        self.capture = RunCapture(ident, self._add, self._ended)
        self._exit_timer: asyncio.TimerHandle | None = None
        self._waiters: list[asyncio.Future[bool]] = []

    def _add(self, data: bytes) -> None:
        self.total += len(data)
        room = RUN_KEEP // 2 - len(self._head)
        if room > 0:
            self._head += data[:room]
            rest = data[room:]
        else:
            rest = data
        if rest:
            self._tail += rest
            if len(self._tail) > RUN_KEEP // 2 + _HOLD:
                extra = len(self._tail) - RUN_KEEP // 2
                del self._tail[:extra]
                self.dropped += extra
        for listener in list(self.listeners):
            listener(data)

    def kept(self) -> list[tuple[bytes, int]]:
        """The output kept so far, as (data, 0) pieces and (b"", N) for a gap
        of N bytes left out."""
        parts: list[tuple[bytes, int]] = [(bytes(self._head), 0)]
        if self.dropped:
            parts.append((b"", self.dropped))
        parts.append((bytes(self._tail), 0))
        return [p for p in parts if p[0] or p[1]]

    def start(self) -> None:
        """Follow the window's output (its end mark ends the run) and its
        process (``exit`` in the command ends the run too). Callbacks, not a
        task: a run costs the daemon no task switch to start or to end."""
        self.window.output_taps.append(self.capture.feed)
        if self.window.exit_code is not None:
            self._window_exited()
        else:
            self.window.exit_watchers.append(self._window_exited)

    def _window_exited(self) -> None:
        # Output a grandchild still writes may follow the exit: a moment for it.
        if self._exit_timer is None:
            self._exit_timer = asyncio.get_running_loop().call_later(_EXIT_GRACE, self._exit_ended)

    def _exit_ended(self) -> None:
        self._exit_timer = None
        if self.state == "running":
            # ``exit`` in the command ended the shell.
            self.state, self.code = "exited", self.window.exit_code
        self.stop()

    def _ended(self, code: int) -> None:
        """Its end mark came: it is done now. (Called from the window's output
        taps, so it leaves them on the next turn: removing a tap now would
        skip another.)"""
        self.state, self.code = "finished", code
        self.ended = now_ns()
        self._wake()
        asyncio.get_running_loop().call_soon(self.stop)

    def _wake(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(True)
        self._waiters.clear()

    async def wait(self, timeout: float | None) -> bool:
        """Whether it ended within ``timeout`` seconds (``None``: no limit).
        The caller resumes on the loop turn after the end (no chain of
        ``shield``/``wait_for`` futures); cancelling it leaves the run alone."""
        if self.done.done():
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, lambda: waiter.done() or waiter.set_result(False))
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def stop(self) -> None:
        """Stop following the window (ended, evicted, or the daemon stops)."""
        with contextlib.suppress(ValueError):
            self.window.output_taps.remove(self.capture.feed)
        with contextlib.suppress(ValueError):
            self.window.exit_watchers.remove(self._window_exited)
        if self._exit_timer is not None:
            self._exit_timer.cancel()
            self._exit_timer = None
        if self.ended is None:
            self.ended = now_ns()
        self._wake()

    def to_json(self) -> dict[str, Any]:
        end = self.ended if self.ended is not None else now_ns()
        return {
            "run": self.id,
            "window": self.window.id,
            "command": self.command,
            "state": self.state,
            "exitCode": self.code,
            "startedAt": format_rfc3339(self.started),
            "duration": end - self.started,
            "outputBytes": self.total,
        }


#: Runs by session, then by id (in the order they were typed).
_RUNS: weakref.WeakKeyDictionary[Any, dict[str, RunRecord]] = weakref.WeakKeyDictionary()


def runs_of(session: Any) -> dict[str, RunRecord]:
    """The runs a session keeps (oldest first)."""
    return _RUNS.setdefault(session, {})


def _keep(session: Any, record: RunRecord) -> None:
    """Register ``record``; past :data:`RUNS_PER_WINDOW` in its window, drop the
    oldest finished run (the oldest one if none finished)."""
    runs = runs_of(session)
    runs[record.id] = record
    mine = [r for r in runs.values() if r.window is record.window]
    while len(mine) > RUNS_PER_WINDOW:
        victim = next((r for r in mine if r.done.done()), mine[0])
        victim.stop()
        runs.pop(victim.id, None)
        mine.remove(victim)


def run_session(ctx: RequestContext, args: dict[str, Any]) -> SessionRef:
    """The session that keeps the run ``args["run"]`` (``args["session"]`` if
    given), for the dispatcher to resolve and authorise (``session.read``): one
    the caller may not see, or that is gone, is "no run", as a missing run is.
    Raises ``NotFound`` if no live session keeps it."""
    ident = arg_str(args, "run") or ""
    where = arg_str(args, "session", required=False)
    if where is None:
        where = next((s.id for s, runs in list(_RUNS.items()) if ident in runs), None)
    if where is None:
        raise _no_run(ident)
    return SessionRef(where, missing=_no_run(ident))


def find_run(ctx: RequestContext, args: dict[str, Any]) -> RunRecord:
    """The run ``args["run"]`` in the session the dispatcher authorised
    (:func:`run_session`): ``NotFound`` if that session does not keep it."""
    ident = arg_str(args, "run") or ""
    record = runs_of(ctx.session).get(ident)
    if record is None:
        raise _no_run(ident)
    return record


def _no_run(ident: str) -> NotFound:
    return NotFound(
        f"no run {ident!r} (see 'tachi run ls SESSION'; a session keeps the last"
        f" {RUNS_PER_WINDOW} runs of each window while it lives)"
    )


class _Streamer:
    """Sends a caller ``run.output`` events for one stream tag; while the
    caller's connection holds more than ``_STREAM_BUDGET`` unsent bytes the
    window waits (as a pipe would) rather than the daemon buffering.

    Output is gathered for up to ``_GATHER_SECONDS`` (or ``_GATHER_BYTES``)
    before it is sent: a short command's output then goes out with its reply,
    one wake-up of the caller instead of one per read of the PTY (each took a
    core from the shell and the daemon on a two-core machine).

    Without ``pace`` (a follower who may not type into the session), a caller
    this far behind never makes the window wait: what it is too far behind
    for is left out (an ``omitted`` event says how much) until it has read
    half of what waits for it. An observer must not be able to stop the
    session by not reading."""

    def __init__(
        self, ctx: RequestContext, window: WindowRuntime, stream: str | int, pace: bool = True
    ) -> None:
        self._ctx = ctx
        self._window = window
        self._stream = stream
        self._pace = pace
        self._behind = 0
        self._paused = False
        self._resumer: asyncio.Task[None] | None = None
        self._gathered = bytearray()
        self._flusher: asyncio.TimerHandle | None = None
        #: An event that goes before the first ``run.output`` (``run.started``).
        self.first: dict[str, Any] | None = None

    def announce(self) -> None:
        """Send :attr:`first` now, if it was not sent yet."""
        if self.first is not None:
            first, self.first = self.first, None
            self._ctx.connection.send(first)

    def send(self, message: dict[str, Any]) -> None:
        wire = self._ctx.connection.wire
        self.flush()
        self._ctx.connection.send({"event": "run.output", "stream": self._stream, **message})
        if self._pace and not self._paused and wire.buffered() > _STREAM_BUDGET:
            self._paused = True
            self._window.child.pause_reading(self)
            self._resumer = asyncio.get_running_loop().create_task(self._resume())

    def data(self, data: bytes) -> None:
        if not self._pace and self._left_behind(len(data)):
            return
        self._gathered += data
        if len(self._gathered) >= _GATHER_BYTES:
            self.flush()
        elif self._flusher is None:
            self._flusher = asyncio.get_running_loop().call_later(_GATHER_SECONDS, self.flush)

    def flush(self) -> None:
        """Send what was gathered (after :attr:`first`)."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self.announce()
        if self._gathered:
            data, self._gathered = bytes(self._gathered), bytearray()
            self.send({"data": base64.b64encode(data).decode()})

    def omitted(self, count: int) -> None:
        self.send({"omitted": count})

    def _left_behind(self, size: int) -> bool:
        """Whether ``size`` bytes are left out, the caller being too far behind."""
        buffered = self._ctx.connection.wire.buffered()
        if self._behind:
            if buffered > _STREAM_BUDGET // 2:
                self._behind += size
                return True
            count, self._behind = self._behind, 0
            self.omitted(count)
            return False
        if buffered > _STREAM_BUDGET:
            self._behind = size
            return True
        return False

    async def _resume(self) -> None:
        await limits.below(self._ctx.connection.wire, _STREAM_BUDGET // 2)
        self._paused = False
        self._window.child.resume_reading(self)

    def close(self) -> None:
        self.flush()
        if self._behind:
            count, self._behind = self._behind, 0
            self.omitted(count)
        if self._resumer is not None:
            self._resumer.cancel()
        if self._paused:
            self._paused = False
            self._window.child.resume_reading(self)


def _stream_arg(args: dict[str, Any]) -> str | int | None:
    stream = args.get("stream")
    if stream is not None and not isinstance(stream, str | int):
        raise InvalidRequest("argument 'stream' must be a string or an integer")
    return stream


@operation("session.run", action="session.write", session="session")
async def run(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """Type a command and wait for it (see the module). A caller whose access
    ends meanwhile (revoked, expired, rotated out) gets ``PermissionDenied``
    with the reason and no output read after that; the command runs on."""
    with ctx.sharing.bind(
        lambda: ctx.connection.principal, ctx.session.id, "session.write", {"stream": "session.run"}
    ) as bound:
        return await _run(ctx, args, bound)


async def _run(ctx: RequestContext, args: dict[str, Any], bound: BoundStream) -> dict[str, Any]:
    session = ctx.session
    ctx.connection.deny_if_read_only("running commands")
    window = session.mux.get(arg_int(args, "window"))
    command = arg_str(args, "command") or ""
    if not command.strip():
        raise InvalidRequest("command must not be empty")
    if "\0" in command:
        raise InvalidRequest("command must not contain NUL")
    timeout = arg_float(args, "timeout")
    stream = _stream_arg(args)
    detach = bool(args.get("detach"))
    limit = arg_int(args, "maxOutput")
    if limit is not None and limit < 0:
        raise InvalidRequest("argument 'maxOutput' must not be negative")
    if limit is None and stream is None:
        limit = MAX_REPLY_OUTPUT
    elif stream is None:
        limit = min(limit, MAX_REPLY_OUTPUT * 4) if limit is not None else limit
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    kept: list[bytes] = []
    streamer = None if stream is None else _Streamer(ctx, window, stream)

    def emit(data: bytes) -> None:
        if streamer is None:
            kept.append(data)
        else:
            streamer.data(data)

    def note_omitted(count: int) -> None:
        if streamer is None:
            kept.append(omitted_marker(count).encode())
        else:
            streamer.omitted(count)

    out = OutputLimit(limit, emit, note_omitted)
    async with window.run_lock:
        syntax = await _wait_for_shell(window, deadline, runs_of(session))
        ident = f"tachi-{secrets.token_hex(6)}"
        record = RunRecord(ident, window, command)
        if not detach:
            record.listeners.append(out.add)
            bound.stop = functools.partial(_unlisten, record, out.add)
        bound.what["run"] = ident
        if len(command) >= _CANONICAL_LINE:
            await _until_line_editor(window, deadline)
        short = integrated_in_front(window, window.child.foreground_pgrp(), runs_of(session))
        line = typed_line(command, syntax, ident, short)
        ctx.effects.admit_input(ctx.principal, session, len(command))
        session.write((line + "\r").encode(), window.id)
        # Followed and listed once typed, in the same step (its output can only
        # come in a later one): the shell starts reading meanwhile.
        record.start()
        _keep(session, record)
        record.line_at = getattr(window.child, "_typed_at", 0.0)
        # Saved once typed, in the same step (nothing is read in between, so
        # its marks still follow in the journal): the shell reads the line
        # while survival writes its row, instead of after (a run's time).
        for hook in RUN_KEPT:
            try:
                hook(session, window, record)
            except Exception:  # the line is typed: the run goes on unsaved
                log.exception("could not save run %s for survival", ident)
        ctx.effects.note_input(ctx.principal, session, command.encode())
    if streamer is not None:
        # Sent with the first output, or just before the reply: a client woken
        # for it while the command runs takes a core from the shell and the
        # daemon (two cores here: a short run's time went up by a tenth).
        started = {"event": "run.started", "stream": stream, "window": window.id, "run": ident}
        streamer.first = started
    audit = {"window": window.id, "command": command, "run": ident}
    if detach:
        if streamer is not None:
            streamer.announce()
        ctx.audit_by("session.run", session.id, details=audit)
        return record.to_json()
    try:
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        if not await record.wait(remaining):
            if streamer is not None:
                streamer.announce()  # its id, to collect it later (TimedOut.run)
            raise TimedOut(
                f"{command!r} did not finish within {timeout:g}s; it is still running in"
                f" window {window.id} of {session.id} as run {ident}"
                f" (collect it: tachi run wait {ident})"
            )
    finally:
        if streamer is not None:
            # Its last output and the reply, in one write (no await from here).
            ctx.connection.send_with_reply()
        _unlisten(record, out.add)
        if streamer is not None:
            streamer.close()
    out.finish()
    result = _result(record, b"".join(kept), out.dropped)
    if streamer is not None:
        streamer.flush()  # the kept tail (``maxOutput``), gathered as it ended
        result["streamed"] = True
    else:
        _fit_reply(result)
    _audit_after_reply(ctx, session.id, {**audit, "exitCode": record.code})
    return result


def _audit_after_reply(ctx: RequestContext, session_id: str, details: dict[str, Any]) -> None:
    """Record a finished run in the loop's next step, once its reply is written
    (the reply goes out in this step, when the operation returns; the next
    request of the caller is read after). The caller waits for its result, not
    for the record (about 40 µs of each run), and the run happened either way:
    a log that fails closed refuses input before it is typed
    (``admit_input``), and cannot take back a command that ran. A record that
    cannot be written is logged."""

    def write() -> None:
        try:
            ctx.audit_by("session.run", session_id, details=details)
        except TachiError:
            log.exception("could not audit run %s of %s", details.get("run"), session_id)

    asyncio.get_running_loop().call_soon(write)


def _unlisten(record: RunRecord, listener: Callable[[bytes], None]) -> None:
    """Stop handing ``record``'s output to ``listener`` (if it still is)."""
    with contextlib.suppress(ValueError):
        record.listeners.remove(listener)


def _bind(ctx: RequestContext, record: RunRecord, op: str) -> BoundStream:
    """``op``'s stream of ``record``, bound to the caller's ``session.read``."""
    return ctx.sharing.bind(
        lambda: ctx.connection.principal,
        ctx.session.id,
        "session.read",
        {"stream": op, "run": record.id},
    )


def _result(record: RunRecord, output: bytes, omitted: int) -> dict[str, Any]:
    """A run's reply: its summary, its output and what was left out of it."""
    result = record.to_json()
    result.update(
        output=output.decode(errors="replace"),
        exitCode=record.code if record.code is not None else -1,
        omitted=omitted,
    )
    return result


def _kept_output(record: RunRecord) -> tuple[bytes, int]:
    parts = [data or omitted_marker(count).encode() for data, count in record.kept()]
    return b"".join(parts), record.dropped


@operation("run.list", action="session.read", session="session")
async def run_list(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs the session keeps (oldest first), without their output."""
    session = ctx.session
    return [r.to_json() for r in runs_of(session).values()]


@operation("run.wait", action="session.read", target=run_session)
async def run_wait(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """Wait (up to ``timeout``) for a run to end; its result as ``session.run``
    gives it, with the output it kept (the first and last halves of
    :data:`RUN_KEEP`)."""
    record = find_run(ctx, args)
    timeout = arg_float(args, "timeout")
    try:
        # Its output is read at the end: a caller whose access ended by then
        # gets the reason instead.
        with _bind(ctx, record, "run.wait"):
            await asyncio.wait_for(asyncio.shield(record.done), timeout)
    except TimeoutError:
        raise TimedOut(
            f"run {record.id} ({record.command!r}) did not finish within {timeout:g}s;"
            " it is still running"
        ) from None
    result = _result(record, *_kept_output(record))
    _fit_reply(result)
    return result


@operation("run.output", action="session.read", target=run_session, may=("session.write",))
async def run_output(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """A run's output so far (the part it kept); with ``follow`` and ``stream``,
    sent as ``run.output`` events, then what it writes until it ends or
    ``timeout`` passes. The reply is the run's summary (``state`` says whether
    it ended)."""
    record = find_run(ctx, args)
    stream = _stream_arg(args)
    timeout = arg_float(args, "timeout")
    if stream is None:
        if args.get("follow"):
            raise InvalidRequest("'follow' needs 'stream' (the output comes as run.output events)")
        result = _result(record, *_kept_output(record))
        _fit_reply(result)
        return result
    # Only who may type into the session may make it wait (see _Streamer).
    streamer = _Streamer(ctx, record.window, stream, pace=ctx.may("session.write"))
    try:
        # Kept output and the listener are taken in one step: nothing is lost
        # or sent twice between them.
        for data, count in record.kept():
            streamer.data(data) if data else streamer.omitted(count)
        if args.get("follow") and not record.done.done():
            record.listeners.append(streamer.data)
            with _bind(ctx, record, "run.output") as bound:
                bound.stop = functools.partial(_unlisten, record, streamer.data)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(record.done), timeout)
    finally:
        _unlisten(record, streamer.data)
        streamer.close()
    result = record.to_json()
    result.update(streamed=True, omitted=record.dropped)
    return result


def _window_exit(window: WindowRuntime) -> tuple[asyncio.Future[None], Callable[[], None]]:
    """A future done a moment after the window's process has exited (for the
    last output a grandchild may still write), and what stops watching."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        if not exited.done():
            exited.set_result(None)

    def watcher() -> None:
        loop.call_later(_EXIT_GRACE, done)

    def stop() -> None:
        with contextlib.suppress(ValueError):
            window.exit_watchers.remove(watcher)

    if window.exit_code is not None:
        watcher()
    else:
        window.exit_watchers.append(watcher)
    return exited, stop


# -- waiting for new output ----------------------------------------------------------
#: Text a wait for new output holds (the most recent part of it).
_WAIT_TEXT = 1 << 20
#: How far back, before what just arrived, a wait looks for a match's start:
#: the longest match a wait finds is this plus the newest chunk.
WAIT_LOOKBACK = 16 * 1024
#: Pieces a wait's text is held in, at most (see WaitText.add).
_WAIT_CHUNKS = 64


class WaitText:
    """The text a wait has seen, searched as it grows: each chunk once, with
    the :data:`WAIT_LOOKBACK` characters before it (a match can only be new if
    it ends in the new chunk). Searching all of it again for every chunk cost
    a flood's whole length each read, for each waiter: an observer's waits
    could keep the daemon busy. ``searched`` counts the characters searched."""

    def __init__(self, regexes: list[Any]) -> None:
        self._regexes = regexes
        self._chunks: list[str] = []
        self._size = 0
        self.searched = 0

    @property
    def text(self) -> str:
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    def add(self, chunk: str) -> tuple[int, Any, int] | None:
        """Add ``chunk``; the earliest match that ends in it, the first pattern
        on a tie, as (pattern index, match, offset of the match's text in
        :attr:`text`), or ``None``."""
        before = self._size
        self._chunks.append(chunk)
        self._size += len(chunk)
        if len(self._chunks) > _WAIT_CHUNKS:
            # A program printing a character at a time makes a chunk of each:
            # the older ones become one string (a copy per _WAIT_CHUNKS reads),
            # so neither the objects held nor _tail's walk grow with them.
            self._chunks[:-1] = ["".join(self._chunks[:-1])]
        if self._size > _WAIT_TEXT:
            kept = self.text[-_WAIT_TEXT // 2 :]
            before -= self._size - len(kept)
            self._chunks, self._size = [kept], len(kept)
        start = max(0, before - WAIT_LOOKBACK)
        # One character more before the window, so ``^`` knows whether a line starts there.
        window = self._tail(self._size - start + (1 if start else 0))
        pos = 1 if start else 0
        self.searched += len(window) - pos
        best: tuple[int, Any] | None = None
        for index, regex in enumerate(self._regexes):
            m = regex.search(window, pos)
            if m is not None and (best is None or m.start() < best[1].start()):
                best = (index, m)
        if best is None:
            return None
        return best[0], best[1], self._size - len(window)

    def _tail(self, count: int) -> str:
        """The last ``count`` characters (joining only the chunks they span)."""
        taken: list[str] = []
        size = 0
        for chunk in reversed(self._chunks):
            taken.append(chunk)
            size += len(chunk)
            if size >= count:
                break
        joined = "".join(reversed(taken))
        return joined[len(joined) - count :] if size > count else joined


async def wait_output(
    window: WindowRuntime, patterns: list[str], since: int | None, timeout: float | None
) -> dict[str, Any]:
    """Wait until one of ``patterns`` matches the window's output after
    position ``since`` (``None``: from now), escape sequences removed; never the
    screen, so text already shown is not taken for new. Patterns run on RE2
    (linear time). The earliest match in the text wins, the first pattern on a
    tie (as pexpect). Returns ``{outcome: "match", index, pattern, matched,
    before, position}``, or ``{outcome: "eof" | "timeout", before, position}``;
    ``position`` is the window's output position once the match was read (pass
    it as ``since`` to go on from there)."""
    from tachi.core.patterns import compile_pattern

    if not patterns:
        raise InvalidRequest("give at least one pattern")
    regexes: list[Any] = [compile_pattern(p) for p in patterns]
    loop = asyncio.get_running_loop()
    found: asyncio.Future[tuple[int, Any, int]] = loop.create_future()
    seen = {"position": window.seq}
    text = WaitText(regexes)

    def feed(data: bytes) -> None:
        if found.done():
            return
        seen["position"] = window.seq
        # ``\n`` line ends, and no ``\r`` a shell redraws with at a line's
        # start: ``^`` then matches where a line starts on the screen.
        clean = strip_escapes(data).replace(b"\r\n", b"\n").replace(b"\n\r", b"\n")
        if clean and (best := text.add(clean.decode("utf-8", "replace"))) is not None:
            found.set_result(best)

    if since is not None:
        if since < 0 or since > window.seq:
            raise InvalidRequest(f"position {since} is not in window {window.id} (0-{window.seq})")
        backlog = window.backlog_since(since)
        if backlog is None:
            raise InvalidRequest(
                f"position {since} is no longer kept (window {window.id} keeps its last"
                f" 256 KiB of output; it is at {window.seq})"
            )
        feed(backlog)
        seen["position"] = window.seq
    if not found.done():
        window.output_taps.append(feed)
    exited, unwatch = _window_exit(window)
    try:
        await asyncio.wait([found, exited], timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        unwatch()
        exited.cancel()
        with contextlib.suppress(ValueError):
            window.output_taps.remove(feed)
    if found.done():
        index, m, offset = found.result()
        return {
            "outcome": "match",
            "index": index,
            "pattern": patterns[index],
            "matched": m.group(0),
            "before": text.text[: offset + m.start()],
            "position": seen["position"],
        }
    return {
        "outcome": "eof" if window.exit_code is not None else "timeout",
        "before": text.text,
        "position": seen["position"],
    }


# -- reading output since a position -------------------------------------------------
#: The most ``window.output`` returns in one reply.
MAX_READ = 512 * 1024


@operation("window.output", action="session.read", session="session")
async def window_output(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """A window's output after position ``since`` (default: the last
    ``maxBytes`` it kept), as text for programs: escape sequences removed,
    ``\\n`` line ends. ``position`` is where it ends (the next ``since``);
    ``start`` is the first position returned (later than ``since`` when that
    part is no longer kept: the window keeps its last 256 KiB, and at most
    ``maxBytes`` are returned, the newest)."""
    session = ctx.session
    window = session.mux.get(arg_int(args, "window"))
    since = arg_int(args, "since")
    limit = arg_int(args, "maxBytes")
    limit = MAX_READ if limit is None else max(0, min(limit, MAX_READ))
    end = window.seq
    if since is not None and (since < 0 or since > end):
        raise InvalidRequest(f"position {since} is not in window {window.id} (0-{end})")
    oldest = end - min(end, BACKLOG_BYTES)  # always kept
    start = max(since if since is not None else 0, oldest, end - limit)
    data = window.backlog_since(start) or b""
    text = strip_escapes(data).replace(b"\r\n", b"\n")
    text = _LINE_START_CR.sub(b"", text)
    return {
        "window": window.id,
        "output": text.decode("utf-8", "replace"),
        "start": start,
        "position": end,
        "skipped": start - since if since is not None else 0,
    }


# -- runs across a daemon restart (tachi.core.survival) ------------------------------
#: Told ``(session, window, record)`` as a run's line is typed, before the
#: daemon reads anything more: survival saves the run then, so a daemon killed
#: after that step leaves the next one the run (its marks follow in the output
#: journal). Killed within that step, the run is lost to ``run ls`` (never its
#: command: the shell has it).
RUN_KEPT: list[Callable[[Any, WindowRuntime, RunRecord], None]] = []


def saved_run(record: RunRecord) -> dict[str, Any]:
    """One run as JSON for survival (see :func:`saved_runs`)."""
    capture = record.capture
    return {
        "id": record.id,
        "command": record.command,
        "started": record.started,
        "ended": record.ended,
        "state": record.state,
        "code": record.code,
        "overtaken": record.overtaken,
        "total": record.total,
        "dropped": record.dropped,
        "head": base64.b64encode(record._head).decode(),
        "tail": base64.b64encode(record._tail).decode(),
        "markSeen": capture._started,
        "held": base64.b64encode(capture._buf).decode(),
        "lineStart": capture._line_start,
    }


def saved_runs(session: Any, window: WindowRuntime) -> list[dict[str, Any]]:
    """The runs ``session`` keeps for ``window``, as JSON for the window's
    survival snapshot: taken with its screen, at the same output offset, so the
    output journal replayed after it carries each run on from where it was."""
    return [saved_run(r) for r in runs_of(session).values() if r.window is window]


def restore_runs(session: Any, window: WindowRuntime, saved: list[dict[str, Any]]) -> None:
    """Keep again the runs :func:`saved_runs` saved for ``window`` (adopted by a
    new daemon): ended ones as they were, running ones following the window's
    output again (before any of it is read), so their end mark ends them and
    ``run wait`` reports their status and output."""
    loop = asyncio.get_running_loop()
    for item in saved:
        record = RunRecord(str(item["id"]), window, str(item["command"]))
        record.started = int(item["started"])
        record.typed_at = loop.time() - max(0, now_ns() - record.started) / 1e9
        record.overtaken = bool(item.get("overtaken"))
        record.total, record.dropped = int(item["total"]), int(item["dropped"])
        record._head = bytearray(base64.b64decode(item["head"]))
        record._tail = bytearray(base64.b64decode(item["tail"]))
        capture = record.capture
        capture._started = bool(item.get("markSeen"))
        capture._buf = bytearray(base64.b64decode(item.get("held") or ""))
        capture._line_start = bool(item.get("lineStart", True))
        if item["state"] == "running":
            record.start()
        else:
            record.state, record.code = str(item["state"]), item.get("code")
            record.ended = item.get("ended")
            capture.code = record.code if record.code is not None else -1
            record._wake()
        runs_of(session)[record.id] = record
