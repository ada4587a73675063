"""Every CLI capability has a method on both clients, with the same parameters."""

from __future__ import annotations

import inspect

import click

from tachi.cli.main import COMMAND_MODULES, cli
from tachi.client.aio import AsyncClient
from tachi.client.sync import Client

API = {
    "new": "create", "ls": "list", "get": "get", "attach": "attach", "detach": "detach",
    "clients": "clients", "rename": "rename", "prune": "prune", "close": "close",
    "resize": "resize", "signal": "send_signal", "send": "send", "capture": "capture",
    "wait": "wait", "run": "run", "exec": "exec", "events": "events",
    "window new": "new_window", "window ls": "list_windows", "window select": "switch_window",
    "window close": "close_window", "window rename": "rename_window",
    "record start": "start_recording", "record stop": "stop_recording",
    "record ls": "list_recordings", "record export": "read_recording",
    "record rm": "remove_recording", "share": "share", "share ls": "grants",
    "revoke": "revoke", "token rotate": "rotate_token", "handoff": "handoff",
    "audit": "audit", "audit verify": "verify_audit", "daemon status": "status",
    "record verify": "verify_recordings",
    "run start": "run", "run wait": "run_wait", "run output": "run_output", "run ls": "run_list",
}  # fmt: skip
#: Commands that manage the local daemon or this terminal, not sessions.
NOT_API = {
    "daemon start", "daemon stop", "daemon restart", "daemon upgrade", "plugins", "play",
    "daemon listen", "daemon unlisten", "daemon listeners", "daemon reload",
    "token create", "token ls", "token revoke", "share create",
}  # fmt: skip


def _commands() -> set[str]:
    ctx = click.Context(cli)
    names = set()
    for name in COMMAND_MODULES:
        command = cli.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            sub = click.Context(command, parent=ctx)
            names |= {f"{name} {s}" for s in command.list_commands(sub)}
            if command.invoke_without_command:
                names.add(name)
        else:
            names.add(name)
    return names


def test_every_command_is_mapped():
    assert _commands() - set(API) - NOT_API == set()


def test_both_clients_have_each_method_with_the_same_parameters():
    for command, method in API.items():
        sync, aio = getattr(Client, method, None), getattr(AsyncClient, method, None)
        assert sync is not None and aio is not None, (command, method)
        assert list(inspect.signature(sync).parameters) == list(
            inspect.signature(aio).parameters
        ), method
