"""The MCP tools end to end: the SDK's own client, in process, against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mcp import Client
from tachi_mcp.server import build_server

from tachi.testing import DaemonProcess


def _structured(result) -> object:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        value = result.structured_content
        return value.get("result", value) if isinstance(value, dict) else value
    return json.loads(result.content[0].text)


async def test_the_tools_drive_a_real_daemon(tachi_daemon: DaemonProcess):
    server = build_server(socket=str(tachi_daemon.socket))
    async with Client(server) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {
            "list_sessions", "create_session", "send_keys", "run_command",
            "capture_screen", "wait_for", "exec_command", "close_session",
        }  # fmt: skip
        created = _structured(
            await client.call_tool(
                "create_session", {"command": ["bash", "--norc"], "name": "agent"}
            )
        )
        sid = created["id"]
        ran = _structured(
            await client.call_tool("run_command", {"session": sid, "command": "echo hi; (exit 3)"})
        )
        assert ran["output"] == "hi\n" and ran["exitCode"] == 3
        await client.call_tool("send_keys", {"session": sid, "text": "echo typed-$((6*7))\n"})
        waited = _structured(
            await client.call_tool("wait_for", {"session": sid, "pattern": "typed-4\\d"})
        )
        assert waited == "typed-42"
        screen = _structured(await client.call_tool("capture_screen", {"session": sid}))
        assert "typed-42" in screen
        listed = _structured(await client.call_tool("list_sessions", {}))
        assert [s["id"] for s in listed] == [sid]
        done = _structured(
            await client.call_tool("exec_command", {"command": ["sh", "-c", "echo o; echo e >&2"]})
        )
        assert done == {"exitCode": 0, "stdout": "o\n", "stderr": "e\n"}
        closed = _structured(await client.call_tool("close_session", {"session": sid}))
        assert closed["state"] == "closed"
        missing = await client.call_tool("capture_screen", {"session": "no-such"})
        assert missing.is_error and "no session 'no-such'" in missing.content[0].text
    audit = json.loads(tachi_daemon.run("audit", "--json", check=True).stdout)
    actions = [r["action"] for r in audit]
    assert "session.run" in actions and "exec.start" in actions
    # Audited as the user who started the server, like any other client.
    assert {r["principal"] for r in audit if r["action"] == "session.create"} == {
        os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    }


def test_tachi_mcp_is_a_cli_command(tachi_daemon: DaemonProcess):
    result = subprocess.run(
        [sys.executable, "-m", "tachi", "mcp", "--help"],
        env={**tachi_daemon.env, "TACHI_LOAD_PLUGINS": "mcp"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "Model Context Protocol" in result.stdout


@pytest.mark.parametrize("tool", ["run_command"])
async def test_a_share_token_holder_is_limited_to_its_role(tachi_daemon: DaemonProcess, tool):
    s = tachi_daemon.new("bash", "--norc")
    grant = json.loads(
        tachi_daemon.run("share", s["id"], "--role", "observer", "--json", check=True).stdout
    )
    os.environ["TACHI_TOKEN"] = grant["token"]
    try:
        async with Client(build_server(socket=str(tachi_daemon.socket))) as client:
            refused = await client.call_tool(tool, {"session": s["id"], "command": "id"})
        assert refused.is_error and "may not" in refused.content[0].text
    finally:
        del os.environ["TACHI_TOKEN"]
