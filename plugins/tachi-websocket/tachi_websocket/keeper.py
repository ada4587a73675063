"""The connection keeper: WebSocket connections opened ahead, for short remote commands.

On by default for one-shot CLI commands (``tachi --host wss://… ls``, ``send``,
``exec``…): they ask a per-user keeper process for their connection instead
of paying for TCP, TLS and the WebSocket upgrade themselves, as OpenSSH's
ControlMaster spares ``ssh`` its handshake. ``TACHI_WS_KEEPER=0`` turns it
off; ``TACHI_WS_KEEPER=1`` extends it to ``Client(url=…)`` (off for those by
default: a long-lived client pays its handshake once, and through the keeper
every one of its messages would take one more hop). ``tachi attach`` always
connects itself, for the same reason.

The keeper holds, per (URL, certificate options), one *spare* connection:
connected, TLS verified with those options, upgraded, and nothing more. It
has said no hello and holds no token, so it is nobody's yet. A command takes
the spare (the keeper then relays frames between it and the command's Unix
socket, one thread per connection, until either end closes), says hello on it
with its own token, and the daemon authenticates it as ever; once that command
is done the keeper opens the next spare. A connection is never handed out
twice, so no command ever acts on another's authentication, and a revoked
token is refused at the command's own hello.

The socket is ``$XDG_RUNTIME_DIR/tachi/ws-keeper.sock`` (else
``/tmp/tachi-$UID/ws-keeper.sock``), 0600 in a directory only the user may
enter; the keeper serves only peers of its own uid (``SO_PEERCRED``) and the
client uses only a keeper of its own uid. A spare unused for
``IDLE_SECONDS`` is closed; a keeper with nothing left exits.

The exchange, one request per connection: the client sends one JSON line
``{"url": …, "options": {"fingerprint"|"ca_file"|"compression": …}}``; the
keeper answers ``OK`` and then relays frames, or ``ERR <code> <message>``
(``unavailable`` or ``denied``) and closes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
import struct
import sys
import threading
import time
from typing import Any

from tachi.errors import DaemonUnavailable, PermissionDenied

#: The client options a spare depends on (the TLS checks and the extension offered).
KEY_OPTIONS = ("fingerprint", "ca_file", "compression")
#: Seconds a spare may wait for a command before it is closed.
IDLE_SECONDS = 60.0
#: How long a client waits for the keeper's answer before going direct.
ANSWER_SECONDS = 10.0
_CREDS = struct.Struct("3i")


def socket_path() -> str:
    """Where the keeper listens (see the module's docstring)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = os.path.join(runtime, "tachi") if runtime else f"/tmp/tachi-{os.getuid()}"
    return os.path.join(base, "ws-keeper.sock")


def _private_dir(path: str) -> bool:
    """Make the socket's directory (0700) if needed; whether it is ours alone."""
    directory = os.path.dirname(path)
    with contextlib.suppress(FileExistsError):
        os.makedirs(directory, mode=0o700)
    st = os.stat(directory)
    return st.st_uid == os.getuid() and not st.st_mode & 0o077


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    return _CREDS.unpack(creds)[1]


#: ``TACHI_WS_KEEPER`` values that turn the keeper off, and that extend it to every client.
OFF = ("0", "off", "no", "false")
ALL = ("1", "on", "yes", "true", "all")


def mode() -> str:
    """``"commands"`` (the default: one-shot CLI commands), ``"all"`` (API
    clients too) or ``"off"``, from ``TACHI_WS_KEEPER``."""
    value = os.environ.get("TACHI_WS_KEEPER", "").strip().lower()
    if value in OFF:
        return "off"
    return "all" if value in ALL else "commands"


def enabled(options: dict[str, Any]) -> bool:
    """Whether a client with ``options`` goes through the keeper: not an
    interactive one (``tachi attach`` keeps its own connection), a one-shot
    command (``options["inline"]``) unless ``TACHI_WS_KEEPER`` says otherwise,
    and no identity options (those need the identity plugins' own TLS context)."""
    chosen = mode()
    if chosen == "off" or options.get("interactive"):
        return False
    if chosen == "commands" and not options.get("inline"):
        return False
    from tachi.client.endpoint import IDENTITY_OPTIONS

    return not any(options.get(k) for k in IDENTITY_OPTIONS)


def _key_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in KEY_OPTIONS if options.get(k)}


