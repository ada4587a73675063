"""The connection keeper (TACHI_WS_KEEPER=1, issue 32): commands take connections
opened ahead, and each still acts with its own token, checked by the daemon."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

from ws_support import Remote

from tachi.testing import command_lines


def _run(remote: Remote, runtime: Path, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        remote.daemon.tachi_argv(*remote.flags(), *args),
        env={
            **remote.daemon.env,
            "TACHI_TOKEN": token,
            "TACHI_WS_KEEPER": "1",
            "XDG_RUNTIME_DIR": str(runtime),
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _share(remote: Remote, sid: str, role: str) -> str:
    out = remote.daemon.run("share", sid, "--role", role, "--json", check=True).stdout
    return json.loads(out)["token"]


def test_kept_connections_serve_each_token_as_itself_and_a_rotated_token_at_once(
    remote: Remote, tmp_path: Path
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    s = remote.daemon.new("cat", name="kept")
    writer = _share(remote, s["id"], "collaborator")
    reader = _share(remote, s["id"], "observer")
    try:
        for i in range(3):  # interleaved: a spare made after the writer's command serves the reader
            wrote = _run(remote, runtime, "send", s["id"], f"w{i}\\n", token=writer)
            assert wrote.returncode == 0, wrote.stderr
            refused = _run(remote, runtime, "send", s["id"], f"r{i}\\n", token=reader)
            assert refused.returncode == 4, refused.stderr
        keeper = runtime / "tachi" / "ws-keeper.sock"
        assert stat.S_ISSOCK(keeper.stat().st_mode)
        # The keeper outlives the command that started it: it holds no token.
        (pid,) = [
            pid
            for pid, argv in command_lines()
            if b"tachi_websocket.keeper" in argv and str(keeper).encode() in argv
        ]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [e for e in environ if e.startswith(b"TACHI_TOKEN=")]
        assert os.readlink(f"/proc/{pid}/cwd") == "/"  # no directory of the user's held
        assert stat.S_IMODE(keeper.stat().st_mode) == 0o600
        assert stat.S_IMODE(keeper.parent.stat().st_mode) == 0o700
        screen = remote.daemon.run("capture", s["id"], check=True).stdout
        assert all(f"w{i}" in screen for i in range(3))
        assert not any(f"r{i}" in screen for i in range(3))
        # The writer's spare is already open when its token is rotated: refused all the same.
        remote.daemon.run("token", "rotate", s["id"], "--grace", "0", check=True)
        late = _run(remote, runtime, "send", s["id"], "late\\n", token=writer)
        assert late.returncode == 4
        assert "late" not in remote.daemon.run("capture", s["id"], check=True).stdout
    finally:
        _stop_keeper(runtime)


def test_a_keeper_that_died_is_replaced(remote: Remote, tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    try:
        assert _run(remote, runtime, "ls", token=remote.token).returncode == 0
        assert _stop_keeper(runtime, signal.SIGKILL) == 1  # its socket stays behind
        assert (runtime / "tachi" / "ws-keeper.sock").exists()
        again = _run(remote, runtime, "ls", token=remote.token)
        assert again.returncode == 0, again.stderr
        assert _stop_keeper(runtime) == 1  # a new keeper took the socket over
    finally:
        _stop_keeper(runtime)


def _stop_keeper(runtime: Path, signum: int = signal.SIGTERM) -> int:
    """Signal the keeper this test started (found by its socket path on its
    command line); how many there were."""
    path = str(runtime / "tachi" / "ws-keeper.sock")
    found = 0
    for pid, argv in command_lines():
        if b"tachi_websocket.keeper" in argv and path.encode() in argv:
            proc = Path(f"/proc/{pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
                found += 1
                deadline = time.monotonic() + 10
                while (proc / "cmdline").exists() and time.monotonic() < deadline:
                    if not (proc / "cmdline").read_bytes():  # a zombie: it is gone
                        break
                    time.sleep(0.02)
    return found


def _keeper_socket(runtime: Path) -> Path:
    return runtime / "tachi" / "ws-keeper.sock"


def test_one_shot_commands_take_the_keeper_by_default_and_api_clients_do_not(
    remote: Remote, tmp_path: Path, monkeypatch
) -> None:
    """With ``TACHI_WS_KEEPER`` unset, a remote CLI command (here a ``wait``
    that blocks) is relayed by the keeper: no TCP socket of its own. A
    ``Client(url=…)`` connects itself (through the keeper, every message of a
    long-lived client would take one more hop), and ``TACHI_WS_KEEPER=0``
    turns the keeper off for commands too."""
    from test_websocket import _tcp_sockets, _unix_sockets

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    s = remote.daemon.new("bash", "--norc", name="default")
    env = {k: v for k, v in remote.daemon.env.items() if k not in ("TACHI_WS_KEEPER", "TACHI_WARM")}
    env |= {"TACHI_TOKEN": remote.token, "XDG_RUNTIME_DIR": str(runtime), "TACHI_WARM": "0"}
    argv = remote.daemon.tachi_argv(
        *remote.flags(), "wait", s["id"], "--match", "kept-7", "--timeout", "20"
    )
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Connected and waiting: through the keeper, one Unix socket and no
        # TCP one (a direct connection would hold a TCP socket for as long).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            kept = _keeper_socket(runtime).exists() and _unix_sockets(proc.pid) == 1
            if kept and _tcp_sockets(proc.pid) == 0:
                time.sleep(0.2)
                if _unix_sockets(proc.pid) == 1 and _tcp_sockets(proc.pid) == 0:
                    break
            time.sleep(0.05)
        assert _unix_sockets(proc.pid) == 1  # to the keeper
        assert _tcp_sockets(proc.pid) == 0
        assert _keeper_socket(runtime).exists()
        assert remote.run("send", s["id"], "echo kept-$((3+4))\\n").returncode == 0
        assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
        _stop_keeper(runtime)

    # The API client in this process: its own connection, no keeper started.
    import tachi

    api_runtime = tmp_path / "api"
    api_runtime.mkdir(mode=0o700)
    monkeypatch.setenv("TACHI_LOAD_PLUGINS", "websocket")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(api_runtime))
    monkeypatch.delenv("TACHI_WS_KEEPER", raising=False)
    with tachi.Client(
        url=remote.url, token=remote.token, options={"fingerprint": remote.fingerprint}
    ) as client:
        assert client.get("default").id == s["id"]
    assert not _keeper_socket(api_runtime).exists()

    # Off: the command connects itself and no keeper is started.
    off_runtime = tmp_path / "off"
    off_runtime.mkdir(mode=0o700)
    done = subprocess.run(
        remote.daemon.tachi_argv(*remote.flags(), "ls"),
        env={**env, "XDG_RUNTIME_DIR": str(off_runtime), "TACHI_WS_KEEPER": "0"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert not _keeper_socket(off_runtime).exists()


def test_a_spare_whose_daemon_went_is_not_handed_out(tachi_home: Path, tmp_path: Path) -> None:
    """The keeper holds a spare to the daemon; the daemon is killed (the
    spare's connection ends), the next one starts, and the next command comes
    at once: it gets a fresh connection, not the dead spare."""
    from test_attach_across_restart import free_port
    from ws_support import start_remote

    # A fixed port: the restarted daemon listens where the config says.
    remote = start_remote(tachi_home, f'listen = "127.0.0.1:{free_port()}"\ntls = "self-signed"')
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    try:
        for _ in range(3):
            assert _run(remote, runtime, "ls", token=remote.token).returncode == 0
            status = json.loads(remote.daemon.run("daemon", "status", "--json", check=True).stdout)
            os.kill(status["pid"], signal.SIGKILL)  # the spare's TCP connection ends with it
            deadline = time.monotonic() + 10
            while Path(f"/proc/{status['pid']}/cmdline").exists() and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(status["pid"], os.WNOHANG)
                time.sleep(0.01)
            assert remote.daemon.run("ls", timeout=60).returncode == 0  # the next daemon
            again = _run(remote, runtime, "ls", token=remote.token)
            assert again.returncode == 0, again.stderr
    finally:
        _stop_keeper(runtime)
        remote.daemon.run("daemon", "stop", timeout=30)
        remote.daemon.stop()


def test_a_host_that_does_not_answer_holds_up_only_its_own_commands(
    remote: Remote, tmp_path: Path
) -> None:
    """A command for a host that takes its TCP connection but never answers
    the TLS handshake waits for its timeout; the same user's commands for
    another host, through the same keeper, are served meanwhile."""
    import socket

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # never accepted: the kernel completes TCP, nobody speaks TLS
    port = silent.getsockname()[1]
    argv = remote.daemon.tachi_argv(
        "--host", f"wss://127.0.0.1:{port}", "--fingerprint", remote.fingerprint or "", "ls"
    )
    env = {
        **remote.daemon.env,
        "TACHI_TOKEN": remote.token,
        "XDG_RUNTIME_DIR": str(runtime),
    }
    env.pop("TACHI_WS_KEEPER", None)
    stuck = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (runtime / "tachi" / "ws-keeper.sock").exists():
            assert time.monotonic() < deadline, "no keeper started"
            time.sleep(0.05)
        time.sleep(0.3)  # the keeper is in that handshake now
        for _ in range(2):
            done = _run(remote, runtime, "ls", token=remote.token)
            assert done.returncode == 0, done.stderr
            assert stuck.poll() is None  # still waiting for the silent host
    finally:
        stuck.kill()
        stuck.wait()
        silent.close()
        _stop_keeper(runtime)
