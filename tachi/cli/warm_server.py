"""The warm CLI: the whole ``tachi`` CLI imported once, each command run in a fork.

The daemon starts this (``tachi.builtins.warm_cli``) as
``python -m tachi.cli.warm_server SOCKET``; ``tachi.launch`` is its client and
describes the exchange. The server's standard input is a lifeline: the daemon
holds its other end, so when the daemon goes, even by SIGKILL, the server sees
the end of it and exits. It prints ``ready`` on standard output once it
listens, and exits with ``STALE`` when the code it imported has changed on disk
(an upgrade, an edit of an editable install), so that the daemon starts a
fresh one; that command, and every one until then, runs in the launcher.

The child of each command takes over what it is sent (descriptors 0, 1, 2,
the working directory, umask, environment, open-file limit, stream encodings,
argv) and then runs ``tachi.cli.main.main`` exactly as the launcher would.
If the launcher vanishes (SIGKILL), the child kills itself too, as the
command would have died with it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import locale
import os
import pkgutil
import resource
import select
import signal
import site
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass

from tachi.launch import LOST, REQUEST_MAGIC, install_id

#: Exit status when the code on disk changed: start a fresh server.
STALE = 75
#: Descriptors a request carries: 0, 1, 2 and the working directory.
REQUEST_FDS = 4
#: The largest request taken (argv and environment).
MAX_REQUEST = 4 << 20
_CREDS = struct.Struct("3i")


# -- the server --------------------------------------------------------------------
def preload() -> None:
    """Import what the built-in commands may need, so that no child pays for it.
    Plugins are not preloaded (most commands never load them, and they would
    double the server's memory; a plugin command loads them in its child),
    except the client side of the transports, for remote commands."""
    import tachi.cli
    import tachi.client

    for package in (tachi.cli, tachi.client):
        for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if module.name != "tachi.cli.warm_server":
                importlib.import_module(module.name)
    # The transports' client side (`tachi --host wss://…`), which a plugin
    # names in WARM_PRELOAD: each remote command would import it again (the
    # websockets client: ~30 ms). A broken plugin must not keep the warm CLI
    # from starting: its commands then import it themselves.
    from tachi.client.endpoint import transport_plugins
    from tachi.plugins import make_plugin_manager

    try:
        for plugin in make_plugin_manager(hooks={"tachi_connect"}).get_plugins():
            for name in getattr(plugin, "WARM_PRELOAD", ()):
                warm = getattr(importlib.import_module(name), "warm", None)
                if callable(warm):
                    warm()  # what each command would make again (TLS contexts)
            for scheme in getattr(plugin, "URL_SCHEMES", ()):
                # The plugins a command for such URLs loads (with this
                # server's plugin selection; a command with another makes its own).
                transport_plugins(frozenset({"tachi_connect"}), scheme)
    except Exception:
        traceback.print_exc()


def watched_files() -> list[str]:
    """The files whose change makes this server stale: every module it imported
    from outside the standard library, and each directory on ``sys.path`` (a
    distribution installed or removed changes its directory)."""
    stdlib = os.path.dirname(os.__file__)
    installed = (*site.getsitepackages(), site.getusersitepackages())
    files = {
        path
        for module in list(sys.modules.values())
        if (path := getattr(module, "__file__", None))
        and (path.startswith(installed) or not path.startswith(stdlib))
    }
    files.update(entry for entry in sys.path if entry and os.path.isdir(entry))
    return sorted(files)


def stamp(files: list[str]) -> list[int]:
    """The modification times of ``files`` (0 for one that is gone)."""
    out = []
    for path in files:
        try:
            out.append(os.stat(path).st_mtime_ns)
        except OSError:
            out.append(0)
    return out


def listen(path: str) -> socket.socket:
    """A listening socket at ``path``, 0600 (the daemon made sure it is the only
    daemon on its socket, so whatever is at ``path`` is a leftover)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(128)
    return listener


def peer_uid(conn: socket.socket) -> int:
    return _CREDS.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))[1]


