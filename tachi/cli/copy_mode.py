"""Copy mode in ``tachi attach``: scroll through a window's history and screen,
search it, select lines and copy them to the terminal's clipboard.

The lines come from the daemon once, on entry (``session.capture`` with the
whole history); while copy mode is up the session goes on running and its
output is not drawn, and leaving asks the daemon to redraw the current screen.
Copying uses OSC 52, so it reaches the clipboard of the terminal the user sits
at, even over SSH, and nothing is typed into the session.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

HELP = "q quit  ↑↓ PgUp PgDn g G scroll  / ? n N search  space select  enter copy"
#: The help, shorter, for terminals too narrow for ``HELP`` (80 columns).
SHORT_HELP = "q quit  / search  space select  enter copy"


class CopyMode:
    """The state of one copy-mode visit; ``key()`` returns False when it ends."""

    def __init__(
        self, lines: list[str], rows: int, cols: int, write: Callable[[bytes], None]
    ) -> None:
        self.lines = lines or [""]
        self.rows = max(rows - 1, 1)  # the last row is the status line
        self.cols = cols
        self._write = write
        self.cursor = len(self.lines) - 1
        self.top = max(0, len(self.lines) - self.rows)
        self.mark: int | None = None
        self.pattern = ""
        self.forward = True
        self.prompt: str | None = None
        self.message = HELP
        self.copied: str | None = None

    # -- keys -----------------------------------------------------------------
    def key(self, key: str) -> bool:
        if self.prompt is not None:
            self._prompt_key(key)
            return True
        page = self.rows - 1 or 1
        moves = {
            "up": -1, "k": -1, "down": 1, "j": 1, "pageup": -page, "C-b": -page,
            "pagedown": page, "C-f": page, "C-u": -(page // 2 or 1), "C-d": page // 2 or 1,
        }  # fmt: skip
        if key in ("q", "escape", "C-c"):
            return False
        if key in moves:
            self._move(moves[key])
        elif key in ("g", "home"):
            self._move(-len(self.lines))
        elif key in ("G", "end"):
            self._move(len(self.lines))
        elif key in ("/", "?"):
            self.prompt = ""
            self.forward = key == "/"
        elif key in ("n", "N") and self.pattern:
            self._search(self.forward if key == "n" else not self.forward)
        elif key in (" ", "v"):
            self.mark = None if self.mark is not None else self.cursor
            selecting = self.mark is not None
            self.message = "selecting: move, then enter or y copies" if selecting else HELP
        elif key in ("enter", "y"):
            self._copy()
            return False
        self.render()
        return True

    def _prompt_key(self, key: str) -> None:
        assert self.prompt is not None
        if key == "enter":
            self.pattern, self.prompt = self.prompt, None
            if self.pattern:
                self._search(self.forward)
        elif key in ("escape", "C-c", "C-g"):
            self.prompt = None
        elif key == "backspace":
            self.prompt = self.prompt[:-1]
        elif len(key) == 1 and key.isprintable():
            self.prompt += key
        self.render()

    def _move(self, delta: int) -> None:
        self.cursor = min(max(self.cursor + delta, 0), len(self.lines) - 1)
        if self.cursor < self.top:
            self.top = self.cursor
        elif self.cursor >= self.top + self.rows:
            self.top = self.cursor - self.rows + 1

    def _search(self, forward: bool) -> None:
        n = len(self.lines)
        step = 1 if forward else -1
        for k in range(1, n + 1):
            i = (self.cursor + step * k) % n
            if self.pattern in self.lines[i]:
                self._move(i - self.cursor)
                wrapped = (i < self.cursor) if forward else (i > self.cursor)
                self.message = f"/{self.pattern}" + (" (wrapped)" if wrapped else "")
                return
        self.message = f"not found: {self.pattern}"

    def _copy(self) -> None:
        first, last = sorted((self.mark if self.mark is not None else self.cursor, self.cursor))
        self.copied = "\n".join(self.lines[first : last + 1])
        payload = base64.b64encode(self.copied.encode()).decode()
        # OSC 52: set the clipboard ("c") of the terminal this client runs in.
        self._write(f"\x1b]52;c;{payload}\x07".encode())

    # -- drawing --------------------------------------------------------------
    def render(self) -> None:
        out = ["\x1b[?25l\x1b[0m\x1b[H\x1b[2J"]
        selected = sorted((self.mark, self.cursor)) if self.mark is not None else None
        for row in range(self.rows):
            i = self.top + row
            if i >= len(self.lines):
                break
            text = self.lines[i][: self.cols]
            if selected and selected[0] <= i <= selected[1]:
                text = f"\x1b[7m{text.ljust(min(self.cols, len(text) + 1))}\x1b[0m"
            elif i == self.cursor:
                text = f"\x1b[1;4m{text or ' '}\x1b[0m"
            out.append(f"\x1b[{row + 1};1H{text}")
        if self.prompt is not None:
            status = ("/" if self.forward else "?") + self.prompt
        else:
            status = f"[copy mode] {self.cursor + 1}/{len(self.lines)}  {self.message}"
            if self.message == HELP and len(status) >= self.cols:
                status = f"[copy mode] {self.cursor + 1}/{len(self.lines)}  {SHORT_HELP}"
        out.append(f"\x1b[{self.rows + 1};1H\x1b[0;7m{status[: self.cols - 1]}\x1b[K\x1b[0m")
        self._write("".join(out).encode())
