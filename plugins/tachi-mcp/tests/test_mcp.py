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
            "collect_run", "list_runs", "read_output", "send_signal", "resize",
            "list_windows", "new_window", "close_window",
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
        # The result docs/mcp.md promises, and no more.
        assert set(ran) == {"output", "exitCode", "startedAt", "duration", "run", "window"}
        await client.call_tool("send_keys", {"session": sid, "text": "echo typed-$((6*7))\n"})
        waited = _structured(
            await client.call_tool("wait_for", {"session": sid, "patterns": ["typed-4\\d"]})
        )
        assert waited["matched"] == "typed-42" and waited["index"] == 0
        screen = _structured(await client.call_tool("capture_screen", {"session": sid}))
        assert "typed-42" in screen
        listed = _structured(await client.call_tool("list_sessions", {}))
        assert [s["id"] for s in listed] == [sid]
        done = _structured(
            await client.call_tool("exec_command", {"command": ["sh", "-c", "echo o; echo e >&2"]})
        )
        assert done == {"exitCode": 0, "stdout": "o\n", "stderr": "e\n"}
        closed = _structured(await client.call_tool("close_session", {"session": sid}))
        assert closed["state"] == "closed" and "pty" not in closed  # compact
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


async def test_every_tool_parameter_is_described_with_its_unit(tachi_daemon: DaemonProcess):
    async with Client(build_server(socket=str(tachi_daemon.socket))) as client:
        tools = (await client.list_tools()).tools
    undescribed = [
        (t.name, name)
        for t in tools
        for name, prop in t.input_schema.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert undescribed == []
    for t in tools:
        for name, prop in t.input_schema.get("properties", {}).items():
            if name in ("timeout", "rows", "cols", "max_output", "max_bytes", "since"):
                unit = prop["description"].lower()
                assert any(u in unit for u in ("second", "line", "column", "byte", "character"))
    run = next(t for t in tools if t.name == "run_command")
    for said in ("timedOut", "collect_run", "stderr", "merged"):
        assert said in (run.description or ""), said


async def test_a_timed_out_command_is_collected_later_and_output_read_since(
    tachi_daemon: DaemonProcess,
):
    sid = tachi_daemon.new("bash", "--norc")["id"]
    async with Client(build_server(socket=str(tachi_daemon.socket))) as client:
        slow = _structured(
            await client.call_tool(
                "run_command",
                {"session": sid, "command": "echo early; sleep 1.5; echo late; (exit 6)",
                 "timeout": 0.5},
            )
        )  # fmt: skip
        assert slow["timedOut"] is True and slow["exitCode"] is None
        assert slow["output"] == "early\n" and slow["run"].startswith("tachi-")
        done = _structured(
            await client.call_tool("collect_run", {"run": slow["run"], "timeout": 20})
        )
        assert (done["output"], done["exitCode"]) == ("early\nlate\n", 6)
        runs = _structured(await client.call_tool("list_runs", {"session": sid}))
        assert [r["run"] for r in runs] == [slow["run"]]
        sent = _structured(
            await client.call_tool("send_keys", {"session": sid, "text": "echo fresh-$((2+3))\n"})
        )
        got = _structured(
            await client.call_tool(
                "wait_for",
                {"session": sid, "patterns": ["nope", "fresh-\\d"], "since": sent["position"],
                 "timeout": 20},
            )
        )  # fmt: skip
        assert (got["outcome"], got["index"], got["matched"]) == ("match", 1, "fresh-5")
        read = _structured(
            await client.call_tool("read_output", {"session": sid, "since": sent["position"]})
        )
        assert "fresh-5" in read["output"] and "early" not in read["output"]
        assert read["position"] > sent["position"]
        stale = _structured(
            await client.call_tool(
                "wait_for", {"session": sid, "patterns": ["fresh-5"], "only_new": True,
                             "timeout": 0.5},
            )
        )  # fmt: skip
        assert stale["outcome"] == "timeout"
        await client.call_tool("send_keys", {"session": sid, "text": "sleep 30\n"})
        signalled = await client.call_tool("send_signal", {"session": sid, "signal": "INT"})
        assert not signalled.is_error
        after = _structured(
            await client.call_tool("run_command", {"session": sid, "command": "echo ok"})
        )
        assert after["output"] == "ok\n"
        resized = _structured(
            await client.call_tool("resize", {"session": sid, "rows": 30, "cols": 100})
        )
        assert resized == {"rows": 30, "cols": 100}
        opened = _structured(
            await client.call_tool("new_window", {"session": sid, "command": ["bash", "--norc"]})
        )
        windows = _structured(await client.call_tool("list_windows", {"session": sid}))
        assert [w["id"] for w in windows] == [0, opened["id"]]
        await client.call_tool("close_window", {"session": sid, "window": opened["id"]})
