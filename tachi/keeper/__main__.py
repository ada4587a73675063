"""``python -m tachi.keeper SOCKET``: run the session keeper (see :mod:`tachi.keeper`).

The process prints nothing and returns once the keeper listens (it forks into
the background and starts a session of its own), so whoever starts it knows
it is ready when this command exits 0.

The keeper is single-threaded: one ``selectors`` loop over its listening
socket, its daemon connections and the self-pipe that SIGCHLD writes to.
Every request is answered before the next is read.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import resource
import select
import selectors
import signal
import socket
import struct
import sys
import termios
import time
from typing import Any

from tachi.keeper import PROTOCOL, peer_pid, peer_uid, recv, send

log = logging.getLogger("tachi.keeper")

PR_SET_CHILD_SUBREAPER = 36
#: With nothing to keep and no daemon connected, the keeper goes after this long
#: (a daemon that just started it connects well within it).
IDLE_EXIT_SECONDS = 5.0
#: The largest output journal a daemon may ask for, per window.
MAX_JOURNAL = 64 << 20
#: A daemon that does not take a reply within this long is disconnected: the
#: keeper must never hang on one connection.
SEND_TIMEOUT = 5.0
#: What a session process gets back to default before exec (as tachi.core.pty does).
_DEFAULT_SIGNALS = (
    signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM,
    signal.SIGHUP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD,
)  # fmt: skip


class Entry:
    """One kept process: its PTY master and, once it ended, its exit status."""

    __slots__ = ("journal", "key", "master", "meta", "pid", "status")

    def __init__(self, pid: int, master: int, key: str, meta: dict[str, Any]) -> None:
        self.pid = pid
        self.master = master
        self.key = key
        self.meta = meta
        #: ``os.waitstatus_to_exitcode`` of the process (negative: a signal); None while it runs.
        self.status: int | None = None
        #: A memfd the daemon journals the window's output in (it maps it; a
        #: daemon killed mid-write leaves what it wrote there for the next one).
        self.journal: int | None = None


def code_digest() -> str:
    """SHA-256 of the keeper's source files as they are on disk now: the keeper
    compares the digest it started with to this one to tell that its code was
    replaced (``tachi daemon upgrade``)."""
    digest = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("__init__.py", "__main__.py"):
        with contextlib.suppress(OSError), open(os.path.join(here, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


#: The code this process runs (read once, at start, before anyone could replace it).
CODE = code_digest()


class Keeper:
    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.entries: dict[int, Entry] = {}
        self.conns: set[socket.socket] = set()
        #: The connection of the daemon that adopted the sessions (said hello): one at
        #: a time, or two daemons would read and write the same PTYs.
        self.daemon: socket.socket | None = None
        self.path = ""
        self.ident = 0
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, "accept")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "child")
        self._idle_since = time.monotonic()

    # -- the loop ------------------------------------------------------------
    def run(self, path: str, ident: int) -> None:
        self.path, self.ident = path, ident
        while True:
            if not self.conns and not _still_ours(path, ident):
                # Its socket was removed or replaced: no daemon can ever reach what
                # it keeps, so keeping it would only leak processes.
                log.warning("%s is gone: ending the %d processes kept", path, len(self.entries))
                self._close_all()
                return
            if self.conns or self.entries:
                self._idle_since = time.monotonic()
            elif time.monotonic() - self._idle_since >= IDLE_EXIT_SECONDS:
                return
            for key, _ in self.sel.select(timeout=1.0):
                if key.data == "accept":
                    self._accept()
                elif key.data == "child":
                    with contextlib.suppress(BlockingIOError):
                        while self._wake_r.recv(512):
                            pass
                    self._reap()
                else:
                    self._serve(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        # The socket is 0600 in a private directory; the kernel's word on who
        # connected is checked all the same: only the keeper's own user gets in.
        if peer_uid(conn) != os.getuid():
            log.warning("refused a connection from uid %d", peer_uid(conn))
            conn.close()
            return
        conn.settimeout(SEND_TIMEOUT)
        self.conns.add(conn)
        self.sel.register(conn, selectors.EVENT_READ, "conn")
        log.info("daemon pid %d connected", peer_pid(conn))

    def _drop(self, conn: socket.socket) -> None:
        self.sel.unregister(conn)
        self.conns.discard(conn)
        if conn is self.daemon:
            self.daemon = None
        conn.close()

    def _gone(self, conn: socket.socket) -> bool:
        """Whether the peer of ``conn`` hung up (its end-of-file is waiting unread)."""
        try:
            # Not recv alone: on a socket with a timeout Python waits out the
            # timeout on EAGAIN, and reports a live peer that sent nothing as gone.
            if not select.select([conn], [], [], 0)[0]:
                return False
            return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _serve(self, conn: socket.socket) -> None:
        try:
            message, fds = recv(conn)
        except (OSError, ValueError) as exc:
            log.warning("dropping a connection: %s", exc)
            self._drop(conn)
            return
        for fd in fds:  # no request carries descriptors
            os.close(fd)
        if message is None:
            self._drop(conn)
            return
        op = message.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        try:
            if handler is None:
                send(conn, {"ok": False, "error": f"unknown operation {op!r}"})
            else:
                handler(conn, message)
        except OSError as exc:  # the daemon went away or stopped reading
            log.warning("dropping a connection during %s: %s", op, exc)
            self._drop(conn)

    # -- operations ----------------------------------------------------------
    def op_hello(self, conn: socket.socket, message: dict[str, Any]) -> None:
        """Every kept process, one message each with its master (and a pidfd
        while it is not reaped), then ``{"end": true}``."""
        holder = self.daemon
        if holder is not None and holder is not conn and holder in self.conns:
            if not self._gone(holder):
                # A second daemon (two started at once, or one started by hand
                # beside a running one) gets nothing: the PTYs stay with the first.
                send(conn, {"ok": False, "error": f"daemon pid {peer_pid(holder)} holds them"})
                return
            self._drop(holder)
        self.daemon = conn
        entries = list(self.entries.values())
        send(conn, {"ok": True, "protocol": PROTOCOL, "pid": os.getpid(), "count": len(entries)})
        # Only a daemon that asks gets journals: an older one would take one for a pidfd.
        journals = bool(message.get("journals"))
        for e in entries:
            fds = [e.master]
            pidfd = None
            if e.status is None:
                # Not reaped yet (only this loop reaps), so the pid is still this process.
                pidfd = os.pidfd_open(e.pid)
                fds.append(pidfd)
            about: dict[str, Any] = {"key": e.key, "pid": e.pid, "status": e.status, "meta": e.meta}
            if journals and e.journal is not None:
                fds.append(e.journal)  # always last
                about["journal"] = True
            try:
                send(conn, about, fds)
            finally:
                if pidfd is not None:
                    os.close(pidfd)
        send(conn, {"end": True})

    def op_spawn(self, conn: socket.socket, message: dict[str, Any]) -> None:
        """Start ``argv`` on a new PTY; reply with its pid, the master and a pidfd."""
        try:
            pid, master = _spawn(message)
        except OSError as exc:
            send(conn, {"ok": False, "errno": exc.errno or 0, "error": exc.strerror or str(exc)})
            return
        except (KeyError, TypeError, ValueError) as exc:
            send(conn, {"ok": False, "errno": errno.EINVAL, "error": f"bad spawn request: {exc}"})
            return
        meta = message.get("meta") if isinstance(message.get("meta"), dict) else {}
        entry = Entry(pid, master, str(message.get("key", "")), meta)
        self.entries[pid] = entry
        entry.journal = _journal(entry.key, message.get("journal"))
        pidfd = os.pidfd_open(pid)
        fds = [master, pidfd] if entry.journal is None else [master, pidfd, entry.journal]
        try:
            send(conn, {"ok": True, "pid": pid, "journal": entry.journal is not None}, fds)
        finally:
            os.close(pidfd)

    def op_reap(self, conn: socket.socket, message: dict[str, Any]) -> None:
        """The exit status of a process that ended (the asker saw its pidfd fire);
        the keeper then forgets it and closes its master."""
        entry = self.entries.get(message.get("pid"))  # type: ignore[arg-type]
        if entry is None:
            send(conn, {"ok": True, "status": None})
            return
        if entry.status is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(entry.pid, os.WNOHANG)
                if pid:
                    entry.status = os.waitstatus_to_exitcode(status)
        if entry.status is None:
            send(conn, {"ok": True, "status": None, "running": True})
            return
        self._forget(entry)
        send(conn, {"ok": True, "status": entry.status})

    def op_close(self, conn: socket.socket, message: dict[str, Any]) -> None:
        """The daemon stops for good (``tachi daemon stop``): kill what is left
        of its sessions and let the keeper go."""
        self._close_all()
        send(conn, {"ok": True})

    def _close_all(self) -> None:
        for entry in list(self.entries.values()):
            if entry.status is None:
                for kill in (os.killpg, os.kill):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        kill(entry.pid, signal.SIGKILL)
            self._forget(entry)

    def op_ping(self, conn: socket.socket, message: dict[str, Any]) -> None:
        """Who the keeper is: pid, how many it keeps, the code it runs (``code``)
        and the code now on disk (``disk``): they differ after an upgrade."""
        send(
            conn,
            {
                "ok": True,
                "pid": os.getpid(),
                "kept": len(self.entries),
                "code": CODE,
                "disk": code_digest(),
                "protocol": PROTOCOL,
            },
        )

    def op_reexec(self, conn: socket.socket, message: dict[str, Any]) -> None:
        """Replace the keeper's code with what is on disk now, keeping every PTY,
        every child (the pid does not change: still their parent) and every
        connection: exec with the descriptors inherited. The new code is checked
        first (``--check`` in a child: it imports and compiles); if that fails
        nothing changes. The reply comes from the new code."""
        check = subprocess_check()
        if check:
            send(conn, {"ok": False, "error": f"the new keeper code does not start: {check}"})
            return
        self._reap()
        state = {
            "path": self.path,
            "ident": self.ident,
            "listener": self.listener.fileno(),
            "conns": [c.fileno() for c in self.conns],
            "daemon": self.daemon.fileno() if self.daemon is not None else None,
            "reply": conn.fileno(),
            "old": CODE,
            "entries": [
                {
                    "pid": e.pid,
                    "master": e.master,
                    "key": e.key,
                    "meta": e.meta,
                    "status": e.status,
                    "journal": e.journal,
                }
                for e in self.entries.values()
            ],
        }
        blob = os.memfd_create("tachi-keeper-state", 0)  # close-on-exec off: the new code reads it
        os.write(blob, json.dumps(state).encode())
        keep = [
            blob,
            self.listener.fileno(),
            *state["conns"],
            *(e.master for e in self.entries.values()),
            *(e.journal for e in self.entries.values() if e.journal is not None),
        ]
        for fd in keep:
            os.set_inheritable(fd, True)
        signal.set_wakeup_fd(-1)
        log.info(
            "keeper pid %d: re-executing with %d sessions kept", os.getpid(), len(self.entries)
        )
        try:
            os.execv(
                sys.executable, [sys.executable, "-P", "-m", "tachi.keeper", "--resume", str(blob)]
            )
        except OSError as exc:  # still the old code, with everything: carry on
            signal.set_wakeup_fd(self._wake_w.fileno())
            os.close(blob)
            send(conn, {"ok": False, "error": f"exec failed: {exc}"})

    @classmethod
    def resumed(cls, blob: int) -> tuple[Keeper, str, int]:
        """The keeper a re-exec left in ``blob`` (see :meth:`op_reexec`), with
        (path, ident); answers the connection that asked for it."""
        os.lseek(blob, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(blob, 1 << 20):
            data += chunk
        os.close(blob)
        state = json.loads(data)
        listener = socket.socket(fileno=int(state["listener"]))
        keeper = cls(listener)
        for fd in state["conns"]:
            conn = socket.socket(fileno=int(fd))
            conn.settimeout(SEND_TIMEOUT)
            keeper.conns.add(conn)
            keeper.sel.register(conn, selectors.EVENT_READ, "conn")
            if fd == state.get("daemon"):
                keeper.daemon = conn
        for e in state["entries"]:
            os.set_inheritable(int(e["master"]), False)
            entry = Entry(int(e["pid"]), int(e["master"]), str(e["key"]), dict(e["meta"]))
            entry.status = e["status"]
            if isinstance(e.get("journal"), int):  # absent when the old code had none
                os.set_inheritable(e["journal"], False)
                entry.journal = e["journal"]
            keeper.entries[entry.pid] = entry
        keeper._reap()  # exits that came during the exec
        for conn in keeper.conns:
            os.set_inheritable(conn.fileno(), False)
            if conn.fileno() == state.get("reply"):
                with contextlib.suppress(OSError):
                    send(
                        conn,
                        {"ok": True, "pid": os.getpid(), "kept": len(keeper.entries),
                         "code": CODE, "was": state.get("old")},
                    )  # fmt: skip
        os.set_inheritable(listener.fileno(), False)
        return keeper, str(state["path"]), int(state["ident"])

    # -- children -------------------------------------------------------------
    def _reap(self) -> None:
        """Collect every child that ended (and, as subreaper, every orphaned
        descendant): a session's status is kept for the daemon."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            entry = self.entries.get(pid)
            if entry is not None:
                entry.status = os.waitstatus_to_exitcode(status)
                log.debug("%s (pid %d) exited: %d", entry.key, pid, entry.status)

    def _forget(self, entry: Entry) -> None:
        self.entries.pop(entry.pid, None)
        for fd in (entry.master, entry.journal):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _journal(key: str, size: object) -> int | None:
    """A memfd of ``size`` bytes for a window's output journal, if the daemon
    asked for one (and within reason); ``None`` if not, or if none could be had:
    the window then works as before, only its last output may miss a restore."""
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_JOURNAL:
        return None
    try:
        fd = os.memfd_create(f"tachi-journal {key}"[:200], os.MFD_CLOEXEC)
    except OSError as exc:
        log.warning("no output journal for %s: %s", key, exc)
        return None
    try:
        os.ftruncate(fd, size)  # sparse: only pages written take memory
    except OSError as exc:
        os.close(fd)
        log.warning("no output journal for %s: %s", key, exc)
        return None
    return fd


