"""Session commands: new, ls, get, attach, detach, close, resize, signal, send, capture, wait."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import click

from tachi.cli.completion import complete_session
from tachi.cli.main import Context, cli, env_pairs, json_option, pass_ctx, token_option
from tachi.cli.output import ago, emit_json, fields, plural, table, warn
from tachi.errors import InvalidRequest, TachiError
from tachi.models import MAX_COLS, MAX_ROWS


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from tachi.gotime import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command("new")
@click.option("-d", "--detached", is_flag=True, help="Do not attach after creating.")
@click.option("--name", help="A unique name to use instead of the id.")
@click.option("--agent", help="Agent id (default: config agent_id, else the host name).")
@click.option("--term", default=None, help="TERM for the session (default xterm-256color).")
@click.option(
    "--rows", type=click.IntRange(1, MAX_ROWS), help="Rows (default: this terminal's, else 24)."
)
@click.option(
    "--cols",
    type=click.IntRange(1, MAX_COLS),
    help="Columns (default: this terminal's, else 80).",
)
@click.option(
    "--idle-timeout",
    callback=_duration,
    help="Close after this long without input or output (90s, 30m, 0=none).",
)
@click.option(
    "--max-duration", callback=_duration, help="Close this long after creation (8h, 0=none)."
)
@click.option("--record", is_flag=True, help="Record the session (asciicast).")
@click.option(
    "-c",
    "--cwd",
    type=click.Path(file_okay=False),
    help="Working directory of the first window (default: this one; must exist).",
)
@click.option(
    "-A",
    "attach_existing",
    is_flag=True,
    help="With --name: attach to the live session of that name if there is one.",
)
@click.option(
    "-e",
    "--env",
    "env",
    multiple=True,
    metavar="K=V",
    help="Extra environment variable (repeatable).",
)
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def new(
    ctx: Context,
    detached: bool,
    name: str | None,
    agent: str | None,
    term: str | None,
    rows: int | None,
    cols: int | None,
    idle_timeout: int | None,
    max_duration: int | None,
    record: bool,
    cwd: str | None,
    attach_existing: bool,
    env: tuple[str, ...],
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Create a session running COMMAND (default: your login shell), then attach.

    \b
    Examples:
      tachi new                              # a shell, attached
      tachi new -d --json -- make test       # for scripts: prints the session
      tachi new -d --name build --idle-timeout 30m -- bash
      tachi new -A --name work               # attach to 'work', creating it if needed
    """
    from tachi.models import PTYConfig, SessionRequest

    if not detached and not sys.stdin.isatty():
        detached = True
    if attach_existing:
        if not name:
            raise click.UsageError("-A needs --name (the session to attach to or create)")
        existing = _live_named(ctx, name)
        if existing is not None:
            if as_json:
                emit_json(existing.to_json())
            elif detached:
                click.echo(existing.name or existing.id)
            if not detached:
                _attach(ctx, existing.id, read_only=False, window=None)
            return
    size = _terminal_size()
    extra_env = env_pairs(env)
    req = SessionRequest(
        agentId=agent,
        name=name,
        command=list(command),
        pty=PTYConfig(term=term or "", rows=rows or size[0], cols=cols or size[1]),
        idleTimeout=idle_timeout,
        maxDuration=max_duration,
        record=record,
        env=extra_env,
        cwd=cwd if cwd is not None else (None if ctx.host else _here()),
    )
    with ctx.client() as client:
        session = client.create(req)
        if record:
            _warn_if_unrecorded(client, session.id)
    if as_json:
        emit_json(session.to_json())
    elif detached:
        click.echo(session.name or session.id)
    if not detached:
        _attach(ctx, session.id, read_only=False, window=None)


def _warn_if_unrecorded(client: Any, session_id: str) -> None:
    """`new --record`: the session runs even when its recording could not start
    (exit 0, as the session exists); say so on stderr, with the reason."""
    recs = client.call("record.list", session=session_id)
    if recs and not recs[-1].get("error"):
        return  # recording (or already done: a command that ended at once)
    reason = recs[-1]["error"] if recs else "no recording was started (see daemon.log)"
    warn(f"tachi: warning: session {session_id} runs unrecorded: {reason}")


def _here() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the directory was removed under us: the daemon picks $HOME
        return None


def _live_named(ctx: Context, name: str) -> Any:
    """The live session called ``name``, or ``None``."""
    from tachi.errors import NotFound
    from tachi.models import SessionState

    with ctx.client() as client:
        try:
            found = client.get(name)
        except NotFound:
            return None
    return found if found.state != SessionState.CLOSED else None


def _terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdin.fileno())
        return size.lines, size.columns
    except OSError:
        return 24, 80


