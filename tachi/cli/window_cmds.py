"""``tachi window``: windows in a session (seed: SessionMultiplexer)."""

from __future__ import annotations

import click

from tachi.cli.completion import complete_session
from tachi.cli.main import Context, cli, json_option, pass_ctx, token_option
from tachi.cli.output import ago, emit_json, table


@cli.group("window")
def window() -> None:
    """Manage the windows of a session (each its own PTY and process)."""


@window.command("new")
@click.argument("session", shell_complete=complete_session)
@click.option("--name", help="Window name (default: the command's name).")
@click.option("-d", "--detached", is_flag=True, help="Do not make it the active window.")
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@token_option
@pass_ctx
def new(
    ctx: Context,
    session: str,
    name: str | None,
    detached: bool,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Open a window in SESSION running COMMAND (default: the session's command)."""
    from tachi.models import Window

    with ctx.client() as client:
        w = Window.from_json(
            client.call(
                "window.new", session=session, command=list(command), name=name, select=not detached
            )
        )
    if as_json:
        emit_json(w.to_json())
    else:
        click.echo(w.id)


@window.command("ls")
@click.argument("session", shell_complete=complete_session)
@json_option
@token_option
@pass_ctx
def ls(ctx: Context, session: str, as_json: bool) -> None:
    """List SESSION's windows; * marks the active one."""
    with ctx.client() as client:
        windows = client.list_windows(session)
    if as_json:
        emit_json([w.to_json() for w in windows])
        return
    table(
        ["ID", "NAME", "PID", "CREATED", "COMMAND"],
        [
            [
                f"{w.id}{'*' if w.active else ''}",
                w.name,
                w.pid,
                ago(w.createdAt),
                " ".join(w.command),
            ]
            for w in windows
        ],
    )


@window.command("select")
@click.argument("session", shell_complete=complete_session)
@click.argument("window_id", type=int)
@token_option
@pass_ctx
def select(ctx: Context, session: str, window_id: int) -> None:
    """Make WINDOW_ID the active window (every attached client redraws)."""
    with ctx.client() as client:
        client.switch_window(session, window_id)


@window.command("close")
@click.argument("session", shell_complete=complete_session)
@click.argument("window_id", type=int)
@token_option
@pass_ctx
def close(ctx: Context, session: str, window_id: int) -> None:
    """Hang up WINDOW_ID's process; closing the last window closes the session."""
    with ctx.client() as client:
        client.close_window(session, window_id)


@window.command("rename")
@click.argument("session", shell_complete=complete_session)
@click.argument("window_id", type=int)
@click.argument("name")
@token_option
@pass_ctx
def rename(ctx: Context, session: str, window_id: int, name: str) -> None:
    """Rename WINDOW_ID to NAME."""
    with ctx.client() as client:
        client.rename_window(session, window_id, name)
