"""A real daemon with the WebSocket listener, and helpers to reach it."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tachi import protocol
from tachi.testing import DaemonProcess


@dataclass
class Remote:
    """A daemon listening on WebSocket, a daemon token, and the remote CLI's flags."""

    daemon: DaemonProcess
    url: str
    fingerprint: str | None
    token: str

    def flags(self) -> list[str]:
        out = ["--host", self.url]
        if self.fingerprint:
            out += ["--fingerprint", self.fingerprint]
        return out

    def run(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        """``tachi --host URL ARGS`` as a real process, with the daemon token."""
        argv = self.daemon.tachi_argv(*self.flags(), *args)
        proc = subprocess.Popen(
            argv,
            env={**self.daemon.env, "TACHI_TOKEN": self.token if token is None else token},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # A hang is a finding: where every process of the command is blocked
            # (the launcher, and what runs the command), then what the daemon said.
            where = _blocked_in([proc.pid, *_descendants(self.daemon)])
            proc.kill()
            out, err = proc.communicate()
            log = self.daemon.log.read_text(errors="replace").splitlines()[-40:]
            raise AssertionError(
                f"tachi {' '.join(args)} hung for 30 s; stderr: {err!r}\n{where}\n"
                "daemon log (tail):\n" + "\n".join(log)
            ) from None
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def raw(self, **kwargs: Any) -> ClientConnection:
        """A bare WebSocket connection to ``/ws`` (for protocol-level tests)."""
        ctx = None
        if self.url.startswith("wss"):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return connect(self.url + "/ws", ssl=ctx, proxy=None, open_timeout=30, **kwargs)


def hello(ws: ClientConnection, token: str | None = None) -> dict[str, Any]:
    """Send the protocol's hello and return the first control message back."""
    args: dict[str, Any] = {"version": protocol.VERSION}
    if token:
        args["token"] = token
    ws.send(protocol.encode_control({"id": 1, "op": "hello", "args": args}))
    return control(ws)


def control(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    """The next control message (output frames are skipped)."""
    while True:
        message = ws.recv(timeout=timeout)
        assert isinstance(message, bytes)
        frame = protocol.FrameDecoder(max_payload=1 << 24).feed(message)[0]
        if frame.channel == protocol.CONTROL:
            return protocol.decode_control(frame.payload)


def listener(daemon: DaemonProcess) -> dict[str, Any]:
    status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
    return next(x for x in status["listeners"] if x["transport"] == "websocket")


def start_remote(home: Any, table: str, security: str = "") -> Remote:
    config = f"[transports.websocket]\n{table}\n"
    if security:
        config += f"[security]\n{security}\n"
    daemon = DaemonProcess(home, extra_env={"TACHI_LOAD_PLUGINS": "websocket"}, config=config)
    daemon.start()
    info = listener(daemon)
    made = json.loads(daemon.run("token", "create", "--json", check=True).stdout)
    return Remote(daemon, info["url"], info.get("fingerprint"), made["token"])


@pytest.fixture
def remote(tachi_home: Any) -> Iterator[Remote]:
    """A daemon with a TLS (self-signed) WebSocket listener on 127.0.0.1."""
    r = start_remote(tachi_home, 'listen = "127.0.0.1:0"\ntls = "self-signed"')
    try:
        yield r
    finally:
        r.daemon.stop()


class Proxy:
    """A TCP forwarder on loopback whose connections the test can cut, as a
    network drop would (the daemon and the client each see their side close)."""

    def __init__(self, port: int = 0) -> None:
        import socket
        import threading

        #: Where connections go; may be set after the proxy is made.
        self.upstream = port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._pairs: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:  # the daemon is gone: so is this connection
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: Any, b: Any) -> None:
        import contextlib

        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.close()

    def cut(self) -> int:
        """Close every connection made so far; returns how many."""
        import contextlib
        import socket

        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
        return len(pairs)

    def close(self) -> None:
        self._server.close()
        self.cut()


def _descendants(daemon: DaemonProcess) -> list[int]:
    """The daemon's processes below it (the warm CLI and the commands it forked)."""
    assert daemon.proc is not None
    found, todo = [], [daemon.proc.pid]
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
    return found


def _blocked_in(pids: list[int]) -> str:
    """Each thread's command line, state and kernel wait channel."""
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
            for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
                stat = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = (task / "wchan").read_text()
                syscall = (task / "syscall").read_text().split()[0]
                lines.append(f"  pid {pid} tid {task.name} {stat} {wchan} syscall {syscall}: {cmd}")
    return "processes:\n" + "\n".join(lines)
