"""Handing the terminal to the daemon and taking it back (``client.terminal``).

When attach runs on the daemon's host, the daemon may read the keys from and
write the output to the terminal itself (see :mod:`tachi.daemon.direct_terminal`),
so neither passes through the attach process. Attach still owns the terminal:
it gives a direction away only while it needs nothing of it (no prefix
command, prompt, copy mode or flash under way, the session exactly this
terminal's size), and takes it back, waiting for the daemon's ``terminal``
event, before it draws anything itself. This module holds that state
machine; the bridge in :mod:`tachi.cli.attach` mixes it in.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Protocol

from tachi import protocol
from tachi.cli.attach_keys import KeyParser
from tachi.cli.copy_mode import CopyMode
from tachi.client.endpoint import Endpoint
from tachi.client.wire import WireConnection
from tachi.errors import DaemonUnavailable, TachiError

#: After a flood, the output goes back to the daemon once it has paused this long.
OUTPUT_QUIET = 0.25
#: How long to wait for the daemon to hand the terminal back before drawing anyway.
HAND_BACK_TIMEOUT = 2.0


def may_hand_over(endpoint: Path | Endpoint, in_fd: int, out_fd: int) -> bool:
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


def hand_over_terminal(wire: WireConnection, in_fd: int) -> bool:
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


class _Timers(Protocol):
    """The part of the bridge's state the hand-over reads and sets."""

    redraw_at: float | None
    unused_at: float | None
    hand_over_at: float | None
    pending_requests: dict[int, str]


class TerminalHandOver:
    """Which side draws and reads the terminal now, and the moves between them.

    Promises: while ``owns_output`` is False nothing here writes to the
    terminal (a write first takes the output back, :meth:`_take_output`);
    while ``owns_input`` is False the terminal is not read here. Mixed into
    the bridge, which provides the attributes declared below and ``_keys``.
    """

    wire: WireConnection
    state: _Timers
    key_parser: KeyParser
    copy: CopyMode | None
    read_only: bool
    prefix: bytes
    term_size: tuple[int, int, int, int]
    session_size: tuple[int, int] | None
    position: tuple[int, int] | None
    direct: bool
    owns_input: bool
    owns_output: bool
    screen_at: tuple[int, int] | None
    handover: int
    _hold_off: bool
    _output_at: float

    def _keys(self, data: bytes) -> None:
        raise NotImplementedError  # the bridge's: keys the daemon read and handed back

    # -- the terminal handed to the daemon --------------------------------------------
    def _hand_over(self) -> None:
        """Give the daemon whichever direction nothing here needs now: the keys
        while no prefix command, prompt or copy mode is under way; the output
        while this process draws nothing of its own either."""
        state = self.state
        parser = self.key_parser
        if self.copy is not None or parser.prompt is not None or parser.prefix_pending:
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
