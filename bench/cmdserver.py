"""Prototype, not part of the product: what a command server would take off
`tachi`'s start-up (as Mercurial's chg does for hg).

A warm server process has already imported the tachi CLI and every command
module. It listens on a private Unix socket (0600 in a 0700 directory). The
minimal client (bench/cmdclient.py: socket, os, sys) sends argv, cwd, umask and
the environment and passes its descriptors 0, 1, 2 with SCM_RIGHTS; the server
checks the peer's uid (SO_PEERCRED), forks a child that dup2s the descriptors
onto 0/1/2, chdirs, takes the umask and environment, runs the click command
(``tachi.cli.main:main``, which always ends in SystemExit) and sends the exit
status back; the client exits with it.

Measured against a private daemon, interleaved over rounds, median of ``--runs``
each: ``.venv/bin/tachi ls|send|capture`` vs the client (under ``python -I -S``
and plain ``python``) running the same, and the floor: the client round trip
to a child that runs nothing (``noop``). Nothing asserts a timing.

    .venv/bin/python bench/cmdserver.py [--runs 20]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness

CLIENT = str(Path(__file__).resolve().parent / "cmdclient.py")
TACHI = str(Path(harness.PY).parent / "tachi")
#: The session the commands talk to (it runs `cat`).
SESSION = "cs"

COST = """\
What productising it would cost. Signals: the client must forward SIGINT,
SIGTERM, SIGHUP and SIGTSTP to the child (the child is not in the terminal's
foreground process group, so Ctrl-C reaches only the client), and report a
child killed by a signal as 128+N. Attach: the child must own the client's tty
(TIOCSCTTY needs a setsid'd child and steals the tty from the client's session;
or the client stays the tty's owner and relays SIGWINCH and raw mode), and
job control (Ctrl-Z) spans two processes. A stale server: after an upgrade or
`pip install -e` it still runs the old code, so it must compare its version and
module mtimes (as chg does with its config hash) and re-exec, and clients of
different versions must not share it; it also needs an idle timeout and a
per-user socket beside the daemon's. State: cwd, umask and environment are
passed here, but not rlimits, the locale chosen at interpreter start
(sys.stdout's encoding, LANG changes), the controlling terminal, supplementary
groups or resource accounting; module-level caches in tachi must be read per
call, never at import. Security: the socket must be 0600 in a 0700 directory
and the server must check the peer with SO_PEERCRED (same uid, as here) since
it runs anything as the user. Fallback: if the server is missing or refuses,
the client must exec the normal `tachi` with the same argv, so it may never
fail where `tachi` would work. And a second long-lived process per user to
start, find, upgrade and stop; the daemon itself could host it instead.
"""


# -- the server ----------------------------------------------------------------------
def serve(path: str) -> None:
    """Import everything `tachi` may need once, then fork a child per connection."""
    import tachi.cli.main as cli_main

    for module in sorted(set(cli_main.COMMAND_MODULES.values())):
        importlib.import_module(f"tachi.cli.{module}")
    importlib.import_module("tachi.client.sync")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    try:
        while True:
            conn, _ = listener.accept()
            if os.fork() == 0:
                listener.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                try:
                    serve_one(conn, cli_main.main)
                finally:
                    os._exit(0)
            conn.close()
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def serve_one(conn: socket.socket, cli: Any) -> None:
    """One command, in the forked child: take over the client's descriptors, cwd,
    umask and environment, run the CLI, send back its exit status."""
    if peer_uid(conn) != os.getuid():
        return
    message, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    size, _, payload = message.partition(b"\n")
    while len(payload) < int(size):
        chunk = conn.recv(1 << 16)
        if not chunk:
            return
        payload += chunk
    fields = payload.split(b"\0")
    cwd, umask, argc = fields[0], int(fields[1]), int(fields[2])
    argv = [os.fsdecode(arg) for arg in fields[3 : 3 + argc]]
    environ = dict(field.split(b"=", 1) for field in fields[3 + argc :] if b"=" in field)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(cwd)
    os.umask(umask)
    os.environb.clear()
    os.environb.update(environ)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=stream.isatty())
    conn.sendall(b"%d\n" % run_cli(cli, argv))


def run_cli(cli: Any, argv: list[str]) -> int:
    if argv == ["noop"]:
        return 0
    sys.argv = ["tachi", *argv]
    try:
        cli()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


# -- the measurement -----------------------------------------------------------------
def start_server(env: dict[str, str], path: Path) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        [harness.PY, __file__, "serve", str(path)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    if not select.select([server.stdout], [], [], 30)[0] or server.stdout.readline() != "ready\n":
        stop_server(server)
        raise RuntimeError("the command server did not start")
    return server


def stop_server(server: subprocess.Popen[str]) -> None:
    server.terminate()
    try:
        server.wait(5)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(5)


def check(env: dict[str, str]) -> None:
    """The prototype must behave as `tachi`: same stdout, stderr and exit status
    (with either socket module in the client)."""
    cases = [["ls", "--json"], ["capture", "no-such-session"], ["send", SESSION, "x"]]
    for argv in cases:
        normal = subprocess.run([TACHI, *argv], env=env, capture_output=True, timeout=30)
        for lowlevel in ({}, {"TACHI_CMDCLIENT_LOWLEVEL": "1"}):
            proto = subprocess.run(
                [harness.PY, "-I", "-S", CLIENT, *argv],
                env=env | lowlevel,
                capture_output=True,
                timeout=30,
            )
            got = (proto.returncode, proto.stdout, proto.stderr)
            same = got == (normal.returncode, normal.stdout, normal.stderr)
            print(
                f"check {' '.join(argv)}{' (_socket)' if lowlevel else ''}: exit "
                f"{normal.returncode}/{proto.returncode}"
                + (", same output" if same else f", DIFFERENT: {normal!r} vs {proto!r}")
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="samples of each (interleaved)")
    args = parser.parse_args()
    env = harness.Env()
    server_dir = Path(tempfile.mkdtemp(prefix="tcs-"))  # 0700
    server = None
    try:
        env.tachi("daemon", "start")
        env.tachi("new", "-d", "--name", SESSION, "--", "cat")
        path = server_dir / "s"
        server = start_server(env.env, path)
        cenv = {**env.env, "TACHI_CMDSERVER": str(path)}
        check(cenv)
        commands = {"ls": ["ls"], "send": ["send", SESSION, "x"], "capture": ["capture", SESSION]}
        variants: dict[str, list[str]] = {}
        for name, argv in commands.items():
            variants[f"tachi {name}"] = [TACHI, *argv]
            variants[f"client -I -S {name}"] = [harness.PY, "-I", "-S", CLIENT, *argv]
            variants[f"client {name}"] = [harness.PY, CLIENT, *argv]
        variants["client -I -S noop"] = [harness.PY, "-I", "-S", CLIENT, "noop"]
        variants["client noop"] = [harness.PY, CLIENT, "noop"]
        low = [harness.PY, "-I", "-S", CLIENT]
        for name in ["noop", *commands]:
            variants[f"_socket -I -S {name}"] = [*low, *commands.get(name, ["noop"])]
        samples: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.runs):
            for variant, argv in variants.items():
                lowlevel = {"TACHI_CMDCLIENT_LOWLEVEL": "1"} if variant[0] == "_" else {}
                ms = harness.wall_ms(argv, cenv | lowlevel, check=False)
                samples[variant].append(ms)
    finally:
        if server is not None:
            stop_server(server)
        shutil.rmtree(server_dir, ignore_errors=True)
        env.close()
    print(f"\nwhole-process wall time, ms, {args.runs} interleaved runs each")
    print(f"{'variant':22} {'median':>7} {'min':>7} {'max':>7}  vs tachi")
    for variant, values in samples.items():
        base = (
            statistics.median(samples[f"tachi {variant.split()[-1]}"])
            if "noop" not in variant
            else 0
        )
        ratio = f"{statistics.median(values) / base:.2f}" if base else ""
        print(
            f"{variant:22} {statistics.median(values):7.1f} {min(values):7.1f}"
            f" {max(values):7.1f}  {ratio}"
        )
    print("\n" + COST)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2])
    else:
        sys.exit(main())