def serve(path: str) -> int:
    """Serve until the lifeline ends or SIGTERM; returns the exit status."""
    from tachi.library_warnings import hide_unless_asked

    hide_unless_asked()  # the children inherit it
    preload()
    files = watched_files()
    loaded = stamp(files)
    listener = listen(path)
    bound = os.stat(path).st_ino
    # Children are nobody's to wait for: the kernel reaps them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    try:
        while True:
            ready, _, _ = select.select([listener, sys.stdin], [], [])
            if sys.stdin in ready:
                return 0  # the daemon is gone
            try:
                conn, _ = listener.accept()
            except OSError:  # out of descriptors, say: launchers run in-process meanwhile
                time.sleep(0.1)
                continue
            if peer_uid(conn) != os.getuid():
                conn.close()
                continue
            if stamp(files) != loaded:
                decline(conn)
                return STALE
            try:
                pid = os.fork()
            except OSError:  # out of processes: this command runs in its launcher
                decline(conn)
                continue
            if pid == 0:
                # The child never returns into this loop (or its finally).
                run_child(conn, listener)
            conn.close()
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == bound:
                os.unlink(path)


def decline(conn: socket.socket) -> None:
    """Tell the launcher to run its command itself."""
    with contextlib.suppress(OSError):
        conn.sendall(b"F\n")
    conn.close()


# -- one command, in the child -------------------------------------------------------
@dataclass
class Request:
    """What a launcher hands over (see ``tachi.launch.encode_request``)."""

    umask: int
    encodings: list[str]
    argv: list[str]
    environ: dict[bytes, bytes]
    nofile: int
    nice: int
    cpus: set[int]
    fds: list[int]


def read_request(conn: socket.socket) -> Request | None:
    """The launcher's request, or ``None`` if it is malformed or from another
    install (its descriptors are closed then)."""
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, REQUEST_FDS)
    try:
        while data.count(b"\n") < 2 and len(data) < 64:
            more = conn.recv(1 << 16)
            if not more:
                raise ValueError("short request")
            data += more
        magic, size_line, payload = data.split(b"\n", 2)
        size = int(size_line)
        if magic + b"\n" != REQUEST_MAGIC or size > MAX_REQUEST or len(fds) != REQUEST_FDS:
            raise ValueError("not a request of this version")
        chunks = [payload]
        received = len(payload)
        while received < size:
            more = conn.recv(min(1 << 20, size - received))
            if not more:
                raise ValueError("short request")
            chunks.append(more)
            received += len(more)
        fields = b"".join(chunks).split(b"\0")
        if fields[0].decode() != install_id():
            raise ValueError("a launcher of another install")
        umask, nofile = int(fields[1]), int(fields[2])
        nice, cpus = int(fields[3]), {int(cpu) for cpu in fields[4].split(b",") if cpu}
        encodings = [field.decode() for field in fields[5:8]]
        argc = int(fields[8])
        argv = [os.fsdecode(arg) for arg in fields[9 : 9 + argc]]
        environ = dict(field.split(b"=", 1) for field in fields[9 + argc :] if b"=" in field)
        return Request(
            umask=umask,
            encodings=encodings,
            argv=argv,
            environ=environ,
            nofile=nofile,
            nice=nice,
            cpus=cpus,
            fds=fds,
        )
    except (ValueError, IndexError, UnicodeDecodeError):
        for fd in fds:
            os.close(fd)
        return None


