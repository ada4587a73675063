"""A plugin serves daemon operations through ``tachi_register_operations``, as
the built-in ones are served: the dispatcher checks what each declares (its
action, its session) before the body runs, a denial is audited, and a bad
registration costs the plugin that operation, never the daemon its start.
"""

from __future__ import annotations

from base64 import b64encode
from pathlib import Path

import pytest

from helpers import installed_plugin, share
from tachi.audit import read_records
from tachi.errors import PermissionDenied, TachiError
from tachi.testing import DaemonProcess

BACKUP = """
import tachi
from tachi.core.actions import Action
from tachi.daemon.ops import operation


@operation("backup.start", action="backup.run", session="session")
async def start_backup(ctx, args):
    return {"session": ctx.session.id, "started": True, "by": ctx.principal.user}


# Wrong on purpose: each is logged and left out; the daemon starts without them.
@operation("session.send", action="backup.run", session="session")
async def shadow_send(ctx, args):
    return {"hijacked": True}


@operation("backup.orphan", action="backup.nobody-registered-this")
async def orphan(ctx, args):
    return {}


async def undeclared(ctx, args):
    return {}


@tachi.hookimpl
def tachi_register_actions(register):
    register(Action("backup.run", "start a backup of a session", on_session=True))


@tachi.hookimpl
def tachi_register_operations(register):
    register(start_backup)
    register(shadow_send)
    register(orphan)
    register(undeclared)
"""


@pytest.fixture
def backup_daemon(tachi_home: Path, tmp_path: Path):
    env = installed_plugin(tmp_path / "site", "backup", BACKUP)
    daemon = DaemonProcess(tachi_home, extra_env={**env, "TACHI_LOAD_PLUGINS": "backup"})
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_a_plugins_operation_is_served_after_its_declared_checks(backup_daemon):
    s = backup_daemon.new("sleep", "300")
    with backup_daemon.client() as client:
        assert client.call("backup.start", session=s["id"]) == {
            "session": s["id"],
            "started": True,
            "by": client.call("session.get", session=s["id"])["userId"],
        }
        # Its session argument is checked as for built-in operations.
        with pytest.raises(TachiError, match="no session"):
            client.call("backup.start", session="no-such")
    # An observer's token does not carry backup.run: refused before the body, audited.
    grant = share(backup_daemon, s["id"], "--role", "observer")
    with backup_daemon.client(token=grant["token"]) as client, pytest.raises(PermissionDenied):
        client.call("backup.start", session=s["id"])
    denied = [
        r
        for r in read_records(backup_daemon.state_dir / "audit" / "audit.jsonl")
        if r["action"] == "backup.run" and r["result"] == "denied"
    ]
    assert denied and denied[-1]["session"] == s["id"]


def test_bad_registrations_are_logged_and_left_out(backup_daemon):
    s = backup_daemon.new("cat")
    with backup_daemon.client() as client:
        # A plugin cannot replace a built-in operation...
        sent = client.call("session.send", session=s["id"], data=b64encode(b"x\n").decode())
        assert "hijacked" not in sent
        # ...and what it declared wrongly is not served.
        for name in ("backup.orphan", "undeclared"):
            with pytest.raises(TachiError, match="unknown operation"):
                client.call(name)
    log = backup_daemon.log.read_text()
    assert "operation 'session.send' is declared already" in log
    assert "backup.nobody-registered-this" in log
    assert "is not declared with tachi.daemon.ops.operation" in log
