"""tachi-mcp: ``tachi mcp``, an MCP server for AI agents (see ``docs/mcp.md``)."""

from __future__ import annotations

from typing import Any

from tachi.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def tachi_register_commands(cli: Any) -> None:
    import click

    @cli.command("mcp")
    @click.pass_obj
    def mcp_command(ctx: Any) -> None:
        """Serve the Model Context Protocol on stdio: tools for an AI agent to
        drive tachi sessions, acting as you (every call is audited)."""
        from tachi_mcp.server import build_server

        build_server(socket=ctx.socket, url=ctx.host, options=ctx.options).run("stdio")
