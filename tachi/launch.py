"""The ``tachi`` command's entry point: hand the command to the warm CLI, or run it here.

Importing click and the command modules costs about 60 ms, several times what
a command then does. So the daemon keeps a *warm CLI* beside its socket
(``tachi.cli.warm_server``): a process that has imported all of that once and
forks a child for each command. This module is what ``tachi`` runs first. It
imports only built-in C modules, connects to the warm CLI, checks that it
belongs to the same user, and passes it argv, the environment, the umask, the
streams' encodings, and descriptors 0, 1, 2 and the working directory (as
``SCM_RIGHTS``). The child runs the command on those descriptors, exactly as
this process would, and sends back its exit status; this process forwards
signals to it meanwhile and exits with that status.

Whenever the warm CLI is missing, refuses, is of another install, or anything
looks wrong, the command runs here as before (``tachi.cli.main``), so the warm
CLI can make a command faster but never make it fail. ``TACHI_WARM=0`` always
runs here; ``TACHI_WARM=require`` fails (exit 255) instead of running here,
which tests use to prove a path was taken.

The exchange, one request per connection (all lines end in ``\\n``)::

    launcher -> server   REQUEST_MAGIC, then "<length>\\n" and the length's
                         bytes of NUL-separated fields (see ``encode_request``);
                         the descriptors ride on the first sendmsg
    server -> launcher   "F" (run it yourself) or "P <pid>" (the child's pid)
    launcher -> server   "G" (go): only now does the child run the command
    server -> launcher   "X <status>" or "S <signal>" (it died of that signal)
"""

from __future__ import annotations

# Built-in C modules only (no enum, re or typing behind them): `socket` and
# `signal` would cost this process more than the command then does.
import _signal
import _socket
import os
import resource
import sys

#: Protocol version, first on every request: a launcher and a warm CLI of
#: different versions never talk (the server answers "F").
REQUEST_MAGIC = b"TACHI-WARM 1\n"
#: How long to wait for the warm CLI's first answer before running here.
FIRST_ANSWER_SECONDS = 10.0
#: Signals passed on to the child: what a terminal or a supervisor sends.
FORWARDED = (
    _signal.SIGINT,
    _signal.SIGTERM,
    _signal.SIGHUP,
    _signal.SIGQUIT,
    _signal.SIGWINCH,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
)
#: Exit status when the warm CLI was required but not used, or lost the child.
LOST = 255


def default_socket() -> str:
    """The daemon socket without ``--socket``: ``$TACHI_SOCKET``, else
    ``$TACHI_HOME/tachi.sock``, else ``$XDG_RUNTIME_DIR/tachi/default.sock``, else
    ``/tmp/tachi-$UID/default.sock``. (``tachi.paths.socket_path`` is this as a ``Path``.)

    ``TACHI_HOME`` alone isolates a daemon: two jobs that set only it used to
    share one daemon, which wrote into the first job's home. A home whose socket
    path would pass the kernel's limit (108 bytes) gets
    ``/tmp/tachi-$UID/home-HASH.sock``, named after the home."""
    if env := os.environ.get("TACHI_SOCKET"):
        return env
    if home := os.environ.get("TACHI_HOME"):
        home = os.path.abspath(home)
        path = os.path.join(home, "tachi.sock")
        if len(os.fsencode(path)) < 100:
            return path
        return f"/tmp/tachi-{os.getuid()}/home-{_fnv1a(os.fsencode(home)):016x}.sock"
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(runtime, "tachi", "default.sock")
    return f"/tmp/tachi-{os.getuid()}/default.sock"


def _fnv1a(data: bytes) -> int:
    """A 64-bit FNV-1a hash (hashlib would cost this process its import)."""
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


#: The ``tachi`` group's options that take a value (see ``tachi.cli.main.cli``).
_VALUED_OPTIONS = {
    "--socket",
    "--host",
    "--fingerprint",
    "--ca-file",
    "--svid-cert",
    "--svid-key",
    "--trust-bundle",
    "--server-id",
}


def global_options(argv: list[str]) -> tuple[dict[str, str], str | None]:
    """Split ``argv`` (without the program name) as the ``tachi`` group parses
    it: the group's options before the command, with their values, and the
    command's name (``None`` if there is none)."""
    options: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        option, equals, value = argv[i].partition("=")
        if option in _VALUED_OPTIONS and not equals:
            value, i = (argv[i + 1] if i + 1 < len(argv) else ""), i + 1
        options[option] = value
        i += 1
    return options, argv[i] if i < len(argv) else None


def warm_socket(daemon_socket: str) -> str:
    """Where the warm CLI of the daemon at ``daemon_socket`` listens."""
    return daemon_socket + ".warm"


def install_id() -> str:
    """What tells one install from another: the environment (a venv's
    ``sys.prefix`` is the same whether its ``python`` or ``python3`` runs), the
    Python version and this package's directory. A launcher runs only on a warm
    CLI of its own install."""
    here = os.path.dirname(os.path.abspath(__file__))
    return f"{sys.prefix}\n{sys.version}\n{here}"


