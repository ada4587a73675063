"""The MCP tools: thin, typed wrappers around ``tachi.AsyncClient``.

Every tool call opens a client connection to the daemon as the user who
started ``tachi mcp`` (or the remote daemon of ``--host``), so the daemon
authenticates, authorises and audits it like any other client; an agent can do
exactly what that user can. Errors come back as tool errors with tachi's
one-line message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from tachi.client.aio import AsyncClient
from tachi.errors import TachiError, TimedOut
from tachi.models import PTYConfig, SessionFilter, SessionRequest, SessionState

INSTRUCTIONS = (
    "Drive terminal sessions managed by tachi. Use run_command to run a shell command and "
    "get its output and exit code (stdout and stderr are merged, as on a terminal). It "
    "never hangs past its timeout: a command still running then is left running and the "
    "result says timedOut with a run id; call collect_run with that id to get its output "
    "and exit code later. For interactive programs use send_keys, then wait_for (with "
    "only_new=true so text already on the screen does not match) or read_output since a "
    "position. capture_screen shows what a person attached to the session sees. Results "
    "are compact; pass full=true where offered for every field."
)

#: run_command's default ``max_output``: what an agent's context can take.
MAX_OUTPUT = 32 * 1024
#: The most any tool returns as text in one result.
MAX_TEXT = 512 * 1024

Session = Annotated[str, Field(description="Session id or name (see list_sessions).")]
WindowArg = Annotated[
    int | None,
    Field(description="Window number in the session (default: the active window)."),
]
Full = Annotated[
    bool, Field(description="Return every field of the session (default: a compact summary).")
]


def _compact(session: dict[str, Any]) -> dict[str, Any]:
    """What an agent needs of a session: id, name, state, command, windows."""
    keep = ("id", "name", "state", "command", "exitCode", "closeReason")
    out = {k: session[k] for k in keep if session.get(k) is not None}
    windows = session.get("windows")
    if windows:
        out["windows"] = [
            {k: w.get(k) for k in ("id", "name", "active") if k in w} for w in windows
        ]
    return out


def _run_result(result: Any) -> dict[str, Any]:
    """A run as docs/mcp.md says: output, exitCode, startedAt, duration (s)."""
    out: dict[str, Any] = {
        "output": result.output,
        "exitCode": result.exit_code if result.state != "running" else None,
        "startedAt": result.started_at.isoformat() if result.started_at else None,
        "duration": round(result.duration.total_seconds(), 3),
        "run": result.run,
        "window": result.window,
    }
    if result.omitted:
        out["omittedBytes"] = result.omitted
    if result.state != "finished":
        out["state"] = result.state
    return out


def _cut(text: str, limit: int) -> str:
    """``text`` at most ``limit`` characters: its first and last halves, the
    gap marked."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[tachi: {len(text) - 2 * half} characters omitted]\n{text[-half:]}"


