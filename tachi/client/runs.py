"""What both clients share for ``session.run``: the streamed output's events
gathered into the reply (``docs/protocol.md``, ``run.output``)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from typing import Any

#: ``Client.run``'s ``max_output`` default: the first and last 8 MiB are kept.
MAX_OUTPUT = 16 * 1024 * 1024
#: How long after ``timeout`` a client still waits for the daemon's reply (the
#: daemon answers at ``timeout``; this covers a slow link, not a lost reply).
REPLY_GRACE = 10.0

#: ``on_output(data, omitted)``: a piece of output, or (``b""``, N) where N
#: bytes were left out.
OutputCallback = Callable[[bytes, int], None]


def omitted_marker(count: int) -> str:
    """The line that stands where output was left out (as the daemon writes it)."""
    return f"\n[tachi: {count} bytes of output omitted]\n"


class RunStream:
    """One streamed run: its ``stream`` tag, and its output as events arrive.
    With ``on_output`` the output is handed on and not kept."""

    def __init__(self, on_output: OutputCallback | None = None) -> None:
        self.tag = secrets.token_hex(8)
        self._on_output = on_output
        self._parts: list[bytes] = []
        #: The window it runs in and its id, once the daemon said (``run.started``).
        self.window: int | None = None
        self.run: str | None = None

    def args(
        self,
        session: str,
        command: str,
        window: int | None,
        timeout: float | None,
        max_output: int | None,
        detach: bool = False,
    ) -> dict[str, Any]:
        return {
            "session": session,
            "command": command,
            "window": window,
            "timeout": timeout,
            "stream": self.tag,
            "maxOutput": max_output,
            "detach": detach or None,
        }

    def event(self, message: dict[str, Any]) -> bool:
        """Take ``message`` if it is one of this run's events."""
        if message.get("stream") != self.tag:
            return False
        kind = message.get("event")
        if kind == "run.started":
            self.window = message.get("window")
            self.run = message.get("run")
        elif kind == "run.output":
            data = base64.b64decode(message.get("data") or "")
            omitted = int(message.get("omitted") or 0)
            if self._on_output is not None:
                self._on_output(data, omitted)
            elif omitted:
                self._parts.append(omitted_marker(omitted).encode())
            else:
                self._parts.append(data)
        else:
            return False
        return True

    def result(self, reply: dict[str, Any]) -> dict[str, Any]:
        """The reply with the streamed output in it (a daemon that does not
        stream sends the output in the reply itself)."""
        if reply.get("streamed"):
            reply = dict(reply, output=b"".join(self._parts).decode(errors="replace"))
        return reply

    def failed(self, exc: BaseException) -> BaseException:
        """``exc``, a ``TimedOut`` given the run's id (``TimedOut.run``) and the
        output that came before it (``TimedOut.output``), to collect the rest
        with ``run_wait``/``run_output``."""
        from tachi.errors import TimedOut

        if isinstance(exc, TimedOut):
            exc.run = self.run
            exc.output = b"".join(self._parts).decode(errors="replace")
        return exc


class ExpectBuffer:
    """pexpect's ``expect`` over an attachment's output, for ``SessionConn``:
    text with escape sequences removed, searched by RE2 (linear time, however
    the patterns are written); the earliest match wins, the first pattern on a
    tie. What follows a match stays for the next ``expect``. Holds at most the
    last 1 MiB of text."""

    LIMIT = 1 << 20

    def __init__(self) -> None:
        import codecs

        self.text = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, data: bytes) -> None:
        from tachi.core.window import strip_escapes

        # ``\n`` line ends, and no ``\r`` a shell redraws with at a line's
        # start: ``^`` then matches where a line starts on the screen.
        text = strip_escapes(data).replace(b"\r\n", b"\n").replace(b"\n\r", b"\n")
        self.text += self._decoder.decode(text)
        if len(self.text) > self.LIMIT:
            self.text = self.text[-self.LIMIT // 2 :]

    def search(self, regexes: list[Any]) -> tuple[int, str, str] | None:
        """(index, match, before) of the earliest match, consumed; or ``None``."""
        best: tuple[int, Any] | None = None
        for index, regex in enumerate(regexes):
            m = regex.search(self.text)
            if m is not None and (best is None or m.start() < best[1].start()):
                best = (index, m)
        if best is None:
            return None
        index, m = best
        before = self.text[: m.start()]
        self.text = self.text[m.end() :]
        return index, m.group(0), before

    def take(self) -> str:
        """All the text (for ``eof``/``timeout``), consumed."""
        text, self.text = self.text, ""
        return text


def compile_patterns(patterns: list[str] | str) -> list[Any]:
    """The caller's patterns for RE2; raises ``InvalidRequest`` naming what RE2
    cannot run in linear time."""
    from tachi.core.patterns import compile_pattern

    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        from tachi.errors import InvalidRequest

        raise InvalidRequest("give at least one pattern")
    return [compile_pattern(p) for p in patterns]
