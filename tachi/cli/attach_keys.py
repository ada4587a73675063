"""What the keys typed during ``tachi attach`` mean: the prefix key, the
command key after it, and the rename prompt's line editing.

Pure: :class:`KeyParser` turns bytes read from the terminal into actions and
does no I/O; the bridge in :mod:`tachi.cli.attach` carries them out. A key
split across reads is handled by the state kept between calls (a prefix at
the end of one read applies to the first key of the next).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tachi.cli.keyseq import NAMES, sequence_at


@dataclass(frozen=True)
class Send:
    """Keys for the session, as typed (the prefix typed twice gives it once)."""

    data: bytes


@dataclass(frozen=True)
class Command:
    """The one byte typed after the prefix (``d``, ``c``, ``n``, ``p``, a digit, ...);
    what it does, or a bell for an unbound one, is the bridge's to decide."""

    key: bytes


@dataclass(frozen=True)
class NamedKey:
    """A whole escape sequence typed after the prefix, by its name in
    :data:`tachi.cli.keyseq.NAMES` (``"pageup"``), or ``"unknown"``."""

    name: str


@dataclass(frozen=True)
class PromptEdited:
    """The rename prompt's text changed (or it just opened): show it."""

    text: str


@dataclass(frozen=True)
class PromptClosed:
    """The rename prompt closed: ``name`` on Enter (stripped, maybe empty),
    ``None`` when cancelled (Escape, C-c, C-g)."""

    name: str | None


Action = Send | Command | NamedKey | PromptEdited | PromptClosed


class KeyParser:
    """Splits terminal input into keys for the session, prefix commands and
    rename-prompt edits.

    ``prefix_pending`` and ``prompt`` are the state between reads; the
    hand-over looks at them (the keyboard stays here while either is set).
    """

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        #: The prefix was the last key: the next one is a command.
        self.prefix_pending = False
        #: The rename prompt's text while it is open, else ``None``.
        self.prompt: bytearray | None = None

    def open_prompt(self) -> PromptEdited:
        """Open the rename prompt (empty); the returned action shows it."""
        self.prompt = bytearray()
        return PromptEdited("")

    def feed(self, data: bytes) -> Iterator[Action]:
        """The actions ``data`` asks for, in the order typed.

        Lazy on purpose: the state moves on as actions are taken, so a
        command that opens the prompt (:meth:`open_prompt`) sees the keys
        after it go to the prompt, and a caller that stops early (after
        detach) leaves the rest unparsed. Session keys are gathered into as
        few :class:`Send` actions as possible; one ends before each command.
        """
        out = bytearray()
        prefix = self.prefix
        i = 0
        while i < len(data):
            if self.prompt is not None:
                if data[i] == 0x1B and (seq := sequence_at(data, i)) is not None:
                    # A whole key (an arrow, Home...): never its bytes as text.
                    i += len(seq)
                    yield self._prompt_named(NAMES.get(seq, "unknown"))
                else:
                    i += 1
                    yield self._prompt_key(data[i - 1 : i])
            elif self.prefix_pending:
                self.prefix_pending = False
                if prefix and data.startswith(prefix, i):
                    out += prefix
                    i += len(prefix)
                    continue
                if out:
                    yield Send(bytes(out))
                    out.clear()
                if data[i] == 0x1B:
                    # A key after the prefix is one key, never bytes for the program.
                    seq = sequence_at(data, i) or b"\x1b"
                    i += len(seq)
                    yield NamedKey(NAMES.get(seq, "unknown"))
                else:
                    i += 1
                    yield Command(data[i - 1 : i])
            elif prefix and data.startswith(prefix, i):
                # The whole prefix sequence (one byte, a UTF-8 character or an
                # escape sequence, as parse_key gives it), as the terminal sent it.
                self.prefix_pending = True
                i += len(prefix)
            else:
                # Up to the next prefix (or the end: the common case, one slice).
                end = data.find(prefix, i) if prefix else -1
                if end < 0:
                    out += data[i:]
                    break
                out += data[i:end]
                i = end
        if out:
            yield Send(bytes(out))

    def _prompt_named(self, name: str) -> PromptEdited:
        """A named key typed into the open prompt (an arrow, Home, PageUp...):
        the prompt has no cursor to move, so it changes nothing."""
        assert self.prompt is not None
        return PromptEdited(self.prompt.decode(errors="replace"))

    def _prompt_key(self, key: bytes) -> PromptEdited | PromptClosed:
        """One key typed into the open prompt (an unbound control key changes
        nothing but still shows the prompt again)."""
        assert self.prompt is not None
        if key in (b"\r", b"\n"):
            name = self.prompt.decode(errors="replace").strip()
            self.prompt = None
            return PromptClosed(name)
        if key in (b"\x1b", b"\x03", b"\x07"):
            self.prompt = None
            return PromptClosed(None)
        if key in (b"\x7f", b"\x08"):
            del self.prompt[-1:]
        elif key >= b" ":
            self.prompt += key
        return PromptEdited(self.prompt.decode(errors="replace"))
