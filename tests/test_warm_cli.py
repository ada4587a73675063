"""The warm CLI: `tachi` handed to a process that has the CLI imported must
behave exactly as `tachi` run in-process, and fall back whenever it cannot.

Every command here runs twice where it matters: ``TACHI_WARM=require`` (fails
with 255 unless the warm CLI ran it) and ``TACHI_WARM=0`` (in-process).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import pexpect
import pytest

from tachi.launch import REQUEST_MAGIC
from tachi.testing import DaemonProcess
from users import as_user, ensure_users

# Tests pass stdin explicitly: a closed one (CI may have none) runs in-process.
DEVNULL = subprocess.DEVNULL
WARM = {"TACHI_WARM": "require"}
HERE = {"TACHI_WARM": "0"}


def warm_listener(daemon: DaemonProcess, *, restarts: int = 0, timeout: float = 20) -> dict:
    """The warm CLI's entry in `daemon status` once it is ready (after ``restarts``)."""
    deadline = time.monotonic() + timeout
    entry: dict = {}
    while time.monotonic() < deadline:
        status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
        entry = next(x for x in status["listeners"] if x["transport"] == "warm-cli")
        if entry["ready"] and entry["restarts"] >= restarts:
            return entry
        time.sleep(0.1)
    raise AssertionError(f"the warm CLI did not become ready: {entry}")


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def running_command(server: int, timeout: float = 15) -> int:
    """The pid of the warm CLI's child that is running a command: it has been
    told to go once it has started its second thread (the launcher watch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children(server):
            with contextlib.suppress(FileNotFoundError):
                if len(os.listdir(f"/proc/{pid}/task")) >= 2:
                    return pid
        time.sleep(0.05)
    raise AssertionError("no command started in the warm CLI")


def start_waiting_command(
    daemon: DaemonProcess, *, prefix: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], int]:
    """``tachi wait`` on a fresh session, through the warm CLI (after ``prefix``,
    e.g. ``nice``): the process and the pid of the warm CLI child running it."""
    server = warm_listener(daemon)["pid"]
    s = daemon.new("cat")
    argv = daemon.tachi_argv("wait", s["id"], "--match", "never-printed", "--timeout", "60")
    proc = subprocess.Popen([*prefix, *argv], env={**daemon.env, **WARM}, stdin=DEVNULL)
    return proc, running_command(server)


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process_state(pid) == "Z":
                return True
        except (FileNotFoundError, ProcessLookupError):
            # Reaped before the open, or between the open and the read (ESRCH).
            return True
        time.sleep(0.05)
    return False


def job_control_shell(daemon: DaemonProcess, env: dict[str, str] | None = None) -> pexpect.spawn:
    """An interactive bash on a terminal of its own, so jobs and Ctrl-Z are real."""
    return pexpect.spawn(
        "bash",
        ["--norc", "--noprofile", "-i"],
        env={**daemon.env, **(env or {}), "PS1": "PROMPT$ ", "HOME": str(daemon.home)},
        dimensions=(30, 100),
        encoding="utf-8",
        timeout=30,
    )


@pytest.fixture
def warm(tachi_daemon: DaemonProcess) -> DaemonProcess:
    warm_listener(tachi_daemon)
    return tachi_daemon


def test_commands_print_and_exit_the_same_warm_or_in_process(warm):
    s = warm.new("cat", name="w1")
    cases = [
        ["ls", "--json"],
        ["get", "w1", "--json"],
        ["capture", "w1"],
        ["capture", "no-such-session"],
        ["ls", "--bogus-flag"],
        ["--version"],
        ["send", "--help"],
        ["window", "ls", s["id"], "--json"],
    ]
    for argv in cases:
        warm_run = warm.run(*argv, env=WARM)
        here = warm.run(*argv, env=HERE)
        assert warm_run.returncode != 255, warm_run.stderr
        assert (warm_run.returncode, warm_run.stdout, warm_run.stderr) == (
            here.returncode,
            here.stdout,
            here.stderr,
        ), argv


def test_the_commands_stdin_environment_and_directory_are_the_callers(warm, tmp_path):
    # stdin and its end reach the command; exit codes come back.
    out = warm.run("exec", "--", "sh", "-c", "cat; exit 7", input="from stdin\n", env=WARM)
    assert (out.returncode, out.stdout) == (7, "from stdin\n"), out.stderr
    # The caller's environment, not the server's: a bad token is refused.
    out = warm.run("ls", env={**WARM, "TACHI_TOKEN": "t_not-a-token"})
    assert out.returncode == 4, out.stderr
    assert warm.run("ls", env=WARM).returncode == 0
    # The caller's working directory becomes the session's.
    work = tmp_path / "work dir"
    work.mkdir()
    made = subprocess.run(
        # Wide enough that the path (longer with each pytest run number) never wraps.
        warm.tachi_argv("new", "-d", "--json", "--cols", "300", "--", "sh", "-c", "pwd; sleep 30"),
        env={**warm.env, **WARM},
        stdin=DEVNULL,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    session = json.loads(made.stdout)
    warm.run("wait", session["id"], "--match", "work dir", "--timeout", "10", check=True)
    assert str(work) in warm.run("capture", session["id"], check=True).stdout


def test_files_the_command_writes_get_the_callers_umask(warm, tmp_path):
    s = warm.new("sh", "-c", "echo recorded; sleep 30", record=True)
    warm.run("wait", s["id"], "--match", "recorded", "--timeout", "10", check=True)
    warm.run("close", s["id"], check=True)
    recording = json.loads(warm.run("record", "ls", "--json", check=True).stdout)[0]["id"]
    for umask, mode in ((0o077, 0o600), (0o022, 0o644)):
        target = tmp_path / f"out-{umask:o}.cast"
        subprocess.run(
            warm.tachi_argv("record", "export", recording, "-o", str(target)),
            env={**warm.env, **WARM},
            stdin=DEVNULL,
            preexec_fn=lambda u=umask: os.umask(u),
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert stat.S_IMODE(target.stat().st_mode) == mode


@pytest.mark.parametrize("mode", ["require", "0"])
def test_signals_reach_the_command_as_they_would_in_process(warm, mode):
    s = warm.new("cat")
    wait = [*warm.tachi_argv("wait", s["id"], "--match", "never-printed", "--timeout", "30")]
    env = {**warm.env, "TACHI_WARM": mode}
    # Ctrl-C: the command says it was interrupted and exits 130.
    proc = subprocess.Popen(wait, env=env, stdin=DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert (proc.returncode, err.strip()) == (130, "tachi: interrupted")
    # SIGTERM: it dies of it, and so does `tachi`.
    proc = subprocess.Popen(wait, env=env, stdin=DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.terminate()
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == -signal.SIGTERM, err


def test_a_killed_tachi_takes_its_command_with_it(warm):
    proc, child = start_waiting_command(warm)
    with open(f"/proc/{child}/comm") as comm:
        assert comm.read().strip() == "tachi"  # as top and pgrep show it
    proc.kill()
    proc.wait(5)
    assert gone(child), "the command outlived the tachi that ran it"


def test_ctrl_z_stops_the_command_and_fg_resumes_it(warm):
    server = warm_listener(warm)["pid"]
    s = warm.new("cat")
    shell = job_control_shell(warm, WARM)
    try:
        shell.expect_exact("PROMPT$ ")
        shell.sendline(f"{sys.executable} -m tachi wait {s['id']} --match never --timeout 60")
        child = running_command(server)
        shell.sendcontrol("z")
        shell.expect("Stopped")
        shell.expect_exact("PROMPT$ ")
        # The stop is delivered when the child is next scheduled: on a loaded
        # machine that can come after bash's prompt.
        deadline = time.monotonic() + 10
        while process_state(child) != "T" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_state(child) == "T"
        shell.sendline("fg")
        deadline = time.monotonic() + 10
        while process_state(child) == "T" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_state(child) in "SR"
        shell.sendintr()
        shell.expect_exact("tachi: interrupted")
        shell.expect_exact("PROMPT$ ")
        shell.sendline("echo status=$?")
        shell.expect(r"status=(\d+)")
        assert shell.match.group(1) == "130"
    finally:
        shell.close(force=True)


def test_attach_through_the_warm_cli_draws_follows_resizes_and_detaches(warm):
    s = warm.new("bash", "--norc", "--noprofile", name="wa")
    warm.run("send", "wa", "echo drawn-before-attach\\r", check=True)
    warm.run("wait", "wa", "--match", "drawn-before-attach", "--timeout", "10", check=True)
    term = pexpect.spawn(
        sys.executable,
        ["-m", "tachi", "attach", "wa"],
        env={**warm.env, **WARM},
        dimensions=(30, 100),
        timeout=20,
    )
    try:
        term.expect("drawn-before-attach")
        term.setwinsize(40, 120)
        deadline = time.monotonic() + 10
        size = None
        while time.monotonic() < deadline:
            size = warm.client().get(s["id"]).pty
            if (size.cols, size.rows) == (120, 40):
                break
            time.sleep(0.1)
        assert size is not None and (size.cols, size.rows) == (120, 40)
        term.send("\x1c")
        term.send("d")
        term.expect("detached from session")
        term.expect(pexpect.EOF)
    finally:
        term.close(force=True)
    assert term.exitstatus == 0


def test_a_change_on_disk_makes_the_warm_cli_step_aside_and_restart(tachi_home, tmp_path):
    # A directory on the daemon's import path: installing a distribution there
    # changes it, and the warm CLI must not go on running the old code.
    site = tmp_path / "site"
    site.mkdir()
    daemon = DaemonProcess(tachi_home, {"PYTHONPATH": str(site)})
    daemon.start()
    try:
        first = warm_listener(daemon)
        assert daemon.run("ls", env=WARM).returncode == 0
        time.sleep(0.02)  # a later mtime even on a coarse clock
        (site / "new_distribution.py").write_text("")
        refused = daemon.run("ls", env=WARM)
        assert refused.returncode == 255
        assert "warm CLI did not take the command" in refused.stderr
        assert daemon.run("ls", env=HERE).returncode == 0
        fresh = warm_listener(daemon, restarts=1)
        assert fresh["pid"] != first["pid"]
        assert daemon.run("ls", env=WARM).returncode == 0
    finally:
        daemon.stop()


def test_the_warm_cli_goes_with_the_daemon_and_comes_back_when_killed(tachi_home):
    daemon = DaemonProcess(tachi_home)
    daemon.start()
    try:
        first = warm_listener(daemon)
        os.kill(first["pid"], signal.SIGKILL)
        second = warm_listener(daemon, restarts=1)
        assert second["pid"] != first["pid"]
        assert daemon.run("ls", env=WARM).returncode == 0
        daemon.kill()  # SIGKILL: only the lifeline tells the server
        assert gone(second["pid"]), "the warm CLI outlived its daemon"
        assert not Path(str(daemon.socket) + ".warm").exists()
    finally:
        daemon.stop()


def test_warm_false_in_the_config_keeps_no_warm_cli(tachi_home):
    daemon = DaemonProcess(tachi_home, config="[cli]\nwarm = false\n")
    daemon.start()
    try:
        status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
        assert "warm-cli" not in status["transports"]
        assert not Path(str(daemon.socket) + ".warm").exists()
        assert daemon.run("ls", env=WARM).returncode == 255
        assert daemon.run("ls").returncode == 0
    finally:
        daemon.stop()


def test_another_user_never_gets_a_command_run(tmp_path):
    # The socket's mode is the first wall (0600); here it is opened on purpose,
    # and the server's own peer-credential check must still refuse.
    ensure_users()
    where = Path(tempfile.mkdtemp(prefix="tw-", dir="/tmp"))
    where.chmod(0o755)
    path = where / "w.warm"
    server = subprocess.Popen(
        [sys.executable, "-m", "tachi.cli.warm_server", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        path.chmod(0o666)

        def probe() -> bytes:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                try:
                    sock.sendall(REQUEST_MAGIC)
                    return sock.recv(64)
                except (BrokenPipeError, ConnectionResetError):  # closed on us
                    return b""

        # Closed without a pid: nothing ran. (Without the check the server
        # would fork a child waiting for the rest, and this recv would time out.)
        assert as_user("tachi-alice", probe) == b""
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(10)
        shutil.rmtree(where, ignore_errors=True)


def test_the_installed_tachi_script_uses_the_warm_cli_of_a_daemon_started_otherwise(warm):
    # The daemon here runs as `python -m tachi.daemon.server`; the script's
    # interpreter may be the venv's python3 instead: the same install.
    script = Path(sys.executable).parent / "tachi"
    out = subprocess.run(
        [str(script), "ls", "--json"],
        env={**warm.env, **WARM},
        stdin=DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (out.returncode, out.stderr) == (0, "")


def test_a_closed_stdin_or_a_background_job_runs_in_process(warm):
    # Closed stdin: nothing to hand over, so `tachi` runs the command itself.
    def close_stdin() -> None:
        os.close(0)

    closed = subprocess.run(
        warm.tachi_argv("ls", "--json"),
        env={**warm.env, **WARM},
        preexec_fn=close_stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert closed.returncode == 255 and "did not take the command" in closed.stderr
    works = subprocess.run(
        warm.tachi_argv("ls", "--json"),
        env=warm.env,
        preexec_fn=close_stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert works.returncode == 0, works.stderr
    # A background job on a terminal: job control must stop it if it reads the
    # terminal, so it is not handed to a process outside the job.
    shell = job_control_shell(warm)
    try:
        shell.expect_exact("PROMPT$ ")
        tachi = f"TACHI_WARM=require {sys.executable} -m tachi ls --json"
        shell.sendline(f"{tachi} & wait $!; echo bg=$?")
        shell.expect(r"bg=(\d+)")
        assert shell.match.group(1) == "255"
        shell.sendline(f"{tachi}; echo fg=$?")
        shell.expect(r"fg=(\d+)")
        assert shell.match.group(1) == "0"
    finally:
        shell.close(force=True)


@pytest.mark.parametrize(
    ("argv", "options", "command"),
    [
        (["ls"], {}, "ls"),
        (["--socket", "/s", "ls", "-a"], {"--socket": "/s"}, "ls"),
        (["--socket=/s", "daemon", "start"], {"--socket": "/s"}, "daemon"),
        (["--host", "wss://h:1", "--fingerprint", "SHA256:x", "get", "a"],
         {"--host": "wss://h:1", "--fingerprint": "SHA256:x"}, "get"),
        (["new", "--", "daemon"], {}, "new"),
        (["--version"], {"--version": ""}, None),
        ([], {}, None),
    ],
)  # fmt: skip
def test_global_options_are_split_from_the_command_as_click_does(argv, options, command):
    from tachi.launch import global_options

    assert global_options(argv) == (options, command)


@pytest.mark.parametrize(
    ("argv", "loads"),
    [
        (["ls"], False),
        (["--socket", "/nonexistent.sock", "ls"], False),
        (["--version"], False),
        (["some-plugin-command"], True),
        (["--help"], True),
    ],
)
def test_plugins_load_only_for_a_command_that_may_be_a_plugins(argv, loads):
    probe = (
        "import sys\n"
        f"sys.argv = ['tachi', *{argv!r}]\n"
        "from tachi.cli.main import _plugin_commands\n"
        "_plugin_commands()\n"
        "print('tachi.plugins' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == str(loads)


def test_the_tachi_command_itself_imports_neither_re_nor_typing(warm):
    # What `tachi` imports before handing over is its start-up: re and typing
    # alone cost it ~10 ms (a console-script wrapper imports re).
    script = Path(sys.executable).parent / "tachi"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), "ls", "--json"],
        env={**warm.env, **WARM},
        stdin=DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "tachi.launch" in imported
    assert not imported & {"re", "typing", "click", "asyncio"}, sorted(imported)


def test_nice_and_cpu_affinity_hold_for_the_command(warm):
    proc, child = start_waiting_command(warm, prefix=("nice", "-n", "7", "taskset", "-c", "0"))
    try:
        assert os.getpriority(os.PRIO_PROCESS, child) == 7
        assert os.sched_getaffinity(child) == {0}
    finally:
        proc.terminate()
        proc.wait(10)


def _blocked_signals(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        return int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)


def test_forwarded_signals_go_to_the_commands_main_thread(warm):
    # The command's process has a second thread (it watches the launcher). A
    # signal sent to the process may land on any thread not blocking it; one
    # landing there does not wake the main thread from sleep() or select(), so
    # Ctrl-C in `tachi play` would wait out the pause and attach would miss a
    # resize. Only the main thread may take them.
    proc, child = start_waiting_command(warm)
    try:
        others = [int(t) for t in os.listdir(f"/proc/{child}/task") if int(t) != child]
        assert others
        wanted = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGWINCH - 1))
        wanted |= 1 << (signal.SIGTERM - 1)
        # The main thread blocks them too while it starts the other: wait for
        # it to unblock them (bounded).
        deadline = time.monotonic() + 10
        while _blocked_signals(child, child) & wanted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _blocked_signals(child, child) & wanted == 0  # the main thread takes them
        for tid in others:
            assert _blocked_signals(child, tid) & wanted == wanted, f"thread {tid}"
        proc.send_signal(signal.SIGINT)  # forwarded: the wait ends at once
        assert proc.wait(10) == 130
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def test_the_launcher_knows_every_group_option_that_takes_a_value():
    # tachi.launch finds the command past the group's options without click;
    # its list must follow the group's.
    from tachi.cli.main import cli
    from tachi.launch import _VALUED_OPTIONS

    valued = {
        name
        for param in cli.params
        if isinstance(param, click.Option) and not param.is_flag and not param.count
        for name in param.opts
        if name.startswith("--")
    }
    assert valued == _VALUED_OPTIONS


def test_the_directory_the_daemon_started_in_is_not_on_its_import_path(tachi_home, tmp_path):
    # `tachi new` in a project auto-starts the daemon there. That directory must
    # not be on the daemon's (or its helpers') import path: a module planted in
    # it would load into the daemon, and each file saved there looked like
    # tachi's code changing, so the warm CLI restarted on every command.
    work = tmp_path / "project"
    work.mkdir()
    marker = tmp_path / "planted-module-ran"
    (work / "uvloop.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    daemon = DaemonProcess(tachi_home, {"TACHI_EVENT_LOOP": "uvloop"})
    started = subprocess.run(
        [sys.executable, "-m", "tachi", "daemon", "start"],
        env=daemon.env, cwd=work, capture_output=True, text=True, timeout=30, stdin=DEVNULL,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        first = warm_listener(daemon)
        for i in range(3):
            (work / f"edited-{i}.txt").write_text("saved")
            time.sleep(0.02)  # a later directory mtime even on a coarse clock
            assert daemon.run("ls", env=WARM).returncode == 0, f"edit {i}: not warm"
        assert warm_listener(daemon)["restarts"] == 0 and not marker.exists()
        assert warm_listener(daemon)["pid"] == first["pid"]
    finally:
        subprocess.run(
            [sys.executable, "-m", "tachi", "daemon", "stop"], env=daemon.env, timeout=30,
            capture_output=True, stdin=DEVNULL,
        )  # fmt: skip
