"""A remote command imports only what it uses (issue 32): the transport for its
URL, not the Ghostty screen's FFI or the SPIFFE library, with every plugin installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ws_support import Remote

#: Runs the CLI in this process as `tachi` would without the warm CLI, then
#: reports on PROBE_FD its exit status and which of the heavy libraries it imported.
PROBE = """
import json, os, sys
sys.argv = ["tachi", *json.loads(os.environ["PROBE_ARGV"])]
status = 0
try:
    from tachi.cli.main import main
    main()
except SystemExit as exc:
    status = exc.code
heavy = ["pyghostty", "tachi_ghostty", "spiffe", "tachi_spiffe", "tachi_mcp", "tachi_ssh"]
with os.fdopen(int(os.environ["PROBE_FD"]), "w") as out:
    json.dump({"status": status, "imported": [m for m in heavy if m in sys.modules]}, out)
"""

installed = pytest.mark.skipif(
    any(
        __import__("importlib.util").util.find_spec(m) is None
        for m in ("tachi_ghostty", "tachi_spiffe")
    ),
    reason="needs the Ghostty and SPIFFE plugins installed",
)


def probe(remote: Remote, index: Path, *args: str, **env: str) -> dict[str, Any]:
    """Run ``tachi ARGS`` in a child with every installed plugin and a private hook index."""
    environ = {k: v for k, v in remote.daemon.env.items() if k != "TACHI_LOAD_PLUGINS"}
    environ |= {
        "TACHI_WARM": "0",
        "TACHI_TOKEN": remote.token,
        "TACHI_PLUGIN_INDEX": str(index),
        "PROBE_ARGV": json.dumps(list(args)),
        **env,
    }
    r, w = os.pipe()
    environ["PROBE_FD"] = str(w)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", PROBE],
            env=environ,
            pass_fds=(w,),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(w)
    with os.fdopen(r) as report:
        text = report.read()
    assert text, f"the probe reported nothing: {proc.stderr}"
    return {**json.loads(text), "stdout": proc.stdout, "stderr": proc.stderr}


@installed
def test_remote_ls_imports_neither_the_screen_nor_the_identity_library(
    remote: Remote, tmp_path: Path
) -> None:
    index = tmp_path / "hooks.json"
    probe(remote, index, *remote.flags(), "ls")  # the first run learns the plugins' hooks
    result = probe(remote, index, *remote.flags(), "ls")
    assert result["status"] == 0, result["stderr"]
    assert result["imported"] == []


@installed
def test_an_identity_option_loads_the_identity_plugin(remote: Remote, tmp_path: Path) -> None:
    index = tmp_path / "hooks.json"
    probe(remote, index, *remote.flags(), "ls")
    result = probe(remote, index, *remote.flags(), "--server-id", "spiffe://x.test/d", "ls")
    # The SPIFFE plugin checked the daemon's certificate (it has no SPIFFE ID).
    assert result["status"] == 4, result["stderr"]
    assert "tachi_spiffe" in result["imported"]


@installed
def test_a_stale_index_is_learnt_again_and_plugin_commands_stay(
    remote: Remote, tmp_path: Path
) -> None:
    index = tmp_path / "hooks.json"
    probe(remote, index, *remote.flags(), "ls")
    # An upgrade of the plugin (its files changed) with an index that says it
    # implements nothing: the index must not be believed.
    data = json.loads(index.read_text())
    for entry in data["entry_points"]:
        entry["hooks"] = []
        entry["stamp"] = [["/gone.py", 1, 1]]
    index.write_text(json.dumps(data))
    result = probe(remote, index, *remote.flags(), "ls")
    assert result["status"] == 0, result["stderr"]
    # Commands plugins add are still there, and only their plugins load for them.
    helped = probe(remote, index, "--help")
    assert helped["status"] == 0 and " mcp " in helped["stdout"]
    assert "tachi_ghostty" not in helped["imported"]


def test_a_disabled_transport_is_not_loaded(remote: Remote, tmp_path: Path) -> None:
    index = tmp_path / "hooks.json"
    result = probe(remote, index, *remote.flags(), "ls", TACHI_DISABLE_PLUGINS="websocket,ssh")
    assert result["status"] == 2
    assert "no installed transport handles wss:// URLs" in result["stderr"]


def test_the_warm_cli_loads_the_transport_plugins_once_not_per_command(monkeypatch):
    """The warm CLI loads the plugins that open wss:// URLs before it forks;
    its children (each remote command) reuse them instead of loading them
    again, as long as the plugin selection and the installed distributions
    are the same."""
    from tachi.cli import warm_server
    from tachi.client import endpoint

    monkeypatch.delenv("TACHI_LOAD_PLUGINS", raising=False)  # every installed plugin
    monkeypatch.delenv("TACHI_DISABLE_PLUGINS", raising=False)
    endpoint._MANAGERS.clear()
    warm_server.preload()
    loaded = endpoint.transport_plugins(frozenset({"tachi_connect"}), "wss")
    assert loaded is not None and len(endpoint._MANAGERS) >= 2  # ws and wss at least
    assert endpoint.transport_plugins(frozenset({"tachi_connect"}), "wss") is loaded
    assert loaded.has_plugin("websocket") or any(
        getattr(p, "URL_SCHEMES", None) == ("ws", "wss") for p in loaded.get_plugins()
    )
    # Another plugin selection gets its own.
    monkeypatch.setenv("TACHI_DISABLE_PLUGINS", "nothing-of-that-name")
    assert endpoint.transport_plugins(frozenset({"tachi_connect"}), "wss") is not loaded
