"""Keys in ``tachi attach`` taken as whole keys (issue 29's review): an arrow
typed into the rename prompt is neither text nor a cancel, and a prefix key
that the terminal sends as several bytes (a UTF-8 character, Alt-x) works; a
prefix that could never be recognised is refused when the config is read."""

from __future__ import annotations

import json
from pathlib import Path

import pexpect
import pytest

from helpers import SHELL, capture, spawn_attach, until
from tachi.cli.attach_keys import Command, KeyParser, PromptClosed, PromptEdited, Send
from tachi.cli.keys import parse_key

PREFIX = "\x1c"
LEFT = "\x1b[D"


def _windows(daemon, sid: str) -> list[dict]:
    return json.loads(daemon.run("window", "ls", sid, "--json", check=True).stdout)


def _config(daemon, text: str) -> None:
    Path(daemon.env["TACHI_HOME"], "config.toml").write_text(text)


# -- the rename prompt ---------------------------------------------------------------
def test_an_arrow_in_the_rename_prompt_is_not_typed_into_the_name(tachi_daemon):
    s = tachi_daemon.new(*SHELL, env="PS1=$ ")
    sid = s["id"]
    child = spawn_attach(tachi_daemon, sid)
    child.expect(r"\$ ")
    child.send(PREFIX + ",")
    child.expect("rename window: ")
    # One write per key, as a terminal sends them.
    for key in ("a", "b", LEFT, "c", "\x1bOD", "\r"):
        child.send(key)
    assert until(lambda: _windows(tachi_daemon, sid)[0]["name"] == "abc", timeout=10), _windows(
        tachi_daemon, sid
    )
    # Nothing of the arrows reached the program either.
    child.send("echo after-$((1+1))\r")
    child.expect("after-2")
    assert "[D" not in capture(tachi_daemon, sid) and "OD" not in capture(tachi_daemon, sid)
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)


def test_the_prompt_parser_takes_escape_sequences_whole():
    parser = KeyParser(b"\x1c")
    assert list(parser.feed(b"\x1c,")) == [Command(b",")]
    parser.open_prompt()
    assert list(parser.feed(b"x\x1b[Dy\x1b[5~")) == [
        PromptEdited("x"),
        PromptEdited("x"),
        PromptEdited("xy"),
        PromptEdited("xy"),
    ]
    # A lone Escape still cancels.
    assert list(parser.feed(b"\x1b")) == [PromptClosed(None)]


# -- prefixes of several bytes ---------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "keys"), [("§", "§"), ("M-a", "\x1ba")], ids=["utf8-character", "alt-key"]
)
def test_a_prefix_of_several_bytes_detaches(tachi_daemon, spec, keys):
    _config(tachi_daemon, f'prefix_key = "{spec}"\n')
    s = tachi_daemon.new(*SHELL, env="PS1=$ ")
    child = spawn_attach(tachi_daemon, s["id"])
    child.expect(r"\$ ")
    # Typed twice, the prefix reaches the program once.
    child.send(f"echo [{keys}{keys}]-$((3+4))\r")
    child.expect(r"-7")
    child.send(keys + "d")
    child.expect(r"\[detached from session")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    if spec == "§":
        assert "[§]-7" in capture(tachi_daemon, s["id"])


def test_the_prefix_is_matched_as_a_whole_sequence():
    parser = KeyParser(parse_key("M-a"))
    assert list(parser.feed(b"hi\x1bad")) == [Send(b"hi"), Command(b"d")]
    # Alt-b, an arrow and the prefix's first byte alone are keys for the program.
    assert list(parser.feed(b"\x1bb\x1b[A\x1b")) == [Send(b"\x1bb\x1b[A\x1b")]
    parser = KeyParser(parse_key("é"))
    # Prefix then space is a command; the prefix twice is the prefix, once.
    assert list(parser.feed("café éé é".encode())) == [
        Send(b"caf"),
        Command(b" "),
        Send("é ".encode()),
    ]
    assert parser.prefix_pending  # the last key was the prefix


@pytest.mark.parametrize("spec", ["C-[", "M-[", "M-O", "F1", "ab"])
def test_a_prefix_that_could_never_be_recognised_is_refused_at_config_load(tachi_daemon, spec):
    s = tachi_daemon.new(*SHELL)
    _config(tachi_daemon, f'prefix_key = "{spec}"\n')
    result = tachi_daemon.run("attach", s["id"])
    assert result.returncode == 2
    assert "prefix_key" in result.stderr and spec in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