@cli.command("ls")
@click.option(
    "--state",
    type=click.Choice(["pending", "active", "suspended", "closed", "live"]),
    help="Only sessions in this state (live = not closed).",
)
@click.option("-a", "--all", "show_all", is_flag=True, help="Closed sessions too (the history).")
@click.option("--agent", help="Only sessions of this agent.")
@click.option("--user", help="Only sessions of this user.")
@json_option
@pass_ctx
def ls(
    ctx: Context,
    state: str | None,
    show_all: bool,
    agent: str | None,
    user: str | None,
    as_json: bool,
) -> None:
    """List live sessions; --all adds closed ones (kept for [session] retention, default
    30 days; 'tachi prune' forgets them sooner)."""
    from tachi.models import SessionFilter, SessionState

    flt = SessionFilter(
        state=SessionState(state) if state and state != "live" else None,
        agentId=agent,
        userId=user,
        live=state == "live" or (state is None and not show_all),
    )
    with ctx.client() as client:
        # The table asks for its columns only: at 1,000 sessions, half the bytes to
        # send and decode, and no models to build (81 -> 58 ms here).
        sessions = client.list_json(flt, fields=None if as_json else _LS_FIELDS)
    if as_json:
        emit_json(sessions)
        return
    if not sessions:
        click.echo("no sessions" if show_all or state else "no live sessions", err=True)
        return
    rows = []
    for s in sessions:
        reason, pty = s.get("closeReason"), s.get("pty")
        rows.append(
            [
                s["id"],
                s.get("name") or "-",
                f"{s.get('state')} ({reason})" if reason else s.get("state"),
                s.get("userId"),
                s.get("agentId"),
                f"{pty['cols']}x{pty['rows']}" if pty else "",
                len(s.get("windows") or ()) or "-",
                ago(s.get("createdAt")),
                " ".join(s.get("command") or ())[:40],
            ]
        )
    table(["ID", "NAME", "STATE", "USER", "AGENT", "SIZE", "WIN", "CREATED", "COMMAND"], rows)


_LS_FIELDS = (
    "name", "state", "closeReason", "userId", "agentId", "pty.cols", "pty.rows",
    "windows.id", "createdAt", "command",
)  # fmt: skip


@cli.command("get")
@click.argument("session", shell_complete=complete_session)
@json_option
@token_option
@pass_ctx
def get(ctx: Context, session: str, as_json: bool) -> None:
    """Show one session (by id or name)."""
    with ctx.client() as client:
        s = client.get(session)
    if as_json:
        emit_json(s.to_json())
        return
    fields(s.to_json(), 13, skip=("windows", "pty"))
    if s.pty:
        click.echo(f"{'size':13} {s.pty.cols}x{s.pty.rows} ({s.pty.term})")
    for w in s.windows:
        click.echo(f"window {w.id}{'*' if w.active else ' '}    {w.name} (pid {w.pid})")


@cli.command("attach")
@click.argument("session", required=False, shell_complete=complete_session)
@click.option("-r", "--read-only", is_flag=True, help="Watch only: never type or resize.")
@click.option("-w", "--window", type=int, help="Select this window on attach.")
@click.option("-d", "--detach-others", is_flag=True, help="Detach every other client first.")
@token_option
@pass_ctx
def attach_cmd(
    ctx: Context, session: str | None, read_only: bool, window: int | None, detach_others: bool
) -> None:
    """Attach this terminal to SESSION (default: the most recently used live session).
    Prefix key C-\\ then d detaches.

    \b
    After the prefix: d detach, c new window, n/p next/previous window,
    0-9 select window, w list windows, ',' rename window, prefix again sends it.
    Exit status: 0 detached, the command's exit code if it exited, 1 if the
    session was closed otherwise or the daemon went away.
    """
    if session is None:
        session = _most_recent(ctx)
    _attach(ctx, session, read_only=read_only, window=window, detach_others=detach_others)


def _most_recent(ctx: Context) -> str:
    """The live session with the latest activity. Raises ``NotFound`` if none is live."""
    from tachi.errors import NotFound
    from tachi.models import SessionFilter

    with ctx.client() as client:
        live = client.list(SessionFilter(live=True))
    if not live:
        raise NotFound("no live session to attach to (start one with 'tachi new')")
    return max(live, key=lambda s: (s.lastActivity, s.createdAt)).id


def _attach(
    ctx: Context,
    session: str,
    *,
    read_only: bool,
    window: int | None,
    detach_others: bool = False,
) -> None:
    from tachi import config as config_mod
    from tachi.cli.attach import attach
    from tachi.cli.keys import parse_key

    _refuse_nesting(ctx, session)
    cfg = config_mod.load()
    try:
        prefix = parse_key(cfg.prefix_key)
    except ValueError as exc:
        raise InvalidRequest(f"config prefix_key: {exc}") from None
    outcome = attach(
        ctx.endpoint,
        session,
        token=ctx.token,
        read_only=read_only,
        window=window,
        prefix=prefix,
        detach_others=detach_others,
    )
    click.echo(f"[{outcome.message}]", err=True)
    sys.exit(outcome.status)