# -- the client side -------------------------------------------------------------------
def connect(url: str, options: dict[str, Any]) -> socket.socket | None:
    """A connection through the keeper (started if it is not running), or
    ``None`` when the keeper cannot be used (the caller connects directly).
    Raises ``DaemonUnavailable`` / ``PermissionDenied`` as a direct connection would."""
    path = socket_path()
    try:
        if not _private_dir(path):
            return None
        sock = _dial(path)
        if sock is None:
            _start(path)
            deadline = time.monotonic() + 2
            while sock is None and time.monotonic() < deadline:
                time.sleep(0.01)
                sock = _dial(path)
            if sock is None:
                return None
        request = {"url": url, "options": _key_options(options)}
        sock.settimeout(ANSWER_SECONDS + float(options.get("timeout", 30)))
        sock.sendall(json.dumps(request).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            byte = sock.recv(1)
            if not byte:
                sock.close()
                return None
            answer += byte
    except OSError:
        return None
    line = answer.decode(errors="replace").rstrip("\n")
    if line == "OK":
        sock.settimeout(None)
        return sock
    sock.close()
    _, code, message = [*line.split(" ", 2), "", ""][:3]
    if code == "denied":
        raise PermissionDenied(message)
    if code == "unavailable":
        raise DaemonUnavailable(message)
    return None


def _dial(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        if _peer_uid(sock) != os.getuid():  # not our keeper: never hand it a session
            sock.close()
            return None
    except OSError:
        sock.close()
        return None
    return sock


def _start(path: str) -> None:
    """Start a keeper on ``path``, detached (it outlives this command)."""
    import subprocess

    # Not the starting command's token: the keeper holds none (each command
    # says hello with its own), and it outlives the command.
    env = {k: v for k, v in os.environ.items() if k != "TACHI_TOKEN"}
    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-m", "tachi_websocket.keeper", path],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            cwd="/",  # it outlives the command: it keeps no directory of the user's busy
        )


# -- the keeper ------------------------------------------------------------------------
class Keeper:
    """Spare connections by key, and the relays of the ones handed out."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.spares: dict[str, tuple[Any, float]] = {}  # key -> (_Spare, last use)
        self.relays = 0
        self.lock = threading.Lock()
        # A relay thread that adds a spare wakes the loop through this pipe, so
        # the spare is watched (its daemon's end seen) from then on.
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def serve(self) -> int:
        old = os.umask(0o177)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                listener.bind(self.path)
            except OSError as exc:
                live = _dial(self.path) if exc.errno == errno.EADDRINUSE else None
                if live is not None or exc.errno != errno.EADDRINUSE:
                    if live is not None:
                        live.close()
                    return 0  # another keeper got there first
                # A keeper that died (SIGKILL, a reboot of /tmp's owner): its
                # socket is ours to replace, in a directory only we may enter.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                listener.bind(self.path)
        except OSError:
            listener.close()
            return 0
        finally:
            os.umask(old)
        listener.listen(64)
        bound = os.stat(self.path).st_ino
        try:
            while True:
                with self.lock:
                    spares = [spare.sock for spare, _ in self.spares.values()]
                ready = select.select([listener, self.wake_r, *spares], [], [], 1.0)[0]
                for sock in ready:
                    if sock == self.wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self.wake_r, 512)
                    elif sock is listener:
                        self._accept(listener)
                    else:
                        self._service(sock)
                self._expire()
                with self.lock:
                    idle = not self.spares and not self.relays
                if idle:
                    return 0
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == bound:
                    os.unlink(self.path)

    def _accept(self, listener: socket.socket) -> None:
        """Take a command's connection and serve it on a thread of its own
        (:meth:`_serve`): the loop goes back to accepting at once."""
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        try:
            if _peer_uid(conn) != os.getuid():
                conn.close()
                return
        except OSError:
            conn.close()
            return
        with self.lock:
            self.relays += 1
        try:
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        except RuntimeError:  # no thread to be had: the command goes direct
            conn.close()
            with self.lock:
                self.relays -= 1

    def _serve(self, conn: socket.socket) -> None:
        """One command: its request, its connection (the spare, or one opened
        now), then the relay, and the next spare after it. On its own thread,
        so a host slow to answer (a TLS handshake that waits for its timeout)
        holds up only the commands for that host, not the keeper."""
        try:
            try:
                conn.settimeout(5)
                line = b""
                while not line.endswith(b"\n") and len(line) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        raise OSError("no request")
                    line += chunk
                request = json.loads(line)
                url = str(request["url"])
                options = {
                    k: v for k, v in dict(request.get("options") or {}).items() if k in KEY_OPTIONS
                }
            except (OSError, ValueError, KeyError, TypeError):
                conn.close()
                return
            key = json.dumps([url, sorted(options.items())])
            with self.lock:
                spare = self.spares.pop(key, (None, 0.0))[0]
            if spare is not None and not spare.alive():
                # Its daemon went (restarted, killed) since the loop last looked.
                spare.close()
                spare = None
            try:
                if spare is None:
                    spare = _Spare.open(url, options)
                conn.settimeout(None)
                conn.sendall(b"OK\n")
            except PermissionDenied as exc:
                _refuse(conn, "denied", str(exc))
                return
            except DaemonUnavailable as exc:
                _refuse(conn, "unavailable", str(exc))
                return
            except OSError:
                if spare is not None:
                    spare.close()
                conn.close()
                return
            self._relay(spare, conn, key, url, options)
        finally:
            with self.lock:
                self.relays -= 1

    def _relay(
        self, spare: Any, conn: socket.socket, key: str, url: str, options: dict[str, Any]
    ) -> None:
        from tachi_websocket.client import _Bridge

        _Bridge(spare.sock, spare.ws, conn).run()
        # The next command's connection, opened once this one is done: not
        # while it runs, when its TLS handshake (here and in the daemon) would
        # take the CPU from the command it is meant to speed up. Commands
        # mostly come one after another; the next one's interpreter start
        # leaves time for the handshake.
        with self.lock:
            wanted = key not in self.spares
        if wanted:
            with contextlib.suppress(PermissionDenied, DaemonUnavailable):
                fresh = _Spare.open(url, options)
                with self.lock:
                    if key in self.spares:
                        fresh.close()
                    else:
                        self.spares[key] = (fresh, time.monotonic())
                with contextlib.suppress(BlockingIOError):
                    os.write(self.wake_w, b"x")

    def _service(self, sock: socket.socket) -> None:
        """A spare has data: answer its pings; drop it if the daemon closed it.
        Taken out of ``spares`` while it is read: a command's thread that takes
        it meanwhile would use its TLS connection from two threads at once."""
        with self.lock:
            found = [(k, entry) for k, entry in self.spares.items() if entry[0].sock is sock]
            for key, _ in found:
                del self.spares[key]
        for key, (spare, used) in found:
            if spare.alive():
                with self.lock:
                    if key not in self.spares:
                        self.spares[key] = (spare, used)
                        continue
            spare.close()

    def _expire(self) -> None:
        now = time.monotonic()
        with self.lock:
            old = [k for k, (_, used) in self.spares.items() if now - used > IDLE_SECONDS]
            gone = [self.spares.pop(k)[0] for k in old]
        for spare in gone:
            spare.close()


class _Spare:
    """An open, verified, upgraded WebSocket connection that has said nothing yet."""

    def __init__(self, sock: socket.socket, ws: Any) -> None:
        self.sock = sock
        self.ws = ws

    @classmethod
    def open(cls, url: str, options: dict[str, Any]) -> _Spare:
        from tachi_websocket.client import connect_websocket

        sock, ws = connect_websocket(url, dict(options))
        return cls(sock, ws)

    def alive(self) -> bool:
        """Read what the daemon sent (pings, answered here); False once it is closed."""
        import ssl

        from websockets.protocol import State

        self.sock.setblocking(False)
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except OSError:
            return False
        finally:
            self.sock.setblocking(True)
        if not data:
            return False
        self.ws.receive_data(data)
        for _ in self.ws.events_received():
            pass  # a spare expects nothing but pings: the protocol answers those
        with contextlib.suppress(OSError):
            for out in self.ws.data_to_send():
                self.sock.sendall(out)
        return self.ws.state is State.OPEN

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _refuse(conn: socket.socket, code: str, message: str) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(f"ERR {code} {' '.join(message.split())}\n".encode())
    conn.close()


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tachi_websocket.keeper SOCKET")
    sys.exit(Keeper(sys.argv[1]).serve())


if __name__ == "__main__":
    main()
