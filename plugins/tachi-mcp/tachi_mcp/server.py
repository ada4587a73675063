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
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from tachi.client.aio import AsyncClient
from tachi.errors import TachiError
from tachi.models import PTYConfig, SessionFilter, SessionRequest, SessionState

INSTRUCTIONS = (
    "Drive terminal sessions managed by tachi. Prefer run_command to get a command's "
    "output and exit code; use send_keys and wait_for for interactive programs, and "
    "capture_screen to see what a person attached to the session sees."
)


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
    async def list_sessions(include_closed: bool = False) -> list[dict[str, Any]]:
        """List the sessions you may see (live ones; closed ones too if asked)."""
        async with tachi() as client:
            sessions = await client.list(SessionFilter())
        return [s.to_json() for s in sessions if include_closed or s.state != SessionState.CLOSED]

    @server.tool()
    async def create_session(
        command: list[str] | None = None,
        name: str | None = None,
        rows: int = 40,
        cols: int = 120,
        cwd: str | None = None,
    ) -> dict[str, Any]:
        """Start a session running COMMAND (default: the login shell); returns it."""
        req = SessionRequest(
            name=name,
            command=list(command or []),
            pty=PTYConfig(term="", rows=rows, cols=cols),
            cwd=cwd,
        )
        async with tachi() as client:
            return (await client.create(req)).to_json()

    @server.tool()
    async def send_keys(session: str, text: str, window: int | None = None) -> int:
        """Type TEXT into the session (use "\\n" for Enter, "\\u0003" for Ctrl-C);
        returns the number of bytes sent."""
        async with tachi() as client:
            return await client.send(session, text, window=window)

    @server.tool()
    async def run_command(
        session: str, command: str, timeout: float = 120, window: int | None = None
    ) -> dict[str, Any]:
        """Run one shell command line in the session's shell and wait for it:
        returns its output alone and its exitCode."""
        async with tachi() as client:
            result = await client.run(session, command, window=window, timeout=timeout)
        return {
            "output": result.output,
            "exitCode": result.exit_code,
            "window": result.window,
            "durationSeconds": result.duration.total_seconds(),
        }

    @server.tool()
    async def capture_screen(session: str, history_lines: int = 0) -> str:
        """The session's screen as text, after the last HISTORY_LINES of scrollback."""
        async with tachi() as client:
            return await client.capture(session, history=history_lines or None)

    @server.tool()
    async def wait_for(session: str, pattern: str, timeout: float = 30) -> str:
        """Wait until the regex PATTERN shows on the screen or in new output;
        returns the match."""
        async with tachi() as client:
            result = await client.wait(session, match=pattern, timeout=timeout)
        return str(result["matched"])

    @server.tool()
    async def exec_command(
        command: list[str], cwd: str | None = None, stdin: str = "", timeout: float = 120
    ) -> dict[str, Any]:
        """Run a command on the daemon's host without a session; returns exitCode,
        stdout and stderr."""
        async with tachi() as client:
            result = await client.exec(command, stdin=stdin.encode(), cwd=cwd, timeout=timeout)
        return {
            "exitCode": result.exit_code,
            "stdout": result.stdout.decode(errors="replace"),
            "stderr": result.stderr.decode(errors="replace"),
        }

    @server.tool()
    async def close_session(session: str) -> dict[str, Any]:
        """Close the session (hang up its programs)."""
        async with tachi() as client:
            return (await client.close(session)).to_json()

    return server