def _refuse_nesting(ctx: Context, session: str) -> None:
    """Inside a tachi session, attaching nests one client in another (as in tmux):
    warn, and refuse outright when it is the very session we are in, named by
    its id or its name (its output would feed itself for ever)."""
    inside = os.environ.get("TACHI_SESSION")
    if not inside or not sys.stdin.isatty():
        return
    if session != inside and ctx.host is None:
        # A name (or a prefix of the id): ask the daemon which session it is.
        with contextlib.suppress(TachiError), ctx.client() as client:
            session = client.get(session).id
    if session == inside:
        raise InvalidRequest(
            f"refusing to attach session {inside} to itself (this shell runs inside it)"
        )
    click.echo(
        f"tachi: warning: attaching from inside session {inside} (nested); "
        "the inner prefix key is sent by pressing the prefix twice",
        err=True,
    )


@cli.command("detach")
@click.argument("session", shell_complete=complete_session)
@click.option("--client", "client_id", type=int, help="Only this client (see 'tachi clients').")
@token_option
@pass_ctx
def detach(ctx: Context, session: str, client_id: int | None) -> None:
    """Detach the clients attached to SESSION (or one of them); the session keeps running."""
    with ctx.client() as client:
        n = client.detach(session, client=client_id)
    click.echo(f"detached {plural(n, 'client')}", err=True)


@cli.command("clients")
@click.argument("session", shell_complete=complete_session)
@json_option
@token_option
@pass_ctx
def clients_cmd(ctx: Context, session: str, as_json: bool) -> None:
    """List the clients attached to SESSION: id, who, role, size, since when."""
    with ctx.client() as client:
        attached = client.clients(session)
    if as_json:
        emit_json(attached)
        return
    if not attached:
        click.echo("no clients attached", err=True)
        return
    table(
        ["ID", "PRINCIPAL", "ROLE", "SIZE", "SINCE", "FROM"],
        [
            [
                f"{c['id']}{'*' if c.get('self') else ''}",
                c["principal"],
                c["role"] + (" (read-only)" if c["readOnly"] and c["role"] != "observer" else ""),
                f"{c['size']['cols']}x{c['size']['rows']}" if c["size"] else "-",
                ago(c["since"]),
                c["source"],
            ]
            for c in attached
        ],
    )


@cli.command("rename")
@click.argument("session", shell_complete=complete_session)
@click.argument("name")
@json_option
@pass_ctx
def rename(ctx: Context, session: str, name: str, as_json: bool) -> None:
    """Rename SESSION to NAME (unique among live sessions; '' removes the name)."""
    with ctx.client() as client:
        s = client.rename(session, name)
    if as_json:
        emit_json(s.to_json())


@cli.command("prune")
@click.option(
    "--older-than",
    default="0s",
    callback=_duration,
    help="Only sessions closed at least this long ago (e.g. 7d; default: all closed).",
)
@json_option
@pass_ctx
def prune(ctx: Context, older_than: int, as_json: bool) -> None:
    """Forget closed sessions from the history ('ls --all'); live ones are untouched."""
    with ctx.client() as client:
        removed = client.prune(older_than)
    if as_json:
        emit_json({"removed": removed})
        return
    click.echo(f"forgot {plural(removed, 'closed session')}", err=True)


@cli.command("close")
@click.argument("session", shell_complete=complete_session)
@json_option
@token_option
@pass_ctx
def close(ctx: Context, session: str, as_json: bool) -> None:
    """Close SESSION: hang up its processes and detach its clients."""
    with ctx.client() as client:
        s = client.close(session)
    if as_json:
        emit_json(s.to_json())


@cli.command("resize")
@click.argument("session", shell_complete=complete_session)
@click.option("--rows", type=click.IntRange(1, MAX_ROWS), required=True)
@click.option("--cols", type=click.IntRange(1, MAX_COLS), required=True)
@click.option("--xpixel", type=click.IntRange(0, 65535), default=0)
@click.option("--ypixel", type=click.IntRange(0, 65535), default=0)
@token_option
@pass_ctx
def resize(ctx: Context, session: str, rows: int, cols: int, xpixel: int, ypixel: int) -> None:
    """Resize every window of SESSION (the program gets SIGWINCH)."""
    from tachi.models import PTYConfig

    with ctx.client() as client:
        client.resize(session, PTYConfig(rows=rows, cols=cols, xPixel=xpixel, yPixel=ypixel))


@cli.command("signal")
@click.argument("session", shell_complete=complete_session)
@click.argument("sig", metavar="SIG")
@click.option("-w", "--window", type=int, help="Window (default: the active one).")
@token_option
@pass_ctx
def signal_cmd(ctx: Context, session: str, sig: str, window: int | None) -> None:
    """Send SIG (INT, SIGINT or 2) to the foreground process group of SESSION."""
    with ctx.client() as client:
        client.send_signal(session, sig, window=window)


