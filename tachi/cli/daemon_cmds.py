"""``tachi daemon start|stop|restart|upgrade|status|listen|unlisten|listeners|reload``
and ``tachi plugins``."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tachi.cli.main import Context, cli, json_option, pass_ctx
from tachi.cli.output import emit_json, fields, human, plural, table
from tachi.errors import DaemonUnavailable


@cli.group("daemon")
def daemon() -> None:
    """Start, stop and inspect the tachi daemon (tachid)."""


@daemon.command("start")
@click.option(
    "--foreground", is_flag=True, help="Run in this process (for systemd and other supervisors)."
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Also serve network clients there (WebSocket; needs tachi-websocket).",
)
@pass_ctx
def start(ctx: Context, foreground: bool, listen: str | None) -> None:
    """Start the daemon (it also starts on first use)."""
    from tachi.client.autostart import start_daemon

    extra = ("--listen", listen) if listen else ()
    if foreground:
        from tachi.daemon.server import main as daemon_main

        sys.exit(daemon_main(["--socket", str(ctx.socket_path), *extra]))
    try:
        with ctx.client(autostart=False) as client:
            status = client.status()
    except DaemonUnavailable:
        status = None
    if status is not None:
        click.echo(f"tachid already running (pid {status['pid']}) on {ctx.socket_path}", err=True)
        if listen:
            # Added to the running daemon, as 'tachi daemon listen' does: no session is touched.
            with ctx.client(autostart=False) as client:
                _echo_listening(client.call("daemon.listen", address=listen))
        return
    pid = start_daemon(ctx.socket_path, extra_args=extra)
    click.echo(f"tachid started (pid {pid}) on {ctx.socket_path}", err=True)
    if listen:
        with ctx.client(autostart=False) as client:
            for listener in client.status().get("listeners", []):
                if listener.get("transport") in ("unix", "warm-cli"):
                    continue
                _echo_listening(listener)


def _echo_listening(listener: dict[str, Any]) -> None:
    """``listening on URL (certificate FP)``, as ``daemon start --listen`` prints it."""
    fp = listener.get("fingerprint") or listener.get("hostKey")
    note = f" (certificate {fp})" if listener.get("fingerprint") else ""
    if not note and fp:
        note = f" (host key {fp})"
    click.echo(f"listening on {listener.get('url') or listener.get('address')}{note}", err=True)


@daemon.command("listen")
@click.argument("address", metavar="HOST:PORT")
@click.option(
    "--transport",
    default="websocket",
    show_default=True,
    help="The transport plugin that listens (websocket, ssh…); its [transports.NAME]"
    " settings in config.toml apply.",
)
@json_option
@pass_ctx
def listen_cmd(ctx: Context, address: str, transport: str, as_json: bool) -> None:
    """Start a listener on the running daemon; no session is touched.

    It stays until 'tachi daemon unlisten' or a clean 'tachi daemon stop',
    through reloads, restarts and crashes. Only the daemon's user may.
    """
    with ctx.client(autostart=False) as client:
        listener = client.call("daemon.listen", address=address, transport=transport)
    if as_json:
        emit_json(listener)
        return
    _echo_listening(listener)


@daemon.command("unlisten")
@click.argument("address", metavar="HOST:PORT")
@click.option("--transport", default=None, help="Only a listener of this transport.")
@pass_ctx
def unlisten_cmd(ctx: Context, address: str, transport: str | None) -> None:
    """Stop a listener (by the address it was given or is bound to); its
    connections end, the sessions go on. A config.toml listener comes back at
    the next 'tachi daemon reload' or start: remove it from the file to keep it off."""
    args: dict[str, Any] = {"address": address}
    if transport:
        args["transport"] = transport
    with ctx.client(autostart=False) as client:
        stopped = client.call("daemon.unlisten", **args)
    click.echo(f"stopped listening on {stopped.get('url') or stopped['address']}", err=True)


@daemon.command("listeners")
@json_option
@pass_ctx
def listeners_cmd(ctx: Context, as_json: bool) -> None:
    """What the daemon listens on: each transport, its URL, where it came from
    (config, added) and its connections."""
    with ctx.client(autostart=False) as client:
        found = client.call("daemon.listeners")
    if as_json:
        emit_json(found)
        return
    table(
        ["TRANSPORT", "URL", "SOURCE", "CONNECTIONS"],
        [
            [
                x["transport"],
                str(x.get("url") or x.get("address") or x.get("socket") or "-"),
                x.get("source") or "-",
                str(x.get("connections", "-")),
            ]
            for x in found
        ],
    )


@daemon.command("reload")
@json_option
@pass_ctx
def reload_cmd(ctx: Context, as_json: bool) -> None:
    """Re-read config.toml and start, restart or stop listeners to match its
    [transports.NAME] listen settings; no session is touched. Listeners added
    with 'daemon listen' or --listen stay. A config that does not load, or a
    listener that cannot start, changes nothing (exit 1). Other settings take
    effect at the next restart."""
    with ctx.client(autostart=False) as client:
        result = client.call("daemon.reload")
    if as_json:
        emit_json(result)
        return
    for listener in result["started"]:
        _echo_listening(listener)
    for listener in result["restarted"]:
        click.echo(f"restarted {listener['transport']} on {listener.get('url')}", err=True)
    for listener in result["stopped"]:
        click.echo(f"stopped listening on {listener.get('url') or listener['address']}", err=True)
    if not any(result[k] for k in ("started", "restarted", "stopped")):
        click.echo("listeners unchanged", err=True)


@daemon.command("stop")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for it to exit.")
@pass_ctx
def stop(ctx: Context, timeout: float) -> None:
    """Stop the daemon; every session is closed (reason daemon-stopped)."""
    try:
        client = ctx.client(autostart=False)
    except DaemonUnavailable as exc:
        listener = None if ctx.host else _socket_owner(ctx.socket_path)
        if listener is None:
            click.echo("tachid is not running", err=True)
            return
        _stop_by_signal(listener, ctx.socket_path, timeout, str(exc))
        return
    with client:
        # Watch the process itself, opened before it is asked to stop: the socket
        # file goes first, the audit log and the state are closed after it.
        exited = _exit_watch(client.status()["pid"], ctx.socket_path)
        result = client.call("daemon.stop")
    if not exited(timeout):
        raise DaemonUnavailable(f"tachid (pid {result['pid']}) did not exit within {timeout:g}s")
    click.echo(f"tachid stopped ({plural(result['sessions'], 'session')} closed)", err=True)


@daemon.command("restart")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for it to exit.")
@pass_ctx
def restart(ctx: Context, timeout: float) -> None:
    """Restart the daemon, keeping every session: the same processes, screens,
    names and grants (the session keeper holds them meanwhile; see docs/survival.md)."""
    from tachi.client.autostart import start_daemon

    try:
        client = ctx.client(autostart=False)
    except DaemonUnavailable:
        pid = start_daemon(ctx.socket_path)
        click.echo(f"tachid was not running; started (pid {pid}) on {ctx.socket_path}", err=True)
        return
    with client:
        status = _status_with_keeper(client)
    old_pid, pid, gap, kept = _restart(ctx, status, timeout)
    click.echo(
        f"tachid restarted (pid {old_pid} -> {pid}): {plural(kept, 'session')} kept,"
        f" {gap * 1000:.0f} ms without service",
        err=True,
    )


@daemon.command("upgrade")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for it to exit.")
@pass_ctx
def upgrade(ctx: Context, timeout: float) -> None:
    """Move the running daemon and session keeper to the code installed now,
    keeping every session (run it after 'pip install -U tachi-sessions').

    \b
    1. The new code is tried first: a daemon of it starts on a scratch socket,
       answers and runs a session. If not, nothing changes (exit 1).
    2. The session keeper, if its code changed, re-executes itself on the new
       code, keeping its pid, every PTY and every session process.
    3. The daemon restarts on the new code and adopts every session.
    """
    from tachi.core.keeper_link import KeeperError, keeper_request

    with ctx.client(autostart=False) as client:
        status = _status_with_keeper(client)
    old_version = status.get("version")
    try:
        new_version = _trial(timeout)
    except click.ClickException as exc:
        raise click.ClickException(
            f"the installed code does not start, so nothing was changed"
            f" (tachid {old_version}, pid {status['pid']}, keeps running): {exc.message}"
        ) from None
    try:
        keeper = keeper_request(ctx.socket_path, {"op": "ping"})
        note = f"keeper pid {keeper.get('pid')} unchanged"
        if keeper.get("code") != keeper.get("disk"):
            answer = keeper_request(ctx.socket_path, {"op": "reexec"}, timeout=60)
            if not answer.get("ok"):
                raise click.ClickException(
                    f"the session keeper kept its old code ({answer.get('error')});"
                    f" nothing was changed (tachid {old_version} keeps running)"
                )
            note = f"keeper pid {answer.get('pid')} re-executed on the new code"
    except KeeperError as exc:
        raise click.ClickException(f"{exc}; nothing was changed") from None
    old_pid, pid, gap, kept = _restart(ctx, status, timeout)
    with ctx.client(autostart=False) as client:
        version = client.status().get("version")
    click.echo(
        f"tachid upgraded {old_version} -> {version} (pid {old_pid} -> {pid}, {note}):"
        f" {plural(kept, 'session')} kept, {gap * 1000:.0f} ms without service",
        err=True,
    )
    if version != new_version:
        click.echo(f"warning: the trial ran {new_version}, the daemon now runs {version}", err=True)


def _status_with_keeper(client: Any) -> dict[str, Any]:
    """The daemon's status; a ``ClickException`` if it has no session keeper
    (a restart would then close every session)."""
    status: dict[str, Any] = client.status()
    if not (status.get("keeper") or {}).get("connected"):
        raise click.ClickException(
            "this daemon has no session keeper (TACHI_KEEPER=off, or it failed to start):"
            " a restart would close every session; use 'tachi daemon stop' and start"
        )
    return status


def _restart(ctx: Context, status: dict[str, Any], timeout: float) -> tuple[int, int, float, int]:
    """Stop the daemon leaving its sessions to the keeper and start the next one
    with the same listeners: (old pid, new pid, seconds without service, sessions kept)."""
    from tachi.client.autostart import start_daemon

    # A daemon that keeps its added listeners itself (they have a source) is
    # given none: the next one starts them from its state, and the config's
    # from the config. An older daemon's listener is passed on as --listen.
    extra = _listen_args([x for x in status.get("listeners", []) if "source" not in x])
    exited = _exit_watch(status["pid"], ctx.socket_path)
    began = time.monotonic()
    with ctx.client(autostart=False) as client:
        result = client.call("daemon.stop", keepSessions=True)
    if not exited(timeout):
        raise DaemonUnavailable(f"tachid (pid {result['pid']}) did not exit within {timeout:g}s")
    try:
        pid = start_daemon(ctx.socket_path, extra_args=extra)
    except DaemonUnavailable as exc:
        raise DaemonUnavailable(
            f"{exc}; every session waits in the session keeper: fix what the log says,"
            " then any tachi command starts a daemon that adopts them"
        ) from None
    gap = time.monotonic() - began
    with ctx.client(autostart=False) as client:
        kept = int(client.status()["sessions"])
    return int(result["pid"]), pid, gap, kept


#: How long the trial daemon of 'tachi daemon upgrade' may take to start and serve.
TRIAL_SECONDS = 30.0


def _trial(timeout: float) -> str:
    """Start a daemon of the code installed now on a scratch socket and state
    directory, check that it serves (status, a session that runs and ends)
    with the CLI of that code too, and stop it. Returns its version; raises
    ``ClickException`` with what went wrong."""
    import json
    import os
    import shutil
    import subprocess
    import tempfile

    scratch = tempfile.mkdtemp(prefix="tachi-upgrade-", dir="/tmp")
    sock = os.path.join(scratch, "s.sock")
    env = {**os.environ, "TACHI_HOME": scratch, "TACHI_SOCKET": sock}
    env.pop("TACHI_TOKEN", None)
    log_path = os.path.join(scratch, "daemon.log")

    def tachi(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-P", "-m", "tachi", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=TRIAL_SECONDS,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def last_line(text: str) -> str:
        lines = text.strip().splitlines()
        return lines[-1] if lines else "no output"

    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "tachi.daemon.server", "--socket", sock],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + TRIAL_SECONDS
            while not os.path.exists(sock):
                if proc.poll() is not None or time.monotonic() > deadline:
                    with open(log_path, errors="replace") as f:
                        raise click.ClickException(f"trial daemon: {last_line(f.read())}")
                time.sleep(0.05)
            status = tachi("daemon", "status", "--json")
            if status.returncode != 0:
                raise click.ClickException(f"trial daemon status: {last_line(status.stderr)}")
            version = str(json.loads(status.stdout).get("version"))
            made = tachi("new", "-d", "--json", "--", "sh", "-c", "exit 0")
            if made.returncode != 0:
                raise click.ClickException(f"trial session: {last_line(made.stderr)}")
            return version
        finally:
            tachi("daemon", "stop", "--timeout", str(timeout))
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _listen_args(listeners: list[dict[str, object]]) -> tuple[str, ...]:
    """``--listen HOST:PORT`` for the network listener a daemon has, so its
    successor comes back with it."""
    from urllib.parse import urlsplit

    for listener in listeners:
        if listener.get("transport") in ("unix", "warm-cli"):
            continue
        url = urlsplit(str(listener.get("url", "")))
        if url.hostname and url.port:
            host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
            return ("--listen", f"{host}:{url.port}")
    return ()


def _socket_owner(path: Path) -> tuple[int, int] | None:
    """(pid, uid) of the process listening on the Unix socket ``path``, as the
    kernel reports it, or ``None`` if nothing accepts connections there."""
    import socket
    import struct

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(str(path))
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _stop_by_signal(listener: tuple[int, int], socket: Path, timeout: float, why: str) -> None:
    """Stop a daemon that is alive but did not answer, with SIGTERM (what it
    does on ``daemon.stop`` too); raise saying what failed if that is not ours
    to do or does not work."""
    import os
    import signal

    pid, uid = listener
    if uid != os.getuid():
        raise DaemonUnavailable(
            f"the process listening on {socket} (pid {pid}, uid {uid}) did not answer: {why}"
        )
    click.echo(
        f"tachid (pid {pid}) is running but did not answer: {why}; sending SIGTERM", err=True
    )
    exited = _exit_watch(pid, socket)
    with contextlib.suppress(ProcessLookupError):  # gone already: the watch says so
        os.kill(pid, signal.SIGTERM)
    if not exited(timeout):
        raise DaemonUnavailable(f"tachid (pid {pid}) did not exit within {timeout:g}s of SIGTERM")
    click.echo("tachid stopped", err=True)


def _exit_watch(pid: int, socket: Path) -> Callable[[float], bool]:
    """A function that waits up to its argument in seconds for process ``pid`` to
    exit and says whether it did."""
    import os
    import select

    try:
        fd = os.pidfd_open(pid)
    except OSError:  # not visible from here: wait for its socket to go instead
        return lambda timeout: _socket_gone(socket, timeout)

    def wait(timeout: float) -> bool:
        try:
            return bool(select.select([fd], [], [], timeout)[0])
        finally:
            os.close(fd)

    return wait


def _socket_gone(socket: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not socket.exists():
            return True
        time.sleep(0.02)
    return False


@daemon.command("status")
@json_option
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Show whether the daemon runs: pid, socket, state, audit log. Exits 1 if not."""
    try:
        with ctx.client(autostart=False) as client:
            info = client.status()
    except DaemonUnavailable as exc:
        if as_json:
            emit_json({"running": False, "socket": str(ctx.socket_path), "error": str(exc)})
        else:
            click.echo(f"tachid is not running ({ctx.socket_path})", err=True)
        sys.exit(1)
    info = {"running": True, **info}
    if as_json:
        emit_json(info)
        return
    listeners = info.pop("listeners", [])
    fields(info, 10)
    for listener in listeners:
        extra = {k: v for k, v in listener.items() if k not in ("transport", "url")}
        line = f"{listener['transport']} {listener.get('url', '')}"
        click.echo(f"{'listener':10} {line} {human(extra)}" if extra else f"{'listener':10} {line}")


@cli.command("plugins")
@json_option
@pass_ctx
def plugins(ctx: Context, as_json: bool) -> None:
    """List the plugins the daemon has loaded, with their hooks and origin."""
    with ctx.client() as client:
        loaded = client.call("plugins.list")
    if as_json:
        emit_json(loaded)
        return
    table(
        ["NAME", "DISTRIBUTION", "HOOKS", "FROM"],
        [
            [
                p["name"],
                f"{p['distribution']} {p['version']}"
                if p["distribution"]
                else ("builtin" if p["builtin"] else "-"),
                ",".join(h.removeprefix("tachi_") for h in p["hooks"]),
                p["module"],
            ]
            for p in loaded
        ],
    )
