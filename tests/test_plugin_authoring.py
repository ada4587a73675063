"""What a third-party plugin written from docs/plugins.md alone can do (issue 29).

Each plugin is the one the page shows, taken from the page and installed as a
real distribution with a ``tachi`` entry point, in a real daemon driven by the
real CLI: an input policy that refuses ``rm -rf /`` (sent or typed key by key),
its own token scheme next to tachi's, and plugins that answer garbage, which
the daemon refuses at start, naming them, instead of failing when first used.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import installed_plugin, until
from tachi.audit import read_records
from tachi.testing import DaemonProcess

DOC = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()


def doc_block(first_line: str) -> str:
    """The code block of docs/plugins.md that starts with ``first_line``."""
    for block in re.findall(r"```python\n(.*?)```", DOC, re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no python block starting with {first_line!r} in docs/plugins.md")


GUARD = doc_block("# tachi_guard.py")
ACME = doc_block("import hmac\n")


@contextlib.contextmanager
def daemon_with(
    home: Path, site: Path, plugins: dict[str, str], **env: str
) -> Iterator[DaemonProcess]:
    path: dict[str, str] = {}
    for name, source in plugins.items():
        path = installed_plugin(site, name, source)
    extra = {**path, "TACHI_LOAD_PLUGINS": ",".join(plugins), **env}
    daemon = DaemonProcess(home, extra_env=extra)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def audit(daemon: DaemonProcess) -> list[dict]:
    return list(read_records(daemon.state_dir / "audit" / "audit.jsonl"))


def log_lines(daemon: DaemonProcess, *needles: str) -> list[str]:
    return [line for line in daemon.log.read_text().splitlines() if all(n in line for n in needles)]


def screen(daemon: DaemonProcess, sid: str) -> str:
    return daemon.run("capture", sid, check=True).stdout


# -- input policies -------------------------------------------------------------


def test_tachi_send_of_rm_rf_root_is_refused_and_audited_other_input_passes(tachi_home, tmp_path):
    with daemon_with(tachi_home, tmp_path / "site", {"guard": GUARD}) as daemon:
        s = daemon.new("cat")
        refused = daemon.run("send", s["id"], "rm -rf /\n")
        assert refused.returncode == 4, refused.stderr
        assert "refusing to send 'rm -rf /'" in refused.stderr
        sent = daemon.run("send", s["id"], "rm -rf ./build\n")
        assert sent.returncode == 0, sent.stderr
        assert until(lambda: "rm -rf ./build" in screen(daemon, s["id"]))
        assert "rm -rf /\n" not in screen(daemon, s["id"]).replace("./build", "")
        denied = [r for r in audit(daemon) if r["action"] == "session.write"]
        assert [(r["result"], r["details"]["plugin"], r["session"]) for r in denied] == [
            ("denied", "guard", s["id"])
        ]
        assert denied[0]["details"]["bytes"] == len("rm -rf /\n")
        assert set(denied[0]["details"]) == {"plugin", "bytes", "principalKind"}  # not the input


def test_the_slash_that_completes_rm_rf_root_typed_key_by_key_never_reaches_the_program(
    tachi_home, tmp_path
):
    with daemon_with(tachi_home, tmp_path / "site", {"guard": GUARD}) as daemon:
        s = daemon.new("cat")
        with daemon.client() as client:
            conn = client.attach(s["id"])
            for key in b"rm -rf /x\r":
                conn.write(bytes([key]))
            assert until(lambda: "rm -rf x" in screen(daemon, s["id"]))
            conn.close()
        assert "rm -rf /" not in screen(daemon, s["id"])
        denied = [
            r for r in audit(daemon) if r["action"] == "session.write" and r["result"] == "denied"
        ]
        assert len(denied) == 1 and denied[0]["details"]["bytes"] == 1


async def test_keystrokes_are_not_shown_to_policies_when_none_takes_data(tachi_home):
    import tachi
    from tachi.hookspecs import hookimpl
    from tachi.models import SessionRequest
    from tachi.testing import inprocess_daemon

    class Counting:
        calls = 0

        @hookimpl
        def tachi_authorize(self, principal, action, session):
            Counting.calls += 1

    async with (
        inprocess_daemon(tachi_home, [Counting()]) as daemon,
        await tachi.AsyncClient.connect(daemon.config.socket, autostart=False) as client,
    ):
        assert daemon.filters_input is False
        s = await client.create(SessionRequest(command=["cat"]))
        before = Counting.calls
        for _ in range(20):
            await client.send(s.id, "x")
        # One check per request (session.write on resolve), none per piece of input.
        assert Counting.calls - before == 20


# -- a token scheme of one's own ----------------------------------------------------


def test_a_plugins_own_tokens_reach_its_authenticate_and_are_audited_with_their_kind(
    tachi_home, tmp_path
):
    with daemon_with(tachi_home, tmp_path / "site", {"acme": ACME}) as daemon:
        created = daemon.run("new", "-d", "--json", "--", "cat", env={"TACHI_TOKEN": "acme-7f3a9c"})
        assert created.returncode == 0, created.stderr
        sid = json.loads(created.stdout)["id"]
        (record,) = [r for r in audit(daemon) if r["action"] == "session.create"]
        assert record["principal"] == "alice" and record["session"] == sid
        assert record["details"]["principalKind"] == "acme"
        # (The plugin's refusal of the daemon's own user is overridden, but the
        # token it presented is still checked, and it is no tachi grant.)
        wrong = daemon.run("ls", env={"TACHI_TOKEN": "acme-guessed"})
        assert wrong.returncode == 4 and "token" in wrong.stderr
        # A token of a form nobody takes is refused, not ignored (the local user
        # would otherwise act as itself).
        nobodys = daemon.run("ls", env={"TACHI_TOKEN": "kerberos-xyz"})
        assert nobodys.returncode == 4 and "not a tachi token" in nobodys.stderr
        # tachi's own tokens still work beside the plugin's.
        mine = daemon.new("cat")["id"]
        share = json.loads(daemon.run("share", mine, "--role", "observer", "--json").stdout)
        seen = daemon.run("capture", mine, env={"TACHI_TOKEN": share["token"]})
        assert seen.returncode == 0, seen.stderr


# -- plugins that answer garbage are refused at start ----------------------------------

BAD_MUX = """
import tachi