def subprocess_check() -> str:
    """Run ``python -m tachi.keeper --check`` with the code on disk now; ''
    if it starts, else what it said."""
    import subprocess

    try:
        result = subprocess.run(
            [sys.executable, "-P", "-m", "tachi.keeper", "--check"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit {result.returncode}"
    return ""


def _still_ours(path: str, ident: int) -> bool:
    try:
        return os.stat(path).st_ino == ident
    except OSError:
        return False


def _spawn(req: dict[str, Any]) -> tuple[int, int]:
    """Fork and exec ``req["argv"]`` as the leader of a new session on a new PTY.
    Returns (pid, master). Raises ``OSError`` as the exec (or chdir) failed in the child."""
    argv = [str(a) for a in req["argv"]]
    if not argv:
        raise ValueError("empty argv")
    env = {str(k): str(v) for k, v in dict(req["env"]).items()}
    cwd = req.get("cwd")
    rows, cols = int(req["rows"]), int(req["cols"])
    xpixel, ypixel = int(req.get("xpixel", 0)), int(req.get("ypixel", 0))
    nofile = req.get("nofile")
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, xpixel, ypixel))
        err_r, err_w = os.pipe()  # both close-on-exec: EOF on a successful exec
        pid = os.fork()
        if pid == 0:
            _child(argv, env, cwd, slave, err_w, nofile)
        os.close(err_w)
        with os.fdopen(err_r, "rb") as pipe:
            failure = pipe.read()
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    if failure:
        os.waitpid(pid, 0)
        os.close(master)
        code, _, text = failure.decode(errors="replace").partition(":")
        raise OSError(int(code or 0), text)
    return pid, master


