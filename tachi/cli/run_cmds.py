"""Driving terminals from programs: run, exec, events."""

from __future__ import annotations

import json
import sys

import click

from tachi.cli.completion import complete_session
from tachi.cli.main import Context, cli, env_pairs, json_option, pass_ctx, token_option


@cli.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("session", shell_complete=complete_session)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-w", "--window", type=int, help="Window (default: the active one).")
@click.option(
    "--timeout",
    type=float,
    help="Give up after S seconds, output flood or not (exit 124; it keeps running).",
)
@click.option(
    "--max-output",
    type=int,
    metavar="BYTES",
    help="Show at most BYTES of output: the first and last halves, the gap marked"
    " on stderr (default: all of it; with --json, 16 MiB).",
)
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the command (a script) from stdin.")
@json_option
@token_option
@pass_ctx
def run_cmd(
    ctx: Context,
    session: str,
    command: tuple[str, ...],
    window: int | None,
    timeout: float | None,
    max_output: int | None,
    from_stdin: bool,
    as_json: bool,
) -> None:
    """Type COMMAND into SESSION's shell, wait for it, print its output alone and
    exit with its exit status.

    \b
    Examples:
      tachi run build -- make test          # exit status is make's
      tachi run build --json -- 'ls | wc -l'
      tachi run build --stdin < script.sh   # several lines: one command
    The output streams as it comes. 124: timed out (the command is left
    running); 125: no shell in the window's foreground (not typed); 130:
    interrupted (Ctrl-C is passed on to the command).
    """
    from tachi.client.runs import MAX_OUTPUT

    if from_stdin:
        if command:
            raise click.UsageError("give COMMAND or --stdin, not both")
        text = sys.stdin.read()
    else:
        if not command:
            raise click.UsageError("missing COMMAND (or --stdin)")
        text = " ".join(command)
    if max_output is not None and max_output < 0:
        raise click.UsageError("--max-output must not be negative")
    out = sys.stdout.buffer

    def show(data: bytes, omitted: int) -> None:
        if omitted:
            out.flush()
            sys.stderr.write(f"\ntachi: {omitted} bytes of output omitted (--max-output)\n")
            sys.stderr.flush()
        else:
            out.write(data)
            out.flush()

    with ctx.client() as client:
        try:
            result = client._run(
                session,
                text,
                window,
                timeout,
                (MAX_OUTPUT if max_output is None else max_output) if as_json else max_output,
                None if as_json else show,
            )
        except KeyboardInterrupt:
            # As a local Ctrl-C would: the command gets SIGINT, not just us.
            client.call("session.signal", session=session, signal="INT", window=window)
            sys.stderr.write("tachi: interrupted (SIGINT sent to the command)\n")
            sys.exit(130)
    if as_json:
        result.pop("streamed", None)
        click.echo(json.dumps(result, indent=2))
    code = int(result["exitCode"])
    sys.exit(code if 0 <= code <= 255 else 1)


@cli.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option("--pty", "use_pty", is_flag=True, help="Run on a terminal (stdout+stderr merged).")
@click.option("--cwd", help="Working directory (default: the daemon user's home).")
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="Extra environment.")
@click.option("--timeout", type=float, help="Kill it after S seconds (exit 124).")
@click.option("--record", is_flag=True, help="Record its output (see 'tachi record ls').")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_ctx
def exec_cmd(
    ctx: Context,
    use_pty: bool,
    cwd: str | None,
    env: tuple[str, ...],
    timeout: float | None,
    record: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND on the daemon's host, without a session: its stdout and stderr
    stream to yours, your stdin (and its end) to it, Ctrl-C interrupts it, and
    the exit status is its own.

    \b
    Examples:
      tachi exec -- uname -a
      tachi --host wss://build-7:7681 exec -- make -C /src test
      tar c src | tachi exec -- tar x -C /tmp/copy
    """
    from tachi.cli.exec_client import run_exec

    extra = env_pairs(env)
    sys.exit(
        run_exec(
            ctx.endpoint,
            ctx.token,
            list(command),
            use_pty=use_pty,
            cwd=cwd,
            env=extra,
            timeout=timeout,
            record=record,
        )
    )


@cli.command("events")
@click.argument("session", required=False, shell_complete=complete_session)
@click.option("--output", is_flag=True, help="Output chunks too (needs SESSION).")
@json_option
@token_option
@pass_ctx
def events_cmd(ctx: Context, session: str | None, output: bool, as_json: bool) -> None:
    """Follow what happens to sessions (or SESSION) as it happens, until Ctrl-C.

    \b
    One line per event; --json gives JSON Lines (for programs):
      created, state, closed, window-*, resized, client-attached,
      client-detached, recording-started/-stopped, command-started,
      command-finished (exit code, from shell integration), output (--output).
    """
    if output and not session:
        raise click.UsageError("--output needs a SESSION")
    with ctx.client() as client:
        for event in client.events(session, output=output):
            if as_json:
                click.echo(json.dumps(event, separators=(",", ":")))
                continue
            rest = {k: v for k, v in event.items() if k not in ("event", "type", "session", "time")}
            details = " ".join(f"{k}={v}" for k, v in rest.items())
            click.echo(f"{event.get('time', '')} {event['session']} {event['type']} {details}")
