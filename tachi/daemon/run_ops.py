"""``session.run``: type a command into a session's shell, wait for it to finish,
and return its output and exit status.

With shell integration (bash, zsh, fish started by tachi) the shell's own OSC
133 marks delimit the command. Otherwise the typed line is wrapped in a unique
sentinel: ``printf`` prints a start mark and an end mark carrying ``$?``, so
any POSIX shell works. Output comes from the window's stream, not the screen,
so it is complete however long it is. Runs on one window wait for each other.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

from tachi.core.command_marks import command_output
from tachi.core.shell_integration import shell_of
from tachi.core.window import strip_escapes
from tachi.daemon.ops import RequestContext, arg_float, arg_int, arg_str, operation
from tachi.errors import InvalidRequest, TimedOut
from tachi.gotime import format_rfc3339, now_ns

#: The most output one run returns; more is cut from the front (it is in the
#: session's scrollback and recording anyway).
MAX_RUN_OUTPUT = 16 * 1024 * 1024
# zsh's PROMPT_SP: a reverse-video % or # and a line of spaces, printed after
# every command before its prompt hooks run, so it lands inside the marks.
_ZSH_PROMPT_SP = re.compile(rb"(?:\x1b\[[0-9;]*m)*[%#](?:\x1b\[[0-9;]*m)* +\r \r$")


def typed_line(command: str, shell: str | None, ident: str | None) -> str:
    """What to type: the command itself with integration, else wrapped in marks
    that carry ``ident`` and the exit status. A leading space keeps it out of
    bash's and zsh's history when they ignore such lines."""
    if ident is None:
        return command
    status = "$status" if shell == "fish" else "$?"
    start = f"printf '\\033]133;C;{ident}\\007'"
    end = f"printf '\\033]133;D;%s;{ident}\\007' {status}"
    return f" {start}; {command}; {end}"


@operation("session.run")
async def run(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    from tachi.daemon.session_ops import _live

    session = _live(ctx, args, "session.write")
    ctx.connection.deny_if_read_only("running commands")
    window = session.mux.get(arg_int(args, "window"))
    command = arg_str(args, "command") or ""
    if not command.strip() or "\n" in command or "\r" in command:
        raise InvalidRequest("command must be one non-empty line")
    timeout = arg_float(args, "timeout")
    async with window.run_lock:
        shell = shell_of(window.command)
        integrated = window.marks.integrated and shell is not None
        ident = None if integrated else f"tachi-{secrets.token_hex(6)}"
        captured = bytearray()

        def tap(data: bytes) -> None:
            captured.extend(data)
            if len(captured) > 2 * MAX_RUN_OUTPUT:
                del captured[: len(captured) - MAX_RUN_OUTPUT]

        finished = window.marks.wait_finished(ident)
        window.output_taps.append(tap)
        started = now_ns()
        try:
            ctx.daemon.admit_input(ctx.principal, session, len(command))
            session.write((typed_line(command, shell, ident) + "\r").encode(), window.id)
            ctx.daemon.note_input(ctx.principal, session, command.encode())
            try:
                code = await asyncio.wait_for(asyncio.shield(finished), timeout)
            except TimeoutError:
                finished.cancel()
                raise TimedOut(
                    f"{command!r} did not finish within {timeout:g}s;"
                    f" it is still running in window {window.id} of {session.id}"
                ) from None
        finally:
            window.output_taps.remove(tap)
    raw = command_output(bytes(captured), ident)
    if shell == "zsh":
        raw = _ZSH_PROMPT_SP.sub(b"", raw)
    # Text for programs: newlines, not CR LF, and no carriage return a shell sent
    # to redraw at the start of a line.
    output = re.sub(rb"(?m)^\r+", b"", strip_escapes(raw).replace(b"\r\n", b"\n"))
    ctx.daemon.audit_by(
        ctx.principal,
        "session.run",
        session.id,
        details={"window": window.id, "command": command, "exitCode": code},
    )
    return {
        "window": window.id,
        "command": command,
        "output": output.decode(errors="replace"),
        "exitCode": code,
        "startedAt": format_rfc3339(started),
        "duration": now_ns() - started,
    }
