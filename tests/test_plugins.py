"""Plugins: hooks are called, denials win, built-ins are listed like any plugin."""

from __future__ import annotations

import asyncio
import json

import pytest

import tachi
from tachi.errors import PermissionDenied
from tachi.models import SessionRequest
from tachi.plugins import make_plugin_manager
from tachi.testing import inprocess_daemon


class DenySignals:
    @tachi.hookimpl
    def tachi_authorize(self, principal, action, session):
        return False if action == "session.signal" else None


class RecordEvents:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.audit: list[dict] = []

    @tachi.hookimpl
    def tachi_session_event(self, session, event, details):
        self.events.append(event)

    @tachi.hookimpl
    def tachi_audit_event(self, event):
        self.audit.append(event)


async def test_a_plugin_that_denies_an_action_wins(tachi_home):
    recorder = RecordEvents()
    async with inprocess_daemon(tachi_home, [DenySignals(), recorder]) as daemon:
        client = await tachi.AsyncClient.connect(daemon.config.socket, autostart=False)
        async with client:
            s = await client.create(SessionRequest(command=["sleep", "300"]))
            with pytest.raises(PermissionDenied):
                await client.send_signal(s.id, "INT")
            # Everything not denied still works for the owner.
            await client.send(s.id, "x")
            await client.close(s.id)
            await asyncio.sleep(0.1)
    assert "created" in recorder.events and "closed" in recorder.events
    denied = [e for e in recorder.audit if e["result"] == "denied"]
    assert denied and denied[0]["action"] == "session.signal" and denied[0]["session"] == s.id


def test_builtins_register_through_the_hooks():
    pm = make_plugin_manager(load_entrypoints=False)
    names = {name for name, _ in pm.list_name_plugin()}
    assert {
        "tachi.builtins.unix_socket",
        "tachi.builtins.acl",
        "tachi.builtins.windows",
        "tachi.builtins.avt_screen",
    } <= names
    assert pm.hook.tachi_multiplexer().__name__ == "WindowMultiplexer"


def test_tachi_plugins_lists_what_is_loaded_and_from_where(tachi_daemon):
    listed = json.loads(tachi_daemon.run("plugins", "--json", check=True).stdout)
    by_name = {p["name"]: p for p in listed}
    acl = by_name["tachi.builtins.acl"]
    assert acl["builtin"] and "tachi_authorize" in acl["hooks"] and acl["module"].endswith("acl.py")


class UpperScreen:
    """Wraps the built-in emulator and upper-cases what capture shows."""

    @tachi.hookimpl(tryfirst=True)
    def tachi_create_screen(self, cols, rows):
        from tachi.builtins.avt_screen import AvtScreen

        class Upper(AvtScreen):
            def lines(self):
                return [line.upper() for line in super().lines()]

        return Upper(cols, rows)


async def test_a_plugin_can_replace_the_screen(tachi_home):
    async with (
        inprocess_daemon(tachi_home, [UpperScreen()]) as daemon,
        await tachi.AsyncClient.connect(daemon.config.socket, autostart=False) as client,
    ):
        s = await client.create(
            SessionRequest(command=["bash", "-c", "echo quiet words; sleep 30"])
        )
        # Only the plugin's screen has it upper-cased: matching proves it is in use.
        await client.wait(s.id, match="QUIET WORDS", timeout=5)
        assert "QUIET WORDS" in await client.capture(s.id)


def test_a_plugin_adds_a_cli_command(monkeypatch, capsys):
    import click

    from tachi.cli import main as cli_main
    from tachi.plugins import make_plugin_manager as real_pm

    class HelloCommand:
        @tachi.hookimpl
        def tachi_register_commands(self, cli):
            @cli.command("hello")
            @click.argument("who")
            def hello(who):
                """Say hello."""
                click.echo(f"hello {who} from a plugin")

    def pm_with_plugin(**kwargs):
        pm = real_pm(load_entrypoints=False)
        pm.register(HelloCommand())
        return pm

    monkeypatch.setattr("tachi.plugins.make_plugin_manager", pm_with_plugin)
    monkeypatch.setattr("sys.argv", ["tachi", "hello", "world"])
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli_main.main()
    finally:
        cli_main.cli.commands.pop("hello", None)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == "hello world from a plugin\n"


class WatchStates:
    """Sees the session's state at each event, and lists sessions from inside the
    spawn (the moment a concurrent ``ls`` would)."""

    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []
        self.daemon = None
        self.listed_while_pending: list[str] = []

    @tachi.hookimpl
    def tachi_session_event(self, session, event, details):
        self.states.append((event, str(session.info.state)))
        if event == "created" and self.daemon is not None:
            from tachi.models import SessionFilter

            listed = self.daemon.manager.list(SessionFilter())
            self.listed_while_pending = [str(s.state) for s in listed if s.id == session.id]


async def test_a_session_is_pending_until_its_process_started(tachi_home):
    watcher = WatchStates()
    async with inprocess_daemon(tachi_home, [watcher]) as daemon:
        watcher.daemon = daemon
        client = await tachi.AsyncClient.connect(daemon.config.socket, autostart=False)
        async with client:
            s = await client.create(SessionRequest(command=["sleep", "300"]))
            assert str(s.state) == "suspended"
            with pytest.raises(tachi.errors.InvalidRequest):
                await client.create(SessionRequest(command=["/no/such/program"]))
            listed = await client.list()
    assert watcher.states[:2] == [("created", "pending"), ("state", "suspended")]
    assert watcher.listed_while_pending == ["pending"]
    # A session whose process never started is announced closed, then forgotten.
    assert ("closed", "pending") in watcher.states
    assert [x.id for x in listed] == [s.id]
