"""Driving terminals from programs: run, exec, events."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from tachi.cli.completion import complete_session
from tachi.cli.main import Context, cli, env_pairs, json_option, pass_ctx, token_option


class _RunGroup(click.Group):
    """``tachi run SESSION -- CMD`` runs a command; ``tachi run wait|output|ls``
    work on runs already started (as ``tachi share`` does)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@cli.group("run", cls=_RunGroup)
def run_group() -> None:
    """Run a command in a session's shell: its output alone, its exit status.

    \b
    tachi run SESSION [--timeout S] [--max-output BYTES] [--detach] -- COMMAND
    tachi run wait RUN [--timeout S]        a detached or timed-out run's result
    tachi run output RUN [--follow]         its output so far (then as it comes)
    tachi run ls SESSION                    the runs a session keeps
    (A session named wait, output, ls or start: tachi run start NAME -- ...)
    """


def _show(data: bytes, omitted: int) -> None:
    """Print streamed output as it comes; a gap is said on stderr."""
    if omitted:
        sys.stdout.buffer.flush()
        sys.stderr.write(f"\ntachi: {omitted} bytes of output omitted\n")
        sys.stderr.flush()
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def _exit_with(result: dict[str, Any]) -> None:
    code = result.get("exitCode")
    code = -1 if code is None else int(code)
    sys.exit(code if 0 <= code <= 255 else 1)


def _timed_out(exc: Any) -> None:
    """Say how to collect a run that timed out, then exit 124."""
    if getattr(exc, "run", None):
        sys.stderr.write(f"tachi: {exc}\n")
        sys.exit(exc.exit_status)
    raise exc


@run_group.command("start", hidden=True, context_settings={"ignore_unknown_options": True})
@click.argument("session", shell_complete=complete_session)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-w", "--window", type=int, help="Window (default: the active one).")
@click.option(
    "--timeout",
    type=float,
    help="Give up after S seconds, output flood or not (exit 124; it keeps running,"
    " as a run to collect with 'tachi run wait RUN').",
)
@click.option(
    "--max-output",
    type=int,
    metavar="BYTES",
    help="Show at most BYTES of output: the first and last halves, the gap marked"
    " on stderr (default: all of it; with --json, 16 MiB).",
)
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the command (a script) from stdin.")
@click.option(
    "--detach",
    is_flag=True,
    help="Print the run's id once the command is typed, and return (see 'tachi run wait').",
)
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
    detach: bool,
    as_json: bool,
) -> None:
    """Type COMMAND into SESSION's shell, wait for it, print its output alone and
    exit with its exit status.

    \b
    Examples:
      tachi run build -- make test          # exit status is make's
      tachi run build --json -- 'ls | wc -l'
      tachi run build --stdin < script.sh   # several lines: one command
      RUN=$(tachi run build --detach -- make all); tachi run wait "$RUN"
    The output streams as it comes. 124: timed out (the command is left
    running: 'tachi run wait RUN' collects it); 125: no shell in the window's
    foreground, or an earlier run still going (not typed); 130: interrupted
    (Ctrl-C is passed on to the command).
    """
    from tachi.client.runs import MAX_OUTPUT
    from tachi.errors import TimedOut

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

    with ctx.client() as client:
        try:
            result = client._run(
                session,
                text,
                window,
                timeout,
                (MAX_OUTPUT if max_output is None else max_output) if as_json else max_output,
                None if as_json or detach else _show,
                detach,
            )
        except TimedOut as exc:
            _timed_out(exc)
            raise
        except KeyboardInterrupt:
            # As a local Ctrl-C would: the command gets SIGINT, not just us.
            client.call("session.signal", session=session, signal="INT", window=window)
            sys.stderr.write("tachi: interrupted (SIGINT sent to the command)\n")
            sys.exit(130)
    if detach:
        result.pop("streamed", None)
        click.echo(json.dumps(result, indent=2) if as_json else result["run"])
        return
    if as_json:
        result.pop("streamed", None)
        click.echo(json.dumps(result, indent=2))
    _exit_with(result)


@run_group.command("wait")
@click.argument("run")
@click.option("--timeout", type=float, help="Give up after S seconds (exit 124; it keeps running).")
@json_option
@token_option
@pass_ctx
def run_wait_cmd(ctx: Context, run: str, timeout: float | None, as_json: bool) -> None:
    """Wait for RUN (from --detach, or one that timed out) to end: print its
    output (what the daemon kept: the first and last 128 KiB) and exit with its
    exit status."""
    with ctx.client() as client:
        result = client.call("run.wait", run=run, timeout=timeout)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        sys.stdout.buffer.write(str(result["output"]).encode(errors="surrogateescape"))
        sys.stdout.buffer.flush()
    _exit_with(result)


@run_group.command("output")
@click.argument("run")
@click.option("-f", "--follow", is_flag=True, help="Then print what it writes until it ends.")
@click.option("--timeout", type=float, help="Stop following after S seconds (exit 124).")
@json_option
@token_option
@pass_ctx
def run_output_cmd(
    ctx: Context, run: str, follow: bool, timeout: float | None, as_json: bool
) -> None:
    """Print RUN's output so far (the first and last 128 KiB it kept; the gap
    said on stderr); with --follow, then what it writes until it ends, and exit
    with its status (124 if --timeout came first)."""
    from tachi.client.runs import RunStream

    stream = RunStream(None if as_json else _show)
    args = {"run": run, "follow": follow or None, "timeout": timeout, "stream": stream.tag}
    with ctx.client() as client:
        result = client._streamed("run.output", args, stream, timeout, run)
    if as_json:
        result.pop("streamed", None)
        click.echo(json.dumps(result, indent=2))
    if follow:
        if result.get("state") == "running":
            sys.exit(124)
        _exit_with(result)


@run_group.command("ls")
@click.argument("session", shell_complete=complete_session)
@json_option
@token_option
@pass_ctx
def run_ls_cmd(ctx: Context, session: str, as_json: bool) -> None:
    """The runs SESSION keeps (the last 16 of each window), oldest first."""
    from tachi.models import visible

    with ctx.client() as client:
        runs = client.call("run.list", session=session)
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    for r in runs:
        code = "-" if r.get("exitCode") is None else r["exitCode"]
        click.echo(
            f"{r['run']}  w{r['window']}  {r['state']:<8}  {code!s:>4}"
            f"  {r['duration'] / 1e9:8.2f}s  {visible(r['command'].splitlines()[0][:60])}"
        )


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
