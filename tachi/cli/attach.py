"""Interactive attach: the local terminal in raw mode, bridged to a session.

The terminal is restored on every exit path (detach, session end, daemon gone,
SIGTERM, SIGHUP, an exception). After the prefix key (default ``C-\\``):
``d`` detach, ``c`` new window, ``n``/``p`` next/previous, ``0``-``9`` select,
``w`` list windows, ``,`` rename the window, the prefix again sends it through.

This module is the loop and the reconnect; what the keys mean is
:mod:`tachi.cli.attach_keys`, what attach draws itself is
:mod:`tachi.cli.attach_paint`, the crop of a session larger than the terminal
is :mod:`tachi.cli.attach_crop`, and handing the terminal to the daemon and
back is :mod:`tachi.cli.attach_handover`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import struct
import sys
import termios
import time
import tty
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tachi import protocol
from tachi.cli.attach_crop import CropView, crop_hint, crops, view_size
from tachi.cli.attach_handover import TerminalHandOver, hand_over_terminal, may_hand_over
from tachi.cli.attach_keys import (
    Command,
    KeyParser,
    NamedKey,
    PromptClosed,
    PromptEdited,
    Send,
)
from tachi.cli.attach_paint import (
    farewell,
    flash_line,
    leaves_unused,
    prompt_line,
    region,
    unused_area,
    window_list,
)
from tachi.cli.copy_mode import CopyMode
from tachi.cli.keyseq import keys
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
    ended: AttachOutcome | None = None
    redraw_at: float | None = None
    #: When to repaint the unused area (programs erase to the terminal's edge).
    unused_at: float | None = None
    #: When to offer the daemon the output again (once it has been quiet).
    hand_over_at: float | None = None
    #: When to draw the crop of a larger session again (see ``CROP_INTERVAL``).
    crop_at: float | None = None
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
    if isinstance(endpoint, Endpoint) and endpoint.remote:
        # This loop reads its connection promptly, on one thread: a transport
        # that can (tachi-websocket) then speaks its protocol here, on the
        # loop's own select, instead of through a socketpair and a bridge thread.
        endpoint = replace(
            endpoint, options={**endpoint.options, "inline": True, "interactive": True}
        )
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
    bridge.direct = may_hand_over(endpoint, in_fd, out_fd) and hand_over_terminal(wire, in_fd)
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
        offered = bridge.direct

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
            if offered:
                bridge.direct = hand_over_terminal(fresh, in_fd)
            return fresh

        bridge.reopen_local = reopen_local
        bridge.local_socket = local
    return bridge.run()


#: How long an attach keeps trying to reconnect after a drop (a remote daemon's
#: network, or a local daemon that crashed or restarts while a keeper holds the session).
RECONNECT_SECONDS = 30.0
#: A local daemon that has not come back this long after a drop is started by
#: attach itself (as any command would). Not at once: ``tachi daemon restart``
#: (or systemd) starts the next one, with its listeners, within about a second.
AUTOSTART_AFTER = 3.0


#: Output may erase the unused area (erase-line reaches the terminal's edge): it
#: is repainted this long after output, at most that often.
UNUSED_REPAINT_DELAY = 0.05
#: The crop of a larger session is drawn at most this often during a flood
#: (each drawing compares every cell of the crop).
CROP_INTERVAL = 1 / 60


class _Bridge(TerminalHandOver):
    """One attach: the loop between the terminal and the daemon's connection.

    Reads keys (parsed by :class:`~tachi.cli.attach_keys.KeyParser`) and
    frames, draws what the daemon sends and what attach shows itself (see
    :mod:`tachi.cli.attach_paint`), hands the terminal to the daemon and back
    (:class:`~tachi.cli.attach_handover.TerminalHandOver`) and reconnects
    after a drop. :meth:`run` always gives the terminal back as it found it.
    """

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
        #: The prefix key, its commands and the rename prompt (state between reads).
        self.key_parser = KeyParser(prefix)
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
        #: The session's screen and the crop of it shown, while the session is
        #: larger than this terminal (see tachi.cli.attach_crop).
        self.crop: CropView | None = None
        self._crop_drawn_at = 0.0
        #: The (session size, terminal size) the crop hint was last flashed for.
        self._crop_hinted: tuple[tuple[int, int], tuple[int, int]] | None = None

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
            self._write(farewell(rows))
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
        # A remote transport spoken here (tachi-websocket's stream) may hold
        # messages it read but did not hand out yet: select() cannot see them.
        held = getattr(self.wire.sock, "pending", None) if self.reopen is not None else None
        while state.ended is None:
            if self.wire.pending:
                self._drain_pending()
                if state.ended is not None:
                    break
            if self.direct and (self.owns_input or self.owns_output):
                self._hand_over()
            watched = with_terminal if self.owns_input else without
            timeout = None
            timers = (state.redraw_at, state.unused_at, state.hand_over_at, state.crop_at)
            if any(timers):
                due = min(t for t in timers if t)
                timeout = max(0.0, due - time.monotonic())
            waiting = held is not None and held()
            try:
                ready = select.select(watched, [], [], 0 if waiting else timeout)[0]
            except InterruptedError:
                ready = []
            if waiting and sock not in ready:
                ready.append(sock)
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

    def _timers(self) -> None:
        now = time.monotonic()
        if self.state.redraw_at is not None and now >= self.state.redraw_at:
            self.state.redraw_at = None
            self.wire.send_request("client.redraw", {})
        if self.state.unused_at is not None and now >= self.state.unused_at:
            self.state.unused_at = None
            if self.copy is None:
                self._draw_unused()
        if self.state.crop_at is not None and now >= self.state.crop_at:
            self.state.crop_at = None
            self._draw_crop()

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGWINCH:
                self.term_size = terminal_size(self.in_fd)
                if self.read_only:
                    # The session keeps its size: what lies outside it, or the
                    # crop of it that fits, is drawn here.
                    if not self.owns_output:
                        self._take_output()
                    self.wire.send_request("client.redraw", {})
                else:
                    # What to draw is known once the session has applied its
                    # size policy (the reply, see _resize_applied).
                    rows, cols, xpix, ypix = self.term_size
                    self._request_quietly(
                        "client.resize", rows=rows, cols=cols, xPixel=xpix, yPixel=ypix
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
                    if self.crop is not None:
                        self.crop.feed(data)
                        self._crop_changed()
                    else:
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
                if crops(self.session_size, self.term_size):
                    assert self.session_size is not None
                    was = self.crop
                    self.crop = CropView(self.session_size, str(message["data"]))
                    if was is not None and was.session_size == self.session_size:
                        self.crop.offset = was.offset  # a redraw does not move the view
                    self._write(b"\x1b[r\x1b[0m\x1b[H\x1b[2J")
                    self._draw_crop()
                    self._draw_unused()
                    self._hint_crop()
                    return
                self.crop = None
                self._write(self._region() + str(message["data"]).encode())
                self._draw_unused()
        elif event == "terminal":
            self._terminal_event(message)
        elif event == "resized":
            # A screen event follows, drawn at the new size.
            self.session_size = (int(message["rows"]), int(message["cols"]))
        elif event == "notice":
            self._notice(message)
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
            # A refused request is answered too: it no longer holds the hand-over back.
            self.state.pending_requests.pop(message.get("id"), None)
            self._flash("tachi: " + str(error_from_json(message.get("error") or {})))
        elif "id" in message and message.get("ok"):
            what = self.state.pending_requests.pop(message["id"], None)
            if what == "session.capture":
                self._enter_copy_mode(message["result"])
            elif what == "window.list":
                self._flash(window_list(message["result"]))
            elif what == "client.resize":
                self._resize_applied()

    def _notice(self, message: dict[str, Any]) -> None:
        """Show a notice. One that carries ``role``/``readOnly`` (a demotion)
        also changes what this client is: once the daemon says it is read-only
        it no longer resizes the session (each try would be a denial in the
        audit log) nor offers the daemon its keys; the text names the role the
        daemon gave, should its message not."""
        text = str(message.get("message") or "")
        read_only = message.get("readOnly")
        if read_only is True and not self.read_only:
            # Never the other way here: a client attached with --read-only
            # stays so whatever its role becomes.
            self.read_only = True
        role = message.get("role")
        if isinstance(role, str) and role and role not in text:
            said = f"you are now {role}" + (" (read-only)" if read_only is True else "")
            text = f"{text}; {said}" if text else f"tachi: {said}"
        if text:
            self._flash(text)

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
    @property
    def _shown_size(self) -> tuple[int, int] | None:
        """The (rows, cols) of the session this terminal shows: all of it, or
        the crop of a session larger in either direction."""
        if self.session_size is None:
            return None
        return view_size(self.session_size, self.term_size)

    def _region(self) -> bytes:
        """Scrolling confined to the session's rows, when the terminal has more."""
        return region(self._shown_size, self.term_size)

    @property
    def _smaller(self) -> bool:
        """Whether the session leaves part of this terminal unused."""
        return leaves_unused(self._shown_size, self.term_size)

    def _draw_unused(self) -> None:
        """Fill the part of a larger terminal the session does not use with dots."""
        dots = unused_area(self._shown_size, self.term_size)
        if dots is not None:
            self._write(dots)

    # -- a larger session, cropped -------------------------------------------------
    def _resize_applied(self) -> None:
        """The session applied this terminal's new size, or kept its own (the
        size policy counts other clients too): a session still larger than the
        terminal, or a crop to give up, is drawn here from a fresh screen. A
        session that took this size was redrawn already."""
        if self.crop is None and not crops(self.session_size, self.term_size):
            return
        if not self.owns_output:
            self._take_output()
        self.wire.send_request("client.redraw", {})

    def _crop_changed(self) -> None:
        """Output changed the session's screen: draw the crop now, or, during a
        flood, once ``CROP_INTERVAL`` has passed since the last drawing."""
        self._output_at = time.monotonic()
        if self.state.crop_at is None:
            self.state.crop_at = max(self._output_at, self._crop_drawn_at + CROP_INTERVAL)

    def _draw_crop(self) -> None:
        """Bring the crop on the terminal up to date (it follows the cursor)."""
        if self.crop is None or self.copy is not None or not self.owns_output:
            return
        self._crop_drawn_at = time.monotonic()
        self._write(self.crop.render(self.term_size))

    def _hint_crop(self) -> None:
        """Flash, once per pair of sizes, that only part of the session shows."""
        assert self.session_size is not None
        sizes = (self.session_size, (self.term_size[0], self.term_size[1]))
        if sizes != self._crop_hinted:
            self._crop_hinted = sizes
            self._flash(crop_hint(self.session_size, self.term_size))

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
        self._write(flash_line(text, self.term_size))
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
        for action in self.key_parser.feed(data):
            if isinstance(action, Send):
                self._flush_input(action.data)
            elif isinstance(action, PromptEdited):
                self._show_prompt(action.text)
            elif isinstance(action, PromptClosed):
                if action.name:
                    self._request("window.rename", window=-1, name=action.name)
                self.state.redraw_at = time.monotonic()
            else:
                if isinstance(action, Command):
                    self._command(action.key)
                elif isinstance(action, NamedKey):
                    self._command_key(action.name)
                if self.state.ended is not None:
                    return  # the rest of the read is not parsed

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
            self._show_prompt(self.key_parser.open_prompt().text)
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
    def _show_prompt(self, text: str) -> None:
        """The rename prompt, with ``text`` typed so far, on the bottom row."""
        self._write(prompt_line(text, self.term_size))


__all__ = ["AttachOutcome", "attach", "error_from_json"]
