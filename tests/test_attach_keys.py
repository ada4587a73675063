"""The attach key parser: what the prefix key, the keys after it and the
rename prompt turn into, read by read, with no terminal and no daemon."""

from __future__ import annotations

from tachi.cli.attach_keys import (
    Command,
    KeyParser,
    NamedKey,
    PromptClosed,
    PromptEdited,
    Send,
)

PREFIX = b"\x1c"  # C-\, the default


def feed(parser: KeyParser, data: bytes) -> list[object]:
    """Every action ``data`` asks for, taken in order as the bridge would
    (the prompt opened when ``,`` comes, as the bridge's command does)."""
    actions: list[object] = []
    for action in parser.feed(data):
        actions.append(action)
        if action == Command(b","):
            actions.append(parser.open_prompt())
    return actions


def test_plain_typing_goes_to_the_session_in_one_piece() -> None:
    assert feed(KeyParser(PREFIX), b"ls -l\r") == [Send(b"ls -l\r")]


def test_prefix_then_a_command_key_is_a_command_not_typing() -> None:
    for key in (b"d", b"n", b"p", b"[", b"c", b"w", b"3"):
        parser = KeyParser(PREFIX)
        assert feed(parser, PREFIX + key) == [Command(key)]
        assert not parser.prefix_pending


def test_typing_around_a_command_is_sent_before_and_after_it() -> None:
    actions = feed(KeyParser(PREFIX), b"ab" + PREFIX + b"n" + b"cd")
    assert actions == [Send(b"ab"), Command(b"n"), Send(b"cd")]


def test_the_prefix_twice_sends_the_prefix_once() -> None:
    parser = KeyParser(PREFIX)
    assert feed(parser, b"x" + PREFIX + PREFIX + b"y") == [Send(b"x" + PREFIX + b"y")]
    assert not parser.prefix_pending


def test_a_prefix_at_the_end_of_one_read_applies_to_the_next() -> None:
    parser = KeyParser(PREFIX)
    assert feed(parser, b"echo" + PREFIX) == [Send(b"echo")]
    assert parser.prefix_pending  # the hand-over keeps the keyboard meanwhile
    assert feed(parser, b"d") == [Command(b"d")]
    # The prefix typed twice across two reads is still the prefix, once.
    assert feed(parser, PREFIX) == []
    assert feed(parser, PREFIX + b"z") == [Send(PREFIX + b"z")]


def test_a_whole_escape_sequence_after_the_prefix_is_one_named_key() -> None:
    parser = KeyParser(PREFIX)
    assert feed(parser, PREFIX + b"\x1b[5~" + b"q") == [NamedKey("pageup"), Send(b"q")]
    assert feed(parser, PREFIX + b"\x1b[99~") == [NamedKey("unknown")]
    assert feed(parser, PREFIX + b"\x1b") == [NamedKey("unknown")]  # a lone Escape


def test_the_rename_prompt_edits_then_closes_with_the_name() -> None:
    parser = KeyParser(PREFIX)
    actions = feed(parser, PREFIX + b",ab\x7fc\r" + b"after")
    assert actions == [
        Command(b","),
        PromptEdited(""),
        PromptEdited("a"),
        PromptEdited("ab"),
        PromptEdited("a"),
        PromptEdited("ac"),
        PromptClosed("ac"),
        Send(b"after"),
    ]
    assert parser.prompt is None


def test_the_prompt_spans_reads_and_escape_cancels_it() -> None:
    parser = KeyParser(PREFIX)
    assert feed(parser, PREFIX + b",x") == [Command(b","), PromptEdited(""), PromptEdited("x")]
    assert parser.prompt == bytearray(b"x")
    # While the prompt is open the prefix is no command, just a control key it ignores.
    assert feed(parser, PREFIX + b"d") == [PromptEdited("x"), PromptEdited("xd")]
    assert feed(parser, b"\x1b") == [PromptClosed(None)]
    assert not parser.prefix_pending
    assert feed(parser, b"ok") == [Send(b"ok")]


def test_a_caller_that_stops_after_detach_leaves_the_rest_unparsed() -> None:
    parser = KeyParser(PREFIX)
    for action in parser.feed(PREFIX + b"d" + PREFIX):
        assert action == Command(b"d")
        break
    assert not parser.prefix_pending