def adopt(request: Request) -> None:
    """Become the launcher: its descriptors, directory, umask, environment,
    limits, priority, CPUs and streams."""
    for target, fd in enumerate(request.fds[:3]):
        os.dup2(fd, target)
    os.fchdir(request.fds[3])
    for fd in request.fds:
        if fd > 2:
            os.close(fd)
    # Named as the command it now is, for top and pgrep (ps's full command
    # line stays the server's).
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write("tachi")
    os.umask(request.umask)
    os.environb.clear()
    os.environb.update(request.environ)
    time.tzset()
    with contextlib.suppress(locale.Error):
        locale.setlocale(locale.LC_CTYPE, "")
    # `nice tachi …` and `taskset … tachi …` hold for the command. A process
    # may lower its own priority, never raise it, so only that is tried.
    if request.nice > os.getpriority(os.PRIO_PROCESS, 0):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, request.nice)
    if request.cpus and request.cpus != os.sched_getaffinity(0):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, request.cpus)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with contextlib.suppress(ValueError, OSError):  # RLIM_INFINITY is -1 on both ends
        resource.setrlimit(resource.RLIMIT_NOFILE, (request.nofile, hard))
    # New stream objects, made as the interpreter makes them at start: the old
    # ones were made for the server's own descriptors.
    buffered = not request.environ.get(b"PYTHONUNBUFFERED")
    streams = zip((0, 1, 2), ("stdin", "stdout", "stderr"), request.encodings, strict=True)
    for fd, name, encoding in streams:
        codec, _, errors = encoding.partition(":")
        # As with -u: stdout and stderr unbuffered, stdin always buffered.
        mode, buffering = ("rb", -1) if fd == 0 else ("wb", -1 if buffered else 0)
        raw = open(fd, mode, buffering=buffering, closefd=False)  # noqa: SIM115 (lives on as sys.std*)
        stream = io.TextIOWrapper(
            raw,
            encoding=codec or None,
            errors=errors or None,
            newline="\n",
            line_buffering=buffered and (fd == 2 or os.isatty(fd)),
            write_through=not buffered,
        )
        stream.mode = "r" if fd == 0 else "w"  # type: ignore[misc]
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    sys.argv = request.argv


def run_child(conn: socket.socket, listener: socket.socket) -> None:
    """Run one command and exit; never returns."""
    status = LOST
    try:
        # The lifeline (0) and the ready pipe (1) stay open until adopt()
        # replaces them, so the descriptors received are never 0, 1 or 2.
        listener.close()
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        request = read_request(conn)
        if request is None:
            decline(conn)
            os._exit(0)
        conn.sendall(b"P %d\n" % os.getpid())
        if _read_line(conn) != b"G":
            os._exit(0)  # the launcher gave up: it runs the command itself
        adopt(request)
        _start_launcher_watch(conn)
        status, died_of = run_command()
        message = b"S %d\n" % died_of if died_of else b"X %d\n" % status
        conn.sendall(message)
    except BaseException:  # whatever happens, this process must end here
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(status & 0xFF)


def run_command() -> tuple[int, int]:
    """Run the CLI as the interpreter would run a script: (exit status, signal it died of)."""
    from tachi.cli.main import main

    status, died_of = 0, 0
    try:
        main()
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except KeyboardInterrupt:
        died_of = signal.SIGINT
    except BaseException:  # printed as the interpreter prints it
        traceback.print_exc()
        status = 1
    # What interpreter shutdown does, in its order.
    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = 120  # as the interpreter exits when it cannot flush stdout
    return status, died_of


def _read_line(conn: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            return b""
        line += byte
    return line[:-1]


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def _start_launcher_watch(conn: socket.socket) -> None:
    """Start ``_die_with_launcher`` in a thread that blocks every signal.

    The signals the launcher forwards (Ctrl-C, SIGWINCH, ...) are sent to the
    process, and the kernel may hand a process's signal to any thread that does
    not block it (Linux does when the main thread already has one pending).
    Python runs handlers in the main thread only, and a signal taken by this
    thread does not interrupt the main thread's ``sleep`` or ``select``: Ctrl-C
    in ``tachi play`` would wait out the pause, and attach would see a resize
    only at its next keystroke or output. A thread starts with its creator's
    mask, hence blocked around the start."""
    every = signal.valid_signals()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, every)
    try:
        threading.Thread(target=_die_with_launcher, args=(conn,), daemon=True).start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _die_with_launcher(conn: socket.socket) -> None:
    """Block on the launcher's end; if it goes before the command is done, go too."""
    with contextlib.suppress(OSError):
        while conn.recv(64):
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tachi.cli.warm_server SOCKET")
    sys.exit(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
