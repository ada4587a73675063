"""Regular expressions that callers send (``session.wait --match``), run by RE2.

Python's ``re`` backtracks: one pattern such as ``(?:[\\s\\S]+)+Q`` keeps the
event loop busy for good. RE2 matches in time linear in the text, whatever the
pattern, and in bounded memory (:data:`MAX_MEMORY` per expression; past it a
search falls back to a slower, still linear, engine). What RE2 leaves out
because it cannot be done in linear time (backreferences, look-around, atomic
groups, possessive quantifiers, conditionals) is refused with an error that
names the construct. Patterns are multi-line, as they were with ``re``
(``^`` and ``$`` match at each line), in Python's syntax otherwise (``\\z``,
not ``\\Z``, for the very end).
"""

from __future__ import annotations

from typing import Protocol

import re2

from tachi.errors import InvalidRequest

#: What one compiled expression may use (its program and its DFA cache). RE2's
#: module keeps the last 128 expressions compiled, so this bounds them too.
MAX_MEMORY = 1 << 20

#: Constructs RE2 refuses, as a caller would write them, with their name.
_UNSUPPORTED = (
    ("(?<=", "a lookbehind (?<=…)"),
    ("(?<!", "a negative lookbehind (?<!…)"),
    ("(?=", "a lookahead (?=…)"),
    ("(?!", "a negative lookahead (?!…)"),
    ("(?>", "an atomic group (?>…)"),
    ("(?(", "a conditional group (?(…)"),
    ("(?P=", "a named backreference (?P=…)"),
)


class Match(Protocol):
    def group(self, index: int = 0) -> str: ...


class Pattern(Protocol):
    """A compiled caller pattern: ``search(text)`` as ``re.Pattern.search``."""

    def search(self, text: str) -> Match | None: ...


def _options() -> re2.Options:
    options = re2.Options()
    options.max_mem = MAX_MEMORY
    # A refused pattern is the caller's error, answered to the caller; RE2
    # would also print each one (and every DFA cache reset) on the daemon's stderr.
    options.log_errors = False
    return options


_OPTIONS = _options()


def compile_pattern(pattern: str) -> Pattern:
    """Compile a caller's pattern for linear-time search.

    Raises ``InvalidRequest`` naming the construct for what RE2 cannot run in
    linear time, and with RE2's reason for any other invalid pattern."""
    try:
        return re2.compile("(?m)" + pattern, _OPTIONS)  # type: ignore[no-any-return]
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        construct = unsupported_construct(pattern)
        if construct is not None:
            raise InvalidRequest(
                f"invalid regular expression {pattern!r}: {construct} is not supported"
                " (patterns run in linear time, with RE2 syntax)"
            ) from None
        raise InvalidRequest(f"invalid regular expression {pattern!r}: {reason}") from None


def unsupported_construct(pattern: str) -> str | None:
    """The first construct in ``pattern`` that RE2 leaves out, named; ``None`` if
    there is none (outside character classes and escapes)."""
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            following = pattern[i + 1 : i + 2]
            if not in_class and following.isdigit() and following != "0":
                return f"a backreference \\{following}"
            if not in_class and following == "Z":
                return "\\Z (write \\z for the end of the text)"
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # A ] first in the class (or after ^) is a literal.
            if pattern[i + 1 : i + 2] == "^":
                i += 1
            if pattern[i + 1 : i + 2] == "]":
                i += 1
        elif char == "(":
            for prefix, name in _UNSUPPORTED:
                if pattern.startswith(prefix, i):
                    return name
        elif char in "*+?}" and pattern[i + 1 : i + 2] == "+":
            return f"a possessive quantifier {char}+"
        i += 1
    return None
