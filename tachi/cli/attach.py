"""Interactive attach: the local terminal in raw mode, bridged to a session.

The terminal is restored on every exit path (detach, session end, daemon gone,
SIGTERM, SIGHUP, an exception). After the prefix key (default ``C-\\``):
``d`` detach, ``c`` new window, ``n``/``p`` next/previous, ``0``-``9`` select,
``w`` list windows, ``,`` rename the window, the prefix again sends it through.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import termios
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tachi import protocol
from tachi.cli.copy_mode import CopyMode
from tachi.cli.keyseq import NAMES, keys, sequence_at
from tachi.client.endpoint import Endpoint
from tachi.client.wire import WireConnection
from tachi.errors import DaemonUnavailable, NotFound, TachiError, error_from_json


@dataclass
class AttachOutcome:
    """Why attach ended, and the status the CLI exits with."""

    status: int
    message: str


@dataclass
class _State:
    prefix_pending: bool = False
    prompt: bytearray | None = None
    ended: AttachOutcome | None = None
    redraw_at: float | None = None
    #: When to repaint the unused area (programs erase to the terminal's edge).
    unused_at: float | None = None
    #: When to offer the daemon the output again (once it has been quiet).
    hand_over_at: float | None = None
    pending_requests: dict[int, str] = field(default_factory=dict)
    closed: dict[str, Any] | None = None


def terminal_size(fd: int) -> tuple[int, int, int, int]:
    """(rows, cols, xpixel, ypixel) of the terminal on ``fd``."""
    packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    rows, cols, xpix, ypix = struct.unpack("HHHH", packed)
    return rows or 24, cols or 80, xpix, ypix


def attach(
    endpoint: Path | Endpoint,
    session: str,
    *,
    token: str | None,
    read_only: bool,
    window: int | None,
    prefix: bytes,
    detach_others: bool = False,
) -> AttachOutcome:
    """Attach the controlling terminal to ``session`` until detach or the end."""
    in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    wire = WireConnection(endpoint, token=token, autostart=False)
    if not os.isatty(in_fd):
        wire.call("session.get", {"session": session})  # a missing session is the better error
        raise TachiError("attach needs a terminal on stdin (use 'tachi send'/'capture' in scripts)")
    rows, cols, xpix, ypix = terminal_size(in_fd)
    result = wire.call(
        "session.attach",
        {
            "session": session,
            "readOnly": read_only,
            "window": window,
            "size": {"rows": rows, "cols": cols, "xPixel": xpix, "yPixel": ypix},
            "detachOthers": detach_others,
        },
    )
    bridge = _Bridge(wire, in_fd, out_fd, prefix, read_only=bool(result.get("readOnly")))
    bridge.session_id = str(result["id"])
    # Messages name the session as the user knows it (as tmux does): its name if it has one.
    bridge.session_label = str(result.get("name") or result["id"])
    bridge.direct = _may_hand_over(endpoint, in_fd, out_fd) and _hand_over_terminal(wire, in_fd)
    if isinstance(endpoint, Endpoint) and endpoint.remote:

        def reopen(position: tuple[int, int] | None) -> WireConnection:
            fresh = WireConnection(
                endpoint, token=os.environ.get("TACHI_TOKEN") or token, autostart=False
            )
            rows, cols, xpix, ypix = terminal_size(in_fd)
            resume = {"window": position[0], "seq": position[1]} if position else None
            fresh.call(
                "session.attach",
                {
                    "session": bridge.session_id,
                    "readOnly": read_only,
                    "size": {"rows": rows, "cols": cols, "xPixel": xpix, "yPixel": ypix},
                    "resume": resume,
                },
            )
            return fresh

        bridge.reopen = reopen
    else:
        local = endpoint if isinstance(endpoint, Path) else endpoint.socket
        may_hand_over = bridge.direct

        def reopen_local(position: tuple[int, int] | None, autostart: bool) -> WireConnection:
            # A daemon that restarted (or was started after a crash) adopted the
            # session from the keeper: its output offsets start again from its
            # last snapshot, so resuming by offset could skip output; it redraws.
            fresh = WireConnection(local, token=token, autostart=autostart)
            rows, cols, xpix, ypix = terminal_size(in_fd)
            args: dict[str, Any] = {
                "session": bridge.session_id,
                "readOnly": read_only,
                "size": {"rows": rows, "cols": cols, "xPixel": xpix, "yPixel": ypix},
            }
            if position is not None and not bridge.read_only:
                args["window"] = position[0]  # the window this terminal showed
            try:
                fresh.call("session.attach", args)
            except NotFound:
                if "window" not in args:
                    raise
                del args["window"]  # that window ended meanwhile: the session's active one
                fresh.call("session.attach", args)
            if may_hand_over:
                bridge.direct = _hand_over_terminal(fresh, in_fd)
            return fresh

        bridge.reopen_local = reopen_local
        bridge.local_socket = local
    return bridge.run()


def _may_hand_over(endpoint: Path | Endpoint, in_fd: int, out_fd: int) -> bool:
    """Whether to offer the daemon this terminal (``client.terminal``): a daemon
    on this host's Unix socket, stdin and stdout the same terminal, and not
    turned off with ``TACHI_DIRECT=0``."""
    if os.environ.get("TACHI_DIRECT", "1") == "0":
        return False
    if isinstance(endpoint, Endpoint) and endpoint.remote:
        return False
    try:
        return os.isatty(out_fd) and os.fstat(in_fd).st_rdev == os.fstat(out_fd).st_rdev
    except OSError:
        return False


def _hand_over_terminal(wire: WireConnection, in_fd: int) -> bool:
    """Send the daemon this terminal (``client.terminal``'s descriptor step):
    opened anew by this process, so it is a terminal this user may open, in a
    non-blocking file description of its own (the shell's stays as it is).
    Returns whether the daemon took it; if not, attach draws everything itself."""
    if getattr(wire.sock, "family", None) != socket.AF_UNIX:
        return False
    flags = os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(f"/proc/self/fd/{in_fd}", flags)
    except OSError:
        return False
    try:
        ready = wire.call("client.terminal", {"descriptor": "offer"}) or {}
        if ready.get("descriptor") != "ready":
            return False
        wire.call("client.terminal", {"descriptor": "sent"}, descriptor=fd)
    except TachiError:
        return False
    finally:
        os.close(fd)
    return True


#: After a flood, the output goes back to the daemon once it has paused this long.
OUTPUT_QUIET = 0.25
#: How long to wait for the daemon to hand the terminal back before drawing anyway.
HAND_BACK_TIMEOUT = 2.0
#: How long an attach keeps trying to reconnect after a drop (a remote daemon's
#: network, or a local daemon that crashed or restarts while a keeper holds the session).
RECONNECT_SECONDS = 30.0
#: A local daemon that has not come back this long after a drop is started by
#: attach itself (as any command would). Not at once: ``tachi daemon restart``
#: (or systemd) starts the next one, with its listeners, within about a second.
AUTOSTART_AFTER = 3.0


#: Sent on the way out: every mode a program may have set in the terminal, back
#: to its default (alternate screen, scroll region, cursor and keypad keys,
#: mouse reporting, focus events, bracketed paste, the kitty keyboard stack,
#: cursor visibility and shape, origin mode, autowrap, insert mode, charset, SGR).
RESTORE_TERMINAL = (
    b"\x1b[?1049l\x1b[r\x1b[?1l\x1b>"
    b"\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1005l\x1b[?1006l\x1b[?1015l"
    b"\x1b[?1004l\x1b[?2004l\x1b[<99u"
    b"\x1b[?25h\x1b[0 q\x1b[?6l\x1b[?7h\x1b[4l\x1b(B\x1b[0m"
)
#: What fills the part of a larger terminal that the session does not use.
UNUSED = "·"
#: Output may erase the unused area (erase-line reaches the terminal's edge): it
#: is repainted this long after output, at most that often.
UNUSED_REPAINT_DELAY = 0.05


class _Bridge:
    def __init__(
        self, wire: WireConnection, in_fd: int, out_fd: int, prefix: bytes, *, read_only: bool
    ) -> None:
        self.wire = wire
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.prefix = prefix
        self.read_only = read_only
        self.session_id = ""
        self.session_label = ""
        self.state = _State()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._signals: list[int] = []
        #: Set for a remote daemon: reconnects and resumes after a network drop.
        self.reopen: Any = None
        #: Set for a local daemon: attaches again to the daemon that adopts the
        #: session after a crash or restart, ``(position, autostart)``.
        self.reopen_local: Any = None
        self.local_socket: Path | None = None
        #: The window and output offset the terminal shows, for resuming.
        self.position: tuple[int, int] | None = None
        #: Copy mode, while it is up (session output is then not drawn).
        self.copy: CopyMode | None = None
        self._copy_keys: list[str] = []
        #: The session's size (rows, cols), to draw what lies outside it.
        self.session_size: tuple[int, int] | None = None
        #: The terminal's (rows, cols, xpixel, ypixel), read again at each SIGWINCH:
        #: output asks whether the session leaves part of it unused.
        self.term_size = terminal_size(in_fd)
        #: Whether to hand the terminal to the daemon when nothing here needs it
        #: (see tachi.daemon.direct_terminal): then keystrokes and output do not
        #: pass through this process at all.
        self.direct = False
        self.owns_input = True
        self.owns_output = True
        #: The window and output offset of the last screen drawn (by either side).
        self.screen_at: tuple[int, int] | None = None
        #: Hand-overs of the output so far: the daemon's ``terminal`` event names
        #: the one it answers.
        self.handover = 0
        #: After the daemon handed the output back on its own (the session became
        #: smaller than this terminal), wait for the next screen before offering it.
        self._hold_off = False
        #: When session output was last written here.
        self._output_at = 0.0

    # -- lifecycle ------------------------------------------------------------
    def run(self) -> AttachOutcome:
        saved = termios.tcgetattr(self.in_fd)
        previous = {
            sig: signal.getsignal(sig)
            for sig in (signal.SIGWINCH, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
        }
        for sig in previous:
            signal.signal(sig, self._on_signal)
        try:
            # TCSANOW: keys typed while attach was starting are kept, not flushed.
            tty.setraw(self.in_fd, termios.TCSANOW)
            while True:
                try:
                    self._loop()
                    break
                except DaemonUnavailable as exc:
                    if not self._reconnect(exc):
                        if self.state.ended is None:
                            self.state.ended = AttachOutcome(1, f"lost the daemon: {exc}")
                        break
        finally:
            self._reclaim_terminal()
            termios.tcsetattr(self.in_fd, termios.TCSAFLUSH, saved)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            # Give the terminal back as it was, whatever the program set, with the
            # cursor on a fresh line below what it shows.
            rows = terminal_size(self.in_fd)[0]
            self._write(RESTORE_TERMINAL + f"\x1b[{rows};1H\r\n".encode())
            self.wire.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        assert self.state.ended is not None
        return self.state.ended

    def _reconnect(self, exc: DaemonUnavailable) -> bool:
        """After a drop, reconnect (for up to RECONNECT_SECONDS) and attach again:
        a remote daemon resumes from the last output offset (the missing output
        if it still has it, else the current screen); a local daemon that
        restarted or crashed, while a session keeper held the session, redraws
        it. Returns False if it could not (``state.ended`` then says why)."""
        if self.reopen is None and self.reopen_local is None:
            return False
        if self.reopen is None:
            from tachi.core.keeper_link import keeper_alive

            if not keeper_alive(self.local_socket):
                return False  # nothing keeps the session: it ended with the daemon
        # The daemon held the terminal (direct mode) and is gone: it is ours again.
        self.owns_input = self.owns_output = True
        self.direct = False
        self.state.pending_requests.clear()
        self._flash(f"tachi: connection lost ({exc}); reconnecting…")
        began = time.monotonic()
        deadline = began + RECONNECT_SECONDS
        delay = 0.1
        while time.monotonic() < deadline and not self._signals:
            try:
                if self.reopen is not None:
                    fresh = self.reopen(self.position)
                else:
                    autostart = time.monotonic() - began >= AUTOSTART_AFTER
                    fresh = self.reopen_local(self.position, autostart)
            except DaemonUnavailable:
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except TachiError as refused:  # the session ended, or access went away
                self.state.ended = AttachOutcome(1, f"could not resume: {refused}")
                return True
            self.wire.close()
            self.wire = fresh
            self._flash("tachi: reconnected")
            return True
        if not self._signals:
            self.state.ended = AttachOutcome(
                1, f"lost the daemon: {exc}; no daemon came back within {RECONNECT_SECONDS:g} s"
            )
        return False

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    def _loop(self) -> None:
        # Every keystroke and every echo passes through here: the descriptors are
        # looked up once per connection, timers only looked at when set.
        state, in_fd, sock, wake = self.state, self.in_fd, self.wire.fileno(), self._wake_r
        with_terminal, without = [in_fd, sock, wake], [sock, wake]
        while state.ended is None:
            if self.wire.pending:
                self._drain_pending()
                if state.ended is not None:
                    break
            if self.direct and (self.owns_input or self.owns_output):
                self._hand_over()
            watched = with_terminal if self.owns_input else without
            timeout = None
            if state.redraw_at or state.unused_at or state.hand_over_at:
                due = min(t for t in (state.redraw_at, state.unused_at, state.hand_over_at) if t)
                timeout = max(0.0, due - time.monotonic())
            try:
                ready = select.select(watched, [], [], timeout)[0]
            except InterruptedError:
                ready = []
            if wake in ready:
                os.read(wake, 64)
            if self._signals:
                self._handle_signals()
            if timeout is not None:
                self._timers()
            if sock in ready:
                self._from_daemon()
            if in_fd in ready and state.ended is None and self.owns_input:
                self._from_terminal()

    # -- the terminal handed to the daemon --------------------------------------------
    def _hand_over(self) -> None:
        """Give the daemon whichever direction nothing here needs now: the keys
        while no prefix command, prompt or copy mode is under way; the output
        while this process draws nothing of its own either."""
        state = self.state
        if self.copy is not None or state.prompt is not None or state.prefix_pending:
            return
        if state.pending_requests or self.session_size is None:
            return  # a reply to wait for, or the first screen not drawn yet
        if self.owns_input and not self.read_only and len(self.prefix) <= 1:
            self.owns_input = False
            prefix = self.prefix.decode("latin-1")
            self._request_quietly("client.terminal", input=True, prefix=prefix)
        if (
            self.owns_output
            and not self._hold_off
            and state.redraw_at is None
            and state.unused_at is None
            and self.session_size == self.term_size[:2]
        ):
            # Not during a flood: this process writes that faster (see
            # AttachedClient.send_output); wait until the output pauses.
            quiet_at = self._output_at + OUTPUT_QUIET
            if time.monotonic() < quiet_at:
                state.hand_over_at = quiet_at
                return
            state.hand_over_at = None
            self.owns_output = False
            self.handover += 1
            self._request_quietly("client.terminal", output=True, handover=self.handover)

    def _request_quietly(self, op: str, **args: Any) -> None:
        request_id = self.wire.send_request(op, args)
        self.state.pending_requests[request_id] = op

    def _take_output(self, *, keys: bool = False) -> None:
        """Get the output (with ``keys``, the keyboard too) back from the daemon
        before drawing anything here: ask, then wait (bounded) for the ``terminal``
        event, which comes once the daemon's last write has reached the terminal.
        Output the daemon framed before it took the terminal is dropped: its
        screen showed it."""
        later: list[protocol.Frame] = []
        deadline = time.monotonic() + HAND_BACK_TIMEOUT
        args: dict[str, Any] = {"output": False, "handover": self.handover}
        if keys:
            args["input"] = False
            self.owns_input = True
        try:
            self.wire.send_request("client.terminal", args)
            while (left := deadline - time.monotonic()) > 0:
                frame = self.wire.next_frame(left)
                if frame is None:
                    break
                if frame.channel != protocol.CONTROL:
                    continue
                message = json.loads(frame.payload)
                if self._terminal_event(message):
                    if message.get("output") is False and message.get("handover") == self.handover:
                        break
                elif message.get("event") == "screen":
                    self._screen_state(message)  # drawn by the daemon
                else:
                    later.append(frame)
        except DaemonUnavailable:
            pass  # nobody else writes to the terminal now
        finally:
            self.owns_output = True
            self.wire.pending.extendleft(reversed(later))
            # What the daemon held while it handed back follows the event,
            # often in the same read.
            self.wire.keep_buffered()

    def _terminal_event(self, message: dict[str, Any]) -> bool:
        """Apply a ``terminal`` event (a direction handed back); False if it is not one."""
        if message.get("event") != "terminal":
            return False
        if message.get("output") is False and message.get("handover") == self.handover:
            if not self.owns_output and message.get("reason") == "size":
                self._hold_off = True  # until a screen at this terminal's size
            self.owns_output = True
            self._output_at = time.monotonic()
        if message.get("input") is False:
            self.owns_input = True
            keys = str(message.get("keys") or "").encode("latin-1")
            if keys:
                self._keys(keys)
        return True

    def _reclaim_terminal(self) -> None:
        """On the way out: the daemon stops reading and writing the terminal
        before it is given back to the shell."""
        if self.direct and not (self.owns_input and self.owns_output):
            with contextlib.suppress(OSError):
                self._take_output(keys=True)

    def _timers(self) -> None:
        now = time.monotonic()
        if self.state.redraw_at is not None and now >= self.state.redraw_at:
            self.state.redraw_at = None
            self.wire.send_request("client.redraw", {})
        if self.state.unused_at is not None and now >= self.state.unused_at:
            self.state.unused_at = None
            if self.copy is None:
                self._draw_unused()

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGWINCH:
                self.term_size = terminal_size(self.in_fd)
                if self.read_only and not self.owns_output:
                    # The session keeps its size: what lies outside it is drawn here.
                    self._take_output()
                    self.wire.send_request("client.redraw", {})
                if not self.read_only:
                    rows, cols, xpix, ypix = self.term_size
                    self.wire.send_request(
                        "client.resize",
                        {"rows": rows, "cols": cols, "xPixel": xpix, "yPixel": ypix},
                    )
            else:
                name = signal.Signals(sig).name
                self.state.ended = AttachOutcome(
                    128 + sig, f"detached from session {self.session_label} ({name})"
                )

    # -- daemon → terminal -------------------------------------------------------------
    def _drain_pending(self) -> None:
        frames = list(self.wire.pending)
        self.wire.pending.clear()
        self._apply_all(frames)

    def _from_daemon(self) -> None:
        # Everything the socket holds, before the next select().
        self._apply_all(self.wire.recv_ready())

    def _apply_all(self, frames: list[protocol.Frame]) -> None:
        """Apply frames in order; output frames in a row reach the terminal in one
        write (a flood arrives as one frame per PTY callback)."""
        out: list[bytes] = []
        for frame in frames:
            if self.state.ended is not None:
                break
            if frame.channel == protocol.STDOUT:
                window, seq, data = protocol.decode_output(frame.payload)
                self.position = (window, seq + len(data))
                if self.copy is None and self.owns_output and not self._shown(window, seq):
                    out.append(data)
                continue
            self._output(out)
            self._apply(frame)
        self._output(out)

    def _output(self, out: list[bytes]) -> None:
        """Write (and clear) session output gathered by ``_from_daemon``."""
        if not out:
            return
        self._output_at = time.monotonic()
        self._write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        if self.state.unused_at is None and self._smaller:
            self.state.unused_at = time.monotonic() + UNUSED_REPAINT_DELAY

    def _apply(self, frame: protocol.Frame) -> None:
        """Apply one control frame (output goes through :meth:`_apply_all`)."""
        message = json.loads(frame.payload)
        event = message.get("event")
        if event == "screen":
            self._screen_state(message)
            if message.get("drawn"):
                return  # by the daemon, on the terminal it was handed
            self._hold_off = False
            if self.copy is None and self.owns_output:
                self._write(self._region() + str(message["data"]).encode())
                self._draw_unused()
        elif event == "terminal":
            self._terminal_event(message)
        elif event == "resized":
            # A screen event follows, drawn at the new size.
            self.session_size = (int(message["rows"]), int(message["cols"]))
        elif event == "notice":
            self._flash(str(message.get("message", "")))
        elif event == "closed":
            self.state.closed = message
        elif event == "detached":
            self.state.ended = self._outcome_for(message)
        elif event == "token":
            os.environ["TACHI_TOKEN"] = str(message.get("token"))
        elif self.state.pending_requests.get(message.get("id")) == "client.terminal":
            del self.state.pending_requests[message["id"]]
            if not message.get("ok") and self.direct:
                # This daemon will not take the terminal (a transport that cannot,
                # an older daemon): keep it, stop asking, and redraw, since output
                # that came while this process waited for the daemon to take it
                # was not drawn.
                self.direct = False
                self.owns_input = self.owns_output = True
                self.wire.send_request("client.redraw", {})
        elif event == "error" or ("id" in message and not message.get("ok")):
            self._flash("tachi: " + str(error_from_json(message.get("error") or {})))
        elif "id" in message and message.get("ok"):
            what = self.state.pending_requests.pop(message["id"], None)
            if what == "session.capture":
                self._enter_copy_mode(message["result"])
            elif what == "window.list":
                names = " ".join(
                    f"{w['id']}:{w['name']}{'*' if w['active'] else ''}" for w in message["result"]
                )
                self._flash(names)

    def _shown(self, window: int, seq: int) -> bool:
        """Whether output at ``seq`` is already in the last screen: output the
        daemon framed before it took the terminal may still be on its way when
        the terminal comes back, after the screen the daemon drew."""
        if not self.direct or self.screen_at is None:
            return False
        return window != self.screen_at[0] or seq < self.screen_at[1]

    def _screen_state(self, message: dict[str, Any]) -> None:
        if "window" in message and "seq" in message:
            self.position = (int(message["window"]), int(message["seq"]))
            self.screen_at = self.position
        if "rows" in message and "cols" in message:
            self.session_size = (int(message["rows"]), int(message["cols"]))

    def _outcome_for(self, detached: dict[str, Any]) -> AttachOutcome:
        closed = self.state.closed
        if closed is not None:
            code = closed.get("exitCode")
            reason = closed.get("reason")
            if reason == "exit":
                return AttachOutcome(
                    int(code or 0), f"session {self.session_label} exited with code {code}"
                )
            return AttachOutcome(1, f"session {self.session_label} closed ({reason})")
        return AttachOutcome(
            0, str(detached.get("message") or f"detached from session {self.session_label}")
        )

    # -- what lies outside a smaller session ------------------------------------
    def _region(self) -> bytes:
        """Scrolling confined to the session's rows, when the terminal has more."""
        if self.session_size is None:
            return b""
        rows = self.term_size[0]
        srows = self.session_size[0]
        return f"\x1b[1;{srows}r".encode() if srows < rows else b"\x1b[r"

    @property
    def _smaller(self) -> bool:
        """Whether the session leaves part of this terminal unused."""
        if self.session_size is None:
            return False
        rows, cols, _, _ = self.term_size
        return self.session_size[0] < rows or self.session_size[1] < cols

    def _draw_unused(self) -> None:
        """Fill the part of a larger terminal the session does not use with dots,
        as tmux does, so nothing stale shows there."""
        if self.session_size is None:
            return
        rows, cols, _, _ = self.term_size
        srows, scols = self.session_size
        if srows >= rows and scols >= cols:
            return
        out = ["\x1b7\x1b[0;2m"]
        if scols < cols:
            for r in range(1, min(srows, rows) + 1):
                out.append(f"\x1b[{r};{scols + 1}H" + UNUSED * (cols - scols))
        for r in range(srows + 1, rows + 1):
            out.append(f"\x1b[{r};1H" + UNUSED * cols)
        out.append("\x1b[0m\x1b8")
        self._write("".join(out).encode())

    # -- copy mode ---------------------------------------------------------------
    def _enter_copy_mode(self, capture: dict[str, Any]) -> None:
        rows, cols, _, _ = self.term_size
        lines = list(capture.get("history", [])) + str(capture.get("text", "")).split("\n")
        while len(lines) > 1 and not lines[-1]:
            lines.pop()
        self.copy = CopyMode(lines, rows, cols, self._write)
        for key in self._copy_keys:
            if not self.copy.key(key):
                self._leave_copy_mode()
                return
        self.copy.render()

    def _leave_copy_mode(self) -> None:
        self.copy = None
        self._copy_keys = []
        self.wire.send_request("client.redraw", {})

    def _write(self, data: bytes) -> None:
        if not self.owns_output:
            self._take_output()
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.out_fd, view)
            except InterruptedError:
                continue
            except BlockingIOError:
                select.select([], [self.out_fd], [])
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    self.state.ended = AttachOutcome(129, "terminal went away")
                    return
                raise
            view = view[n:]

    def _flash(self, text: str) -> None:
        """Show one line on the bottom row, then redraw the screen shortly after."""
        rows, cols, _, _ = self.term_size
        line = text.replace("\n", " ")[: max(cols - 1, 1)]
        self._write(f"\x1b7\x1b[{rows};1H\x1b[0;7m{line}\x1b[K\x1b[0m\x1b8".encode())
        self.state.redraw_at = time.monotonic() + 2.0

    # -- terminal → daemon ---------------------------------------------------------
    def _from_terminal(self) -> None:
        try:
            data = os.read(self.in_fd, 65536)
        except OSError:
            data = b""
        if not data:
            self.state.ended = AttachOutcome(129, "terminal closed")
            return
        self._keys(data)

    def _keys(self, data: bytes) -> None:
        """Keys typed on the terminal: the prefix key's commands here, the rest
        to the session."""
        if self.copy is not None:
            for key in keys(data):
                if not self.copy.key(key):
                    self._leave_copy_mode()
                    break
            return
        out = bytearray()
        i = 0
        while i < len(data):
            byte = data[i : i + 1]
            i += 1
            if self.state.prompt is not None:
                self._prompt_key(byte)
            elif self.state.prefix_pending:
                self.state.prefix_pending = False
                if byte == self.prefix:
                    out += byte
                    continue
                self._flush_input(out)
                out.clear()
                if byte == b"\x1b":
                    # A key after the prefix is one key, never bytes for the program.
                    seq = sequence_at(data, i - 1) or b"\x1b"
                    i += len(seq) - 1
                    self._command_key(NAMES.get(seq, "unknown"))
                else:
                    self._command(byte)
                if self.state.ended is not None:
                    return
            elif byte == self.prefix:
                self.state.prefix_pending = True
            elif self.prefix not in data[i - 1 :] and self.state.prompt is None:
                out += data[i - 1 :]
                break
            else:
                out += byte
        self._flush_input(out)

    def _flush_input(self, data: bytes | bytearray) -> None:
        # A read-only client's keys go too: the daemon drops them and audits
        # the attempt (what was tried is part of the record).
        if data:
            self.wire.send_stdin(bytes(data))

    def _request(self, op: str, **args: Any) -> None:
        request_id = self.wire.send_request(op, {"session": self.session_id, **args})
        self.state.pending_requests[request_id] = op

    def _command(self, key: bytes) -> None:
        if key == b"d":
            self.wire.send_request("client.detach", {})
            self.state.ended = AttachOutcome(0, f"detached from session {self.session_label}")
        elif key == b"c":
            self._request("window.new", command=[])
        elif key in (b"n", b"p"):
            self._request("window.select", step=1 if key == b"n" else -1)
        elif key.isdigit():
            self._request("window.select", window=int(key))
        elif key == b"w":
            self._request("window.list")
        elif key == b",":
            self.state.prompt = bytearray()
            self._show_prompt()
        elif key == b"[":
            self._start_copy_mode([])
        else:
            self._write(b"\a")

    def _command_key(self, name: str) -> None:
        """A named key after the prefix: PageUp enters copy mode a page up."""
        if name == "pageup":
            self._start_copy_mode(["pageup"])
        else:
            self._write(b"\a")

    def _start_copy_mode(self, first_keys: list[str]) -> None:
        self._copy_keys = first_keys
        self._request("session.capture", history=-1)

    # -- rename prompt --------------------------------------------------------------
    def _show_prompt(self) -> None:
        rows, _, _, _ = self.term_size
        text = "rename window: " + (self.state.prompt or b"").decode(errors="replace")
        self._write(f"\x1b7\x1b[{rows};1H\x1b[0;7m{text}\x1b[K\x1b[0m\x1b8".encode())

    def _prompt_key(self, key: bytes) -> None:
        assert self.state.prompt is not None
        if key in (b"\r", b"\n"):
            name = self.state.prompt.decode(errors="replace").strip()
            self.state.prompt = None
            if name:
                self._request("window.rename", window=-1, name=name)
            self.state.redraw_at = time.monotonic()
            return
        if key in (b"\x1b", b"\x03", b"\x07"):
            self.state.prompt = None
            self.state.redraw_at = time.monotonic()
            return
        if key in (b"\x7f", b"\x08"):
            del self.state.prompt[-1:]
        elif key >= b" ":
            self.state.prompt += key
        self._show_prompt()


__all__ = ["AttachOutcome", "attach", "error_from_json"]
