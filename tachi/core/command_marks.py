"""Following OSC 133 marks in a window's output: where commands start and end,
and their exit status (see ``tachi.core.shell_integration``).

Cheap on the hot path: a chunk without ``ESC ] 133 ;`` costs one ``bytes.find``.
Parsing never raises, whatever the program prints: a malformed mark is ignored
or read as an unknown exit status (-1), never the end of the output path
(clients, subscribers, ``tachi run`` and recordings see every chunk).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_PREFIX = b"\x1b]133;"
# ESC ] 133 ; KIND [; PARAMS] then BEL or ST.
MARK = re.compile(rb"\x1b\]133;([A-Z])((?:;[^\x07\x1b]*)?)(?:\x07|\x1b\\)")
_MAX_PARTIAL = 256
# An exit status as a program may print it: ASCII digits only (``str.isdigit``
# also takes "²", which ``int`` refuses) and short enough for ``int`` and for
# JSON (a 5,000-digit number raised in both, on the output path).
_EXIT_CODE = re.compile(r"-?[0-9]{1,10}")
_INT32 = (-(2**31), 2**31 - 1)


@dataclass(slots=True)
class _Waiter:
    ident: str | None
    future: asyncio.Future[int]
    armed: bool = False


class CommandMarks:
    """One window's command boundaries. ``on_event(kind, details)`` is told of
    ``command-started`` and ``command-finished`` (with ``exitCode``)."""

    def __init__(self, on_event: Callable[[str, dict[str, Any]], None]) -> None:
        self._on_event = on_event
        self._partial = b""
        #: A shell hook has printed marks here: commands' ends are known.
        self.integrated = False
        #: A command-started was reported and its command-finished not yet:
        #: the D mark of the shell's first prompt finishes nothing.
        self._open = False
        #: When (``time.monotonic``) the shell's hook last drew a prompt (mark A).
        self.prompt_at = 0.0
        #: When the shell last started a command it read (mark C).
        self.command_at = 0.0
        self._waiters: list[_Waiter] = []

    def feed(self, data: bytes) -> None:
        if not self._partial and _PREFIX not in data:
            # A mark may be cut between two chunks: keep a prefix of one (it can
            # only start at the last ESC, as the prefix holds one ESC).
            esc = data.rfind(b"\x1b", len(data) - len(_PREFIX) + 1)
            if esc != -1 and _PREFIX.startswith(data[esc:]):
                self._partial = data[esc:]
            return
        buf = self._partial + data
        end = 0
        for m in MARK.finditer(buf):
            end = m.end()
            params = m.group(2).decode(errors="replace").lstrip(";").split(";")
            self._mark(m.group(1).decode(), [p for p in params if p])
        start = buf.rfind(b"\x1b]", end)
        self._partial = buf[start:] if start != -1 and len(buf) - start < _MAX_PARTIAL else b""

    def _mark(self, kind: str, params: list[str]) -> None:
        ident = next((p for p in params if p.startswith("tachi-")), None)
        if ident is None:
            self.integrated = True
        if kind == "A" and ident is None:
            self.prompt_at = time.monotonic()
        elif kind == "C":
            self.command_at = time.monotonic()
            for waiter in self._waiters:
                if waiter.ident == ident:
                    waiter.armed = True
            # A run's own mark starts a command too when the shell's hook did
            # not (PS0 emptied), once.
            if ident is None or not self.integrated or not self._open:
                self._open = True
                self._on_event("command-started", {})
        elif kind == "D":
            code = exit_code(params[0] if params else "")
            for waiter in self._waiters:
                # Only a command that started after the waiter came: an earlier
                # command's end is not ours.
                if waiter.ident == ident and waiter.armed and not waiter.future.done():
                    waiter.future.set_result(code)
            self._waiters = [w for w in self._waiters if not w.future.done()]
            if (ident is None or not self.integrated) and self._open:
                self._open = False
                self._on_event("command-finished", {"exitCode": code})

    def wait_finished(self, ident: str | None) -> asyncio.Future[int]:
        """A future for the exit status of the next command that starts (mark C)
        and then finishes (mark D) with this ``ident`` (``None``: the shell's own
        marks; ``"tachi-…"``: a sentinel ``tachi run`` typed)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(ident, future))
        return future


def exit_code(text: str) -> int:
    """The exit status a D mark reports, or -1 when it names none a program can
    have (missing, malformed, out of the 32-bit range). Never raises: the text
    is whatever a program printed."""
    if not _EXIT_CODE.fullmatch(text):
        return -1
    code = int(text)
    return code if _INT32[0] <= code <= _INT32[1] else -1


def command_output(data: bytes, ident: str | None) -> bytes:
    """The bytes between the first matching start mark (C) and the end mark (D)
    after it; everything after C if no D came."""
    start = 0
    for m in MARK.finditer(data):
        params = m.group(2).decode(errors="replace")
        if (ident is None or ident in params) and m.group(1) == b"C":
            start = m.end()
            break
    for m in MARK.finditer(data, start):
        params = m.group(2).decode(errors="replace")
        if (ident is None or ident in params) and m.group(1) == b"D":
            return data[start : m.start()]
    return data[start:]