@tachi.hookimpl
def tachi_multiplexer():
    return "garbage"
"""

BAD_SCREEN = """
import tachi

@tachi.hookimpl
def tachi_create_screen(cols, rows):
    return "garbage"
"""

BAD_RECORDER = """
import tachi

class Half:
    format = "asciicast"   # would shadow the built-in asciicast recorder
    extension = ".cast"

@tachi.hookimpl
def tachi_recorders(register):
    register(Half())
"""


def test_plugins_answering_garbage_are_named_once_at_start_and_the_built_ins_serve(
    tachi_home, tmp_path
):
    bad = {"badmux": BAD_MUX, "badscreen": BAD_SCREEN, "badrec": BAD_RECORDER}
    with daemon_with(tachi_home, tmp_path / "site", bad) as daemon:
        assert len(log_lines(daemon, "plugin badmux is not used for tachi_multiplexer")) == 1
        assert len(log_lines(daemon, "plugin badscreen is not used for tachi_create_screen")) == 1
        assert len(log_lines(daemon, "plugin badrec is not used for tachi_recorders", "open")) == 1
        s = daemon.new("cat", record=True)
        daemon.run("send", s["id"], "still works\n", check=True)
        assert until(lambda: "still works" in screen(daemon, s["id"]))
        daemon.run("window", "new", s["id"], check=True)
        recordings = json.loads(daemon.run("record", "ls", "--json", check=True).stdout)
        assert [r["sessionId"] for r in recordings if not r.get("error")] == [s["id"]]


def test_with_no_usable_multiplexer_left_the_daemon_refuses_to_start_saying_why(
    tachi_home, tmp_path
):
    with (
        pytest.raises(RuntimeError) as failed,
        daemon_with(
            tachi_home,
            tmp_path / "site",
            {"badmux": BAD_MUX},
            TACHI_DISABLE_PLUGINS="tachi.builtins.windows",
        ),
    ):
        pass
    assert "tachid: no usable multiplexer (tachi_multiplexer): refused badmux" in str(failed.value)