@cli.command("send")
@click.argument("session", shell_complete=complete_session)
@click.argument("text")
@click.option("-w", "--window", type=int, help="Window (default: the active one).")
@click.option("-l", "--literal", is_flag=True, help="Send TEXT as is, without escape processing.")
@token_option
@pass_ctx
def send(ctx: Context, session: str, text: str, window: int | None, literal: bool) -> None:
    r"""Type TEXT into SESSION. C escapes apply: \n \r \t \e \x03 \u20ac \\."""
    from tachi.cli.keys import decode_escapes

    if not literal:
        try:
            text = decode_escapes(text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="TEXT") from None
    with ctx.client() as client:
        client.send(session, text, window=window)


@cli.command("capture")
@click.argument("session", shell_complete=complete_session)
@click.option("-w", "--window", type=int, help="Window (default: the active one).")
@click.option("--ansi", is_flag=True, help="Include colours and cursor as escape sequences.")
@click.option("--history", "all_history", is_flag=True, help="Start with all the scrollback.")
@click.option(
    "-S",
    "--start",
    metavar="-N|-",
    help="Start N lines back in the scrollback ('-': its beginning), like tmux capture-pane -S.",
)
@token_option
@pass_ctx
def capture(
    ctx: Context,
    session: str,
    window: int | None,
    ansi: bool,
    all_history: bool,
    start: str | None,
) -> None:
    """Print SESSION's current screen (trailing blank lines dropped), optionally
    preceded by scrollback."""
    history = None
    if all_history or start == "-":
        history = -1
    elif start is not None:
        try:
            history = -int(start)
        except ValueError:
            history = -1
        if history < 0:
            raise click.BadParameter(
                f"{start!r}: use a negative line number or '-'", param_hint="-S"
            )
    with ctx.client() as client:
        text = client.capture(session, window=window, ansi=ansi, history=history)
    # Not click.echo: it strips escape sequences when stdout is not a terminal.
    sys.stdout.write(text)
    sys.stdout.flush()


@cli.command("wait")
@click.argument("session", shell_complete=complete_session)
@click.option(
    "--match",
    "patterns",
    multiple=True,
    metavar="REGEX",
    help="Regex to wait for (repeat it: the first to match wins; its index is in --json).",
)
@click.option(
    "--new", "only_new", is_flag=True, help="Only output after this call (not the screen)."
)
@click.option(
    "--since", type=click.IntRange(0), metavar="POS", help="Only output after position POS."
)
@click.option(
    "--exit", "wait_exit", is_flag=True, help="Wait for the session to end; exit with its code."
)
@click.option(
    "--timeout", type=click.FloatRange(0), help="Give up after this many seconds (exit 124)."
)
@click.option("-w", "--window", type=int, help="Window for --match (default: the active one).")
@json_option
@token_option
@pass_ctx
def wait(
    ctx: Context,
    session: str,
    patterns: tuple[str, ...],
    only_new: bool,
    since: int | None,
    wait_exit: bool,
    timeout: float | None,
    window: int | None,
    as_json: bool,
) -> None:
    """Block until a pattern appears or the session exits.

    --match succeeds as soon as the regex (RE2 syntax, multi-line) matches
    the window's current screen, or the output it produces after the call with
    escape sequences removed; it prints the matched text. With --new only
    output after the call counts (text already on the screen never matches);
    with --since POS only output after that position (the "position" of an
    earlier --json result). Several --match: the earliest match wins; --json
    prints {outcome, index, pattern, matched, before, position}. Exit 124 on
    timeout, 3 if the window's program ended first.
    """
    import json

    if not patterns and not wait_exit:
        raise click.UsageError("give --match REGEX or --exit")
    if (only_new or since is not None) and not patterns:
        raise click.UsageError("--new and --since go with --match")
    if only_new and since is not None:
        raise click.UsageError("give --new or --since, not both")
    with ctx.client() as client:
        if patterns:
            if only_new or since is not None or len(patterns) > 1:
                result = client.wait(
                    session,
                    match=list(patterns),
                    timeout=timeout,
                    window=window,
                    new=only_new,
                    since=since,
                )
            else:
                result = client.wait(session, match=patterns[0], timeout=timeout, window=window)
            click.echo(json.dumps(result) if as_json else result["matched"])
        if wait_exit:
            result = client.wait(session, exit=True, timeout=timeout)
            code = result.get("exitCode")
            if code is None:
                click.echo(
                    f"tachi: session {session} closed ({result.get('closeReason')})"
                    " without an exit code",
                    err=True,
                )
                sys.exit(1)
            sys.exit(int(code))
