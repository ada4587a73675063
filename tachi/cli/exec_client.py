"""The client side of ``tachi exec``: one command's streams over the protocol."""

from __future__ import annotations

import base64
import contextlib
import os
import select
import signal
import socket
import sys
import termios
import tty
from typing import Any

from tachi import protocol
from tachi.client.endpoint import Endpoint
from tachi.client.wire import WireConnection
from tachi.errors import DaemonUnavailable, error_from_json


def run_exec(
    endpoint: Endpoint,
    token: str | None,
    command: list[str],
    *,
    use_pty: bool,
    cwd: str | None,
    env: dict[str, str],
    timeout: float | None,
    record: bool = False,
) -> int:
    """Run ``command`` under the daemon and relay its streams; returns its exit status.

    Raises the daemon's error (``PermissionDenied`` for a principal without the
    ``exec`` right, ``InvalidRequest`` for a command that cannot start).
    """
    wire = WireConnection(endpoint, token=token, autostart=not endpoint.remote)
    in_fd, out_fd, err_fd = sys.stdin.fileno(), sys.stdout.fileno(), sys.stderr.fileno()
    args: dict[str, Any] = {
        "command": command, "cwd": cwd, "env": env, "pty": use_pty, "record": record,
    }  # fmt: skip
    if timeout is not None:
        args["timeout"] = timeout
    if use_pty and os.isatty(in_fd):
        rows, cols = os.get_terminal_size(in_fd)[::-1]
        args["size"] = {"rows": rows, "cols": cols}
    wire.call("exec.start", args)
    interrupts: list[int] = []
    # select() is restarted after a signal handler runs: wake it through a pipe.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)

    def forward(signum: int, _frame: Any) -> None:
        interrupts.append(signum)
        with contextlib.suppress(BlockingIOError):
            os.write(wake_w, b"!")

    raw = use_pty and os.isatty(in_fd)
    saved = termios.tcgetattr(in_fd) if raw else None
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    stdin_open = True
    # Requests not yet taken by the daemon. Sent without blocking, and stdin is
    # read only once they are gone: a daemon that stops reading us (its request
    # limit, a command slower than our input) must still be read from, or
    # both sides would wait for each other.
    outgoing = bytearray()
    try:
        if raw:
            tty.setraw(in_fd)
        while True:
            for signum in interrupts:
                outgoing += _request(wire, "exec.signal", {"signal": signum})
            interrupts.clear()
            reading = stdin_open and not outgoing
            watch = [wire.fileno(), wake_r] + ([in_fd] if reading else [])
            buffered = bool(wire.pending) or wire.has_buffered()
            try:
                ready, writable, _ = select.select(
                    watch, [wire.fileno()] if outgoing else [], [], 0 if buffered else None
                )
            except InterruptedError:
                continue
            if wake_r in ready:
                os.read(wake_r, 64)
            if writable:
                del outgoing[: _send_some(wire, outgoing)]
            if reading and in_fd in ready:
                data = os.read(in_fd, 65536)
                payload = base64.b64encode(data).decode()
                outgoing += _request(wire, "exec.stdin", {"data": payload, "eof": not data})
                stdin_open = bool(data)
            if buffered or wire.fileno() in ready:
                while (frame := wire.next_frame(timeout=0)) is not None:
                    status = _apply(frame, out_fd, err_fd)
                    if status is not None:
                        return status
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSAFLUSH, saved)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        wire.close()
        os.close(wake_r)
        os.close(wake_w)


def _request(wire: WireConnection, op: str, args: dict[str, Any]) -> bytes:
    """A request frame, to be sent with :func:`_send_some`."""
    return protocol.encode_control({"id": next(wire._ids), "op": op, "args": args})


def _send_some(wire: WireConnection, data: bytearray) -> int:
    """Send what the socket takes now, without blocking; returns how much."""
    try:
        return wire.sock.send(data, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError as exc:
        raise DaemonUnavailable(f"lost the connection to the daemon: {exc}") from None


def _apply(frame: protocol.Frame, out_fd: int, err_fd: int) -> int | None:
    """Write an output event to its stream; the exit status once the command ended."""
    if frame.channel != protocol.CONTROL:
        return None
    message = protocol.decode_control(frame.payload)
    event = message.get("event")
    if event == "exec.output":
        fd = err_fd if message.get("stream") == "stderr" else out_fd
        data = base64.b64decode(message["data"])
        while data:
            with contextlib.suppress(InterruptedError):
                data = data[os.write(fd, data) :]
        return None
    if event == "exec.exit":
        return int(message["exitCode"])
    if "ok" in message and not message["ok"]:
        error = error_from_json(message.get("error") or {})
        if error.code != "not_found":  # stdin after the command ended: nothing to say
            os.write(err_fd, f"tachi: {error}\n".encode())
    return None