def encode_request(argv: list[str], umask: int) -> bytes:
    """The request's fields: install id, umask, open-file limit, nice value,
    CPU affinity, stream encodings, argc, argv, environment."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fields = [os.fsencode(install_id()), b"%d" % umask, b"%d" % nofile]
    fields.append(b"%d" % os.getpriority(os.PRIO_PROCESS, 0))
    fields.append(b",".join(b"%d" % cpu for cpu in sorted(os.sched_getaffinity(0))))
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        fields.append(f"{stream.encoding}:{stream.errors}".encode() if stream else b"")
    fields.append(b"%d" % len(argv))
    fields += [os.fsencode(arg) for arg in argv]
    fields += [key + b"=" + value for key, value in os.environb.items()]
    payload = b"\0".join(fields)
    return REQUEST_MAGIC + b"%d\n" % len(payload) + payload


class _Refused(Exception):
    """The warm CLI cannot take this command: run it here."""


class _Launcher:
    """One command handed to the warm CLI: connect, send, forward signals, wait."""

    def __init__(self, path: str) -> None:
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.pid = 0
        self.pending: list[int] = []
        self.fatal = 0
        self._buffer = b""
        self.sock.settimeout(FIRST_ANSWER_SECONDS)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise _Refused from None
        # The server must be ours: it receives our environment (tokens) and
        # descriptors. Its socket sits in a directory only we can enter, but
        # --socket may point anywhere.
        creds = self.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
        if int.from_bytes(creds[4:8], sys.byteorder) != os.getuid():
            self.close()
            raise _Refused

    def close(self) -> None:
        self.sock.close()

    def send_request(self, argv: list[str]) -> None:
        umask = os.umask(0o077)
        os.umask(umask)
        message = encode_request(argv, umask)
        # O_PATH: a directory we may enter but not list is still ours to pass.
        cwd = os.open(".", getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # C ints, packed by hand: the array module imports collections.
            fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2, cwd))
            ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)]
            sent = self.sock.sendmsg([message], ancillary)
            self.sock.sendall(message[sent:])
        finally:
            os.close(cwd)

    def line(self) -> bytes:
        """The next line from the server, or ``b""`` at its end."""
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(256)
            if not chunk:
                return b""
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def start(self) -> None:
        """Wait for the child's pid and let it go; raises ``_Refused`` if the
        server answers "F", goes away or does not answer in time."""
        try:
            answer = self.line()
        except OSError:  # including the timeout
            raise _Refused from None
        if not answer.startswith(b"P "):
            raise _Refused
        self.pid = int(answer[2:])
        self.sock.settimeout(None)
        self.sock.sendall(b"G\n")
        for signum in self.pending:
            self.forward(signum)
        self.pending.clear()

    def forward(self, signum: int) -> None:
        if not self.pid:
            self.pending.append(signum)
            return
        if signum in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT):
            # If the child dies of it, so does this process.
            self.fatal = signum
        try:  # noqa: SIM105 (contextlib would cost this module an import)
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def suspend(self, _signum: int, _frame: object) -> None:
        """Ctrl-Z: stop the child (it is in no job the shell controls), then
        this process; continue both when the shell says so."""
        if self.pid:
            os.kill(self.pid, _signal.SIGSTOP)
        _signal.signal(_signal.SIGTSTP, _signal.SIG_DFL)
        os.kill(os.getpid(), _signal.SIGTSTP)
        # Stopped here until SIGCONT.
        _signal.signal(_signal.SIGTSTP, self.suspend)
        if self.pid:
            os.kill(self.pid, _signal.SIGCONT)

    def wait(self) -> int:
        """The child's exit status (dying of a signal if it did)."""
        try:
            answer = self.line()
        except OSError:
            answer = b""
        if answer.startswith(b"X "):
            return int(answer[2:])
        signum = int(answer[2:]) if answer.startswith(b"S ") else self.fatal
        if signum:
            _signal.signal(signum, _signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        os.write(2, b"tachi: the command's process in the warm CLI ended without a status\n")
        return LOST


def _usable_here() -> bool:
    """Whether this process's situation can be handed over: all three standard
    descriptors open, and not a background job reading a terminal (which must
    get SIGTTIN here, not have a stranger read its keys)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            return False
    if os.isatty(0):
        try:
            if os.tcgetpgrp(0) != os.getpgrp():
                return False
        except OSError:
            return False
    return True


def run_warm(argv: list[str]) -> int | None:
    """Run ``argv`` (without the program name) in the warm CLI; its exit status,
    or ``None`` if it cannot be used (nothing has run then)."""
    options, command = global_options(argv)
    if os.environ.get("TACHI_WARM", "1") in ("0", "off", "no") or command == "daemon":
        # `daemon start|run` must start from this process, not inside the
        # daemon's own process tree.
        return None
    if not _usable_here():
        return None
    try:
        launcher = _Launcher(warm_socket(options.get("--socket") or default_socket()))
    except _Refused:
        return None
    handlers = {}
    try:
        for signum in FORWARDED:
            handlers[signum] = _signal.signal(signum, lambda s, _f: launcher.forward(s))
        handlers[_signal.SIGTSTP] = _signal.signal(_signal.SIGTSTP, launcher.suspend)
        try:
            launcher.send_request([sys.argv[0], *argv])
            launcher.start()
        except (_Refused, OSError):
            pass
        else:
            return launcher.wait()
    finally:
        launcher.close()
        for signum, handler in handlers.items():
            _signal.signal(signum, handler)
    # Signals that came while we waited in vain are this process's own again.
    for signum in launcher.pending:
        os.kill(os.getpid(), signum)
    return None


def main() -> None:
    """The ``tachi`` command (``bin/tachi``)."""
    status = run_warm(sys.argv[1:])
    if status is not None:
        sys.exit(status)
    if os.environ.get("TACHI_WARM") == "require":
        sys.stderr.write("tachi: TACHI_WARM=require, and the warm CLI did not take the command\n")
        sys.exit(LOST)
    from tachi.cli.main import main as run_here

    run_here()