def _child(
    argv: list[str], env: dict[str, str], cwd: Any, slave: int, err_w: int, nofile: Any
) -> None:
    """In the forked child: never returns."""
    try:
        signal.set_wakeup_fd(-1)
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        os.closerange(3, err_w)
        os.closerange(err_w + 1, 1 << 20)
        for sig in _DEFAULT_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (int(nofile[0]), int(nofile[1])))
        if cwd:
            os.chdir(cwd)
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:
        code = exc.errno if isinstance(exc, OSError) and exc.errno else 0
        text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or "?"
        with contextlib.suppress(OSError):
            os.write(err_w, f"{code}:{text}".encode()[:1024])
    finally:
        os._exit(127)


def _listen(path: str) -> socket.socket:
    """Bind ``path`` (0600), replacing a stale socket; exit 1 if a keeper answers there."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        print(f"tachi-keeper: a keeper already listens on {path}", file=sys.stderr)
        sys.exit(1)
    finally:
        probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    listener.listen(16)
    return listener


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        return 0  # this code imports and compiles: a re-exec into it can go ahead
    logging.basicConfig(
        level=os.environ.get("TACHI_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if len(argv) == 2 and argv[0] == "--resume":
        # Re-executed by op_reexec: same pid, same children, same descriptors.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        keeper, path, ident = Keeper.resumed(int(argv[1]))
        log.info(
            "keeper pid %d resumed on new code with %d sessions", os.getpid(), len(keeper.entries)
        )
        return _serve(keeper, path, ident)
    if len(argv) != 1:
        print("usage: python -m tachi.keeper SOCKET", file=sys.stderr)
        return 2
    path = argv[0]
    listener = _listen(path)
    if os.fork():
        os._exit(0)  # the starter sees 0: the socket already accepts connections
    os.setsid()
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("could not become a subreaper: %s", os.strerror(ctypes.get_errno()))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ident = os.stat(path).st_ino
    log.info("keeper pid %d on %s", os.getpid(), path)
    return _serve(Keeper(listener), path, ident)


def _serve(keeper: Keeper, path: str, ident: int) -> int:
    try:
        keeper.run(path, ident)
    finally:
        if _still_ours(path, ident):
            os.unlink(path)
    log.info("keeper pid %d: nothing left to keep", os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