def build_server(
    *, socket: str | None = None, url: str | None = None, options: dict[str, Any] | None = None
) -> MCPServer:
    """An MCP server whose tools act on the daemon at ``socket`` (or ``url``)."""
    server = MCPServer("tachi", instructions=INSTRUCTIONS)

    @asynccontextmanager
    async def tachi() -> AsyncIterator[AsyncClient]:
        # tachi's errors are expected answers (no such session, not allowed, timed
        # out): the agent reads them, as a person reads the CLI's one line.
        try:
            client = await AsyncClient.connect(socket, url=url, options=options)
        except TachiError as exc:
            raise ToolError(f"tachi: {exc}") from None
        try:
            yield client
        except TachiError as exc:
            raise ToolError(f"tachi: {exc}") from None
        finally:
            await client.disconnect()

    @server.tool()
    async def list_sessions(
        include_closed: Annotated[
            bool, Field(description="Also list closed sessions (default: live ones only).")
        ] = False,
        full: Full = False,
    ) -> list[dict[str, Any]]:
        """List the sessions you may see: id, name, state, command, windows."""
        async with tachi() as client:
            sessions = await client.list(SessionFilter())
        shown = [s.to_json() for s in sessions if include_closed or s.state != SessionState.CLOSED]
        return shown if full else [_compact(s) for s in shown]

    @server.tool()
    async def create_session(
        command: Annotated[
            list[str] | None,
            Field(description='Program and arguments, e.g. ["bash"] (default: login shell).'),
        ] = None,
        name: Annotated[str | None, Field(description="A name to find it by.")] = None,
        rows: Annotated[int, Field(description="Terminal height in lines (1-500).")] = 40,
        cols: Annotated[int, Field(description="Terminal width in columns (1-1000).")] = 120,
        cwd: Annotated[str | None, Field(description="Working directory (absolute path).")] = None,
        full: Full = False,
    ) -> dict[str, Any]:
        """Start a session running COMMAND (default: your login shell) on a
        terminal of ROWS x COLS; returns its id."""
        req = SessionRequest(
            name=name,
            command=list(command or []),
            pty=PTYConfig(term="", rows=rows, cols=cols),
            cwd=cwd,
        )
        async with tachi() as client:
            created = (await client.create(req)).to_json()
        return created if full else _compact(created)

    @server.tool()
    async def send_keys(
        session: Session,
        text: Annotated[
            str,
            Field(
                description='Keys to type: "\\n" is Enter, "\\u0003" Ctrl-C,'
                ' "\\u0004" Ctrl-D, "\\u001b" Escape. At most 1 MiB.'
            ),
        ],
        window: WindowArg = None,
    ) -> dict[str, Any]:
        """Type TEXT into the session as a person would; returns the bytes sent
        and the output position before they were typed (pass it to
        read_output or wait_for as since)."""
        async with tachi() as client:
            before = await client.read_output(session, window=window, max_bytes=0)
            sent = await client.send(session, text, window=window)
        return {"bytes": sent, "position": before["position"]}

    @server.tool()
    async def run_command(
        session: Session,
        command: Annotated[
            str,
            Field(
                description="Shell command text, run as one command in the session's shell"
                " (several lines and heredocs are fine; bash, zsh, fish, sh)."
            ),
        ],
        timeout: Annotated[
            float,
            Field(
                description="Seconds to wait (default 120). Past it the command keeps"
                " running and the result has timedOut=true and a run id for collect_run."
            ),
        ] = 120,
        max_output: Annotated[
            int,
            Field(
                description="Bytes of output returned at most (default 32768, up to 524288):"
                " the first and last halves, the gap marked and counted in omittedBytes."
            ),
        ] = MAX_OUTPUT,
        window: WindowArg = None,
    ) -> dict[str, Any]:
        """Run COMMAND in the session's shell and wait for it: returns
        {output, exitCode, startedAt, duration (seconds), run, window}. Output is
        stdout and stderr merged, as the terminal shows them, escape sequences
        removed. Never hangs past TIMEOUT: then {timedOut: true, run, output so
        far}; collect the rest with collect_run. Exit code 125 (error) means a
        program, not a shell, is in front: send_keys to it instead."""
        limit = max(0, min(max_output, MAX_TEXT))
        async with tachi() as client:
            try:
                result = await client.run(
                    session, command, window=window, timeout=timeout, max_output=limit
                )
            except TimedOut as exc:
                return {
                    "timedOut": True,
                    "run": exc.run,
                    "output": _cut(exc.output, limit),
                    "exitCode": None,
                    "hint": f"still running; call collect_run with run={exc.run!r}",
                }
        return _run_result(result)

    @server.tool()
    async def collect_run(
        run: Annotated[str, Field(description="The run id from run_command (tachi-…).")],
        timeout: Annotated[
            float, Field(description="Seconds to wait for it to finish (default 30; 0: don't).")
        ] = 30,
        max_output: Annotated[
            int, Field(description="Characters of output returned at most (default 32768).")
        ] = MAX_OUTPUT,
    ) -> dict[str, Any]:
        """The result of a run that timed out (or was started detached): waits
        up to TIMEOUT seconds for it to finish, then returns {output, exitCode,
        ...}; state "running" with the output so far if it has not. The daemon
        keeps the first and last 128 KiB of each run's output and the last 16
        runs of each window."""
        async with tachi() as client:
            try:
                result = await client.run_wait(run, timeout=timeout)
            except TimedOut:
                result = await client.run_output(run)
        out = _run_result(result)
        out["output"] = _cut(out["output"], max(0, min(max_output, MAX_TEXT)))
        return out

    @server.tool()
    async def list_runs(session: Session) -> list[dict[str, Any]]:
        """The runs the session keeps (last 16 per window): run id, window,
        command, state, exitCode, duration (seconds)."""
        async with tachi() as client:
            runs = await client.run_list(session)
        return [
            {
                "run": r.run,
                "window": r.window,
                "command": r.command,
                "state": r.state,
                "exitCode": r.exit_code if r.state != "running" else None,
                "duration": round(r.duration.total_seconds(), 3),
            }
            for r in runs
        ]

    @server.tool()
    async def capture_screen(
        session: Session,
        history_lines: Annotated[
            int, Field(description="Lines of scrollback to put before the screen (default 0).")
        ] = 0,
        window: WindowArg = None,
    ) -> str:
        """The session's screen as text, after the last HISTORY_LINES of
        scrollback: what a person attached to it sees now."""
        async with tachi() as client:
            text = await client.capture(session, window=window, history=history_lines or None)
        return _cut(text, MAX_TEXT)

    @server.tool()
    async def read_output(
        session: Session,
        since: Annotated[
            int | None,
            Field(
                description="Output position (bytes) to read after, from an earlier result's"
                " position (default: the newest output)."
            ),
        ] = None,
        max_bytes: Annotated[
            int, Field(description="Bytes returned at most, the newest (default 32768).")
        ] = MAX_OUTPUT,
        window: WindowArg = None,
    ) -> dict[str, Any]:
        """The window's output after position SINCE as text (escape sequences
        removed): {output, position, skipped}. Pass position as the next since
        to read only what is new. skipped > 0: that many bytes were no longer
        kept (the window keeps its last 256 KiB) or over max_bytes."""
        async with tachi() as client:
            got = await client.read_output(
                session, since=since, window=window, max_bytes=max(0, min(max_bytes, MAX_TEXT))
            )
        return {"output": got["output"], "position": got["position"], "skipped": got["skipped"]}

    @server.tool()
    async def wait_for(
        session: Session,
        patterns: Annotated[
            list[str],
            Field(
                description="Regular expressions (RE2 syntax, multi-line; no look-around or"
                " backreferences). The first to match wins; its index is returned."
            ),
        ],
        timeout: Annotated[float, Field(description="Seconds to wait (default 30).")] = 30,
        only_new: Annotated[
            bool,
            Field(
                description="Only output after this call, never text already on the screen"
                " (default false: the screen counts too)."
            ),
        ] = False,
        since: Annotated[
            int | None,
            Field(
                description="Only output after this position in bytes (from send_keys/read_output)."
            ),
        ] = None,
        window: WindowArg = None,
    ) -> dict[str, Any]:
        """Wait until one of PATTERNS appears: {outcome: "match", index,
        matched, before (the text before it, last 4 KiB), position}; outcome
        "timeout" or "eof" (the program ended) otherwise, not an error."""
        from tachi.client.runs import ExpectBuffer, compile_patterns

        async with tachi() as client:
            if since is None and not only_new:
                # The screen counts too: from this position on, nothing is missed.
                since = (await client.read_output(session, window=window, max_bytes=0))["position"]
                screen = ExpectBuffer()
                screen.add((await client.capture(session, window=window)).encode())
                hit = screen.search(compile_patterns(patterns))
                if hit is not None:
                    return {
                        "outcome": "match",
                        "index": hit[0],
                        "matched": hit[1],
                        "onScreen": True,
                    }
            result = await client.expect(
                session, patterns, timeout=timeout, window=window, since=since
            )
        got = {
            "outcome": result.outcome,
            "index": result.index,
            "matched": result.match,
            "before": result.before,
            "position": result.position,
        }
        out = {k: v for k, v in got.items() if v is not None}
        if "before" in out:
            out["before"] = out["before"][-4096:]
        return out

    @server.tool()
    async def send_signal(
        session: Session,
        signal: Annotated[
            str, Field(description="Signal name or number: INT (Ctrl-C), TERM, HUP, KILL, 9.")
        ] = "INT",
        window: WindowArg = None,
    ) -> dict[str, Any]:
        """Send SIGNAL to the program in front in the window (its foreground
        process group), as the terminal would for Ctrl-C."""
        async with tachi() as client:
            await client.send_signal(session, signal, window=window)
        return {"sent": signal}

    @server.tool()
    async def resize(
        session: Session,
        rows: Annotated[int, Field(description="Terminal height in lines (1-500).")],
        cols: Annotated[int, Field(description="Terminal width in columns (1-1000).")],
    ) -> dict[str, Any]:
        """Resize the session's terminal to ROWS x COLS."""
        async with tachi() as client:
            await client.resize(session, PTYConfig(term="", rows=rows, cols=cols))
        return {"rows": rows, "cols": cols}

    @server.tool()
    async def list_windows(session: Session) -> list[dict[str, Any]]:
        """The session's windows: id, name, active, command, exitCode."""
        async with tachi() as client:
            windows = await client.list_windows(session)
        keep = ("id", "name", "active", "command", "exitCode")
        return [{k: w.to_json().get(k) for k in keep} for w in windows]

    @server.tool()
    async def new_window(
        session: Session,
        command: Annotated[
            list[str] | None,
            Field(description="Program and arguments (default: the session's command)."),
        ] = None,
        name: Annotated[str | None, Field(description="The window's name.")] = None,
    ) -> dict[str, Any]:
        """Open a window in the session (it becomes the active one); returns its id."""
        async with tachi() as client:
            window = await client.new_window(session, command, name=name)
        return {"id": window.id, "name": window.name}

    @server.tool()
    async def close_window(
        session: Session, window: Annotated[int, Field(description="Window number to close.")]
    ) -> dict[str, Any]:
        """Close one window of the session (hang up its program)."""
        async with tachi() as client:
            await client.close_window(session, window)
        return {"closed": window}

    @server.tool()
    async def exec_command(
        command: Annotated[
            list[str], Field(description="Program and arguments, run without a shell.")
        ],
        cwd: Annotated[str | None, Field(description="Working directory (absolute).")] = None,
        stdin: Annotated[str, Field(description="Text given on its standard input.")] = "",
        timeout: Annotated[
            float, Field(description="Seconds before it is killed (exit code 124; default 120).")
        ] = 120,
    ) -> dict[str, Any]:
        """Run a program on the daemon's host without a session (needs the
        daemon owner's rights): {exitCode, stdout, stderr}, stdout and stderr
        apart, each at most 512 KiB here (first and last halves)."""
        async with tachi() as client:
            result = await client.exec(command, stdin=stdin.encode(), cwd=cwd, timeout=timeout)
        return {
            "exitCode": result.exit_code,
            "stdout": _cut(result.stdout.decode(errors="replace"), MAX_TEXT),
            "stderr": _cut(result.stderr.decode(errors="replace"), MAX_TEXT),
        }

    @server.tool()
    async def close_session(session: Session, full: Full = False) -> dict[str, Any]:
        """Close the session (hang up its programs)."""
        async with tachi() as client:
            closed = (await client.close(session)).to_json()
        return closed if full else _compact(closed)

    return server
