"""Access is decided in one place: every operation declares what it needs, the
dispatcher asks before the operation runs, and no operation body asks itself.

The table is read as the daemon reads it (tachi.daemon.operations); the bodies
are read as source (AST), so a check added inside an operation (or a helper in
its module) fails here, whoever adds it.
"""

from __future__ import annotations

import ast
import inspect

import pluggy
import pytest

from tachi import hookspecs
from tachi.core.actions import Action, ActionRegistry
from tachi.daemon import operations
from tachi.daemon.dispatch import Dispatcher, table_problems
from tachi.daemon.ops import operation
from tachi.hooks import Hooks

TABLE = operations.table()
#: What only the dispatcher may call: the decision, and the lookups that make it.
DECIDERS = {"authorize", "allowed", "_denial", "resolve", "require_local_owner"}


def calls_in(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            names.add(fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", ""))
    return names


def test_the_table_is_the_daemons_operations():
    assert len(TABLE) >= 46
    assert {"session.send", "token.create", "exec.stdin", "client.redraw"} <= set(TABLE)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_no_operation_body_authorises_itself(name):
    body = ast.parse(inspect.getsource(TABLE[name].handler).lstrip())
    assert not calls_in(body) & DECIDERS, f"{name} decides access in its body"


@pytest.mark.parametrize("module", operations.MODULES, ids=lambda m: m.__name__)
def test_no_operation_module_asks_the_policy(module):
    # Helpers too (a body could call one that asks): only the dispatcher asks.
    found = calls_in(ast.parse(inspect.getsource(module))) & DECIDERS
    assert not found, f"{module.__name__} calls {sorted(found)}"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_operation_declares_what_it_needs(name):
    op = TABLE[name]
    assert op.declares_access, f"{name} declares no action, owner or need"
    assert not table_problems({name: op}, ActionRegistry())


@pytest.mark.parametrize(
    "name", sorted(n for n in TABLE if n.startswith("client.") or n.startswith("exec."))
)
def test_a_connection_level_operation_says_what_it_acts_on(name):
    """``client.*`` act on the connection's own attachment or terminal, ``exec.*``
    on its own command: each says so, and what it asks besides."""
    op = TABLE[name]
    acts_on = op.attached or op.exec_job or op.needs is not None or op.owner is not None
    assert acts_on, f"{name} does not say what of the connection it needs"
    if name in ("exec.stdin", "exec.signal"):
        assert op.exec_job and op.action == "exec" and op.owner == "local-or-daemon-token"
    if name in ("client.redraw", "client.resize"):
        assert op.attached and (op.action or op.may)


def test_token_operations_are_for_the_local_owner_only():
    for name in ("token.create", "token.list", "token.revoke"):
        assert TABLE[name].owner == "local", name


def test_a_declared_action_nobody_registered_stops_the_daemon():
    @operation("x.frob", action="x.frob")
    async def frob(ctx, args):
        return None

    table = {**TABLE, "x.frob": frob.__tachi_operation__}
    with pytest.raises(RuntimeError, match=r"x\.frob.*not registered"):
        Dispatcher(table, ActionRegistry())
    registry = ActionRegistry()
    registry.register(Action("x.frob", "frob things"))
    assert "x.frob" in Dispatcher(table, registry).table


def test_an_operation_declaring_nothing_is_refused():
    @operation("x.open")
    async def wide_open(ctx, args):
        return None

    with pytest.raises(RuntimeError, match=r"x\.open declares no action"):
        Dispatcher({"x.open": wide_open.__tachi_operation__}, ActionRegistry())


class _Backup:
    @hookspecs.hookimpl
    def tachi_register_actions(self, register):
        register(Action("backup.run", "start a backup"))
        register(Action("session.write", "a plugin redefining a built-in"))
        register("not an action")


def test_plugins_extend_the_action_registry_but_cannot_redefine_it(caplog):
    pm = pluggy.PluginManager("tachi")
    pm.add_hookspecs(hookspecs)
    pm.register(_Backup(), "backup")
    registry = Hooks(pm).actions()
    assert "backup.run" in registry
    assert registry.get("session.write").description == "send input to a session"
    assert "'session.write' is registered already" in caplog.text
    assert "not a tachi.core.actions.Action" in caplog.text


def test_a_session_target_without_an_action_is_refused():
    @operation("x.peek", session="session", needs="nothing, it thinks")
    async def peek(ctx, args):
        return None

    with pytest.raises(RuntimeError, match="asks no action on it"):
        Dispatcher({"x.peek": peek.__tachi_operation__}, ActionRegistry())
