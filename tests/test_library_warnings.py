"""No library's warning reaches a user's terminal, a JSON consumer or daemon.log.

Every command here runs with every installed plugin loaded (as ``./scripts/run``
installs them) plus a third-party plugin whose import warns, as ``spiffe`` did
under ``cryptography`` 51: stderr must stay empty on success.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import installed_plugin
from tachi.testing import DaemonProcess

# A transport and a command plugin, so every remote command and every CLI
# start imports it (commands load only the plugins of the hooks they call).
NOISY = """
import warnings

import pluggy

class LibraryDeprecationWarning(UserWarning):
    pass

warnings.warn("noisy: this API is deprecated", LibraryDeprecationWarning)

hookimpl = pluggy.HookimplMarker("tachi")


@hookimpl
def tachi_connect(url, options):
    return None


@hookimpl
def tachi_register_commands(cli):
    pass
"""


@pytest.fixture
def noisy(tachi_home: Path, tmp_path: Path) -> DaemonProcess:
    """A daemon with a WebSocket listener, and every plugin plus the noisy one installed."""
    path = installed_plugin(tmp_path / "site", "noisy", NOISY)
    config = '[transports.websocket]\nlisten = "127.0.0.1:0"\ntls = "self-signed"\n'
    daemon = DaemonProcess(tachi_home, extra_env={**path}, config=config)
    daemon.env.pop("TACHI_LOAD_PLUGINS")  # every installed plugin, as a user has them
    daemon.start()
    yield daemon
    daemon.stop()


def _remote(daemon: DaemonProcess) -> tuple[list[str], dict[str, str]]:
    status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
    ws = next(x for x in status["listeners"] if x["transport"] == "websocket")
    token = json.loads(daemon.run("token", "create", "--json", check=True).stdout)["token"]
    flags = ["--host", ws["url"], "--fingerprint", ws["fingerprint"]]
    return flags, {"TACHI_TOKEN": token}


def test_remote_and_local_commands_print_nothing_on_stderr(noisy: DaemonProcess):
    noisy.new("sh", name="quiet")
    flags, env = _remote(noisy)
    for argv, environ in (
        ([*flags, "ls"], env),
        ([*flags, "ls", "--json"], env),
        (["ls"], {}),
        (["plugins"], {}),
    ):
        result = noisy.run(*argv, env=environ)
        assert result.returncode == 0, result.stderr
        assert "quiet" in result.stdout or argv == ["plugins"]
        assert result.stderr == "", f"tachi {' '.join(argv)}: {result.stderr!r}"
    assert "Warning" not in noisy.log.read_text()


def test_completion_prints_nothing_on_stderr(noisy: DaemonProcess):
    env = {"_TACHI_COMPLETE": "bash_complete", "COMP_WORDS": "tachi att", "COMP_CWORD": "1"}
    result = noisy.run(env=env)
    assert "attach" in result.stdout
    assert result.stderr == ""


def test_tachi_mcp_prints_nothing_on_stderr(noisy: DaemonProcess):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tachi", "mcp"],
        env=noisy.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
    try:
        out, err = proc.communicate(json.dumps(hello) + "\n", timeout=30)
    finally:
        proc.kill()
    reply = json.loads(out.splitlines()[0])
    assert reply["id"] == 1 and "result" in reply, out
    assert err == ""


def test_warnings_show_when_the_user_asks(noisy: DaemonProcess):
    """PYTHONWARNINGS (or -W) brings them back: and proves the noisy plugin warns."""
    flags, env = _remote(noisy)
    # In this process (TACHI_WARM=0): a warm CLI imported its plugins at its own
    # start, with the daemon's environment, so their import-time warnings went
    # (or not) to daemon.log, as documented.
    result = noisy.run(*flags, "ls", env={**env, "PYTHONWARNINGS": "default", "TACHI_WARM": "0"})
    assert result.returncode == 0
    assert "noisy: this API is deprecated" in result.stderr
