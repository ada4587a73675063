"""A blocking protocol connection: requests, replies, events and output frames."""

from __future__ import annotations

import itertools
import os
import socket
from collections import deque
from pathlib import Path
from typing import Any

from tachi import protocol
from tachi.client.endpoint import Endpoint
from tachi.errors import DaemonUnavailable, ProtocolError, TachiError, error_from_json

#: One receive takes up to this much (many output frames during a flood).
RECV_SIZE = 256 * 1024


class WireConnection:
    """One connection to the daemon, greeted and ready for requests.

    Frames that arrive while waiting for a reply (output, events) are kept in
    ``pending`` for whoever reads the stream next.
    """

    def __init__(
        self,
        target: Path | Endpoint,
        *,
        token: str | None = None,
        autostart: bool = True,
    ) -> None:
        self.endpoint = target if isinstance(target, Endpoint) else Endpoint(socket=Path(target))
        self.sock = self.endpoint.open(autostart=autostart)
        self._decoder = protocol.FrameDecoder(max_payload=protocol.MAX_PAYLOAD * 4)
        self._frames: deque[protocol.Frame] = deque()
        self.pending: deque[protocol.Frame] = deque()
        self._recv_buf: bytearray | None = None
        self._ids = itertools.count(1)
        args: dict[str, Any] = {"version": protocol.VERSION}
        if token:
            args["token"] = token
        self.hello = self.call("hello", args)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # -- sending --------------------------------------------------------------
    def send_frame(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise DaemonUnavailable(
                f"lost the connection to the daemon: {exc.strerror or exc}"
            ) from None

    def send_with_descriptor(self, data: bytes, fd: int) -> None:
        """Send ``data`` with a copy of descriptor ``fd`` attached (``SCM_RIGHTS``:
        a Unix socket only); the daemon receives it with the first byte."""
        import array  # here: only a hand-over needs it

        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
        try:
            sent = self.sock.sendmsg([data], rights)
            self.sock.sendall(data[sent:])
        except OSError as exc:
            raise DaemonUnavailable(
                f"lost the connection to the daemon: {exc.strerror or exc}"
            ) from None

    def send_request(self, op: str, args: dict[str, Any], *, descriptor: int | None = None) -> int:
        request_id = next(self._ids)
        data = protocol.encode_control({"id": request_id, "op": op, "args": args})
        if descriptor is None:
            self.send_frame(data)
        else:
            self.send_with_descriptor(data, descriptor)
        return request_id

    def send_stdin(self, data: bytes) -> None:
        for start in range(0, len(data), protocol.MAX_PAYLOAD):
            self.send_frame(
                protocol.encode(protocol.STDIN, data[start : start + protocol.MAX_PAYLOAD])
            )

    # -- receiving ----------------------------------------------------------------
    def recv_frame(self, timeout: float | None = None) -> protocol.Frame | None:
        """The next frame, or ``None`` on timeout. Raises ``DaemonUnavailable`` at EOF."""
        while not self._frames:
            self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(RECV_SIZE)
            except (TimeoutError, BlockingIOError):
                return None
            except OSError as exc:
                raise DaemonUnavailable(f"lost the connection to the daemon: {exc}") from None
            finally:
                self.sock.settimeout(None)
            if not data:
                raise DaemonUnavailable("the daemon closed the connection")
            self._frames.extend(self._decoder.feed(data))
        return self._frames.popleft()

    def recv_ready(self) -> list[protocol.Frame]:
        """Every frame decoded so far plus what the socket holds now, without
        blocking (``[]`` if nothing has arrived). Raises ``DaemonUnavailable`` at EOF."""
        # Into one buffer kept for the connection: a fresh 256 KiB bytes object
        # per receive costs the allocator an mmap, mremap and munmap.
        if self._recv_buf is None:
            self._recv_buf = bytearray(RECV_SIZE)
        view = memoryview(self._recv_buf)
        while True:
            try:
                n = self.sock.recv_into(view, RECV_SIZE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                raise DaemonUnavailable(f"lost the connection to the daemon: {exc}") from None
            if not n:
                if self._frames:
                    break  # hand out what came before the end; EOF shows on the next call
                raise DaemonUnavailable("the daemon closed the connection")
            self._frames.extend(self._decoder.feed(view[:n]))
            if n < RECV_SIZE:
                break
        frames = list(self._frames)
        self._frames.clear()
        return frames

    def keep_buffered(self) -> None:
        """Move frames already decoded into ``pending``: a caller that waited for
        one frame and then ``select()``s on the socket would not see the rest."""
        self.pending.extend(self._frames)
        self._frames.clear()

    def has_buffered(self) -> bool:
        """Whether frames were already received and decoded but not yet taken."""
        return bool(self._frames)

    def next_frame(self, timeout: float | None = None) -> protocol.Frame | None:
        """Pending frames first, then the socket."""
        if self.pending:
            return self.pending.popleft()
        return self.recv_frame(timeout)

    def call(
        self, op: str, args: dict[str, Any] | None = None, *, descriptor: int | None = None
    ) -> Any:
        """Send a request (with a copy of ``descriptor`` attached, if given) and
        block for its reply; raises the daemon's error."""
        request_id = self.send_request(op, args or {}, descriptor=descriptor)
        while True:
            frame = self.recv_frame()
            assert frame is not None
            if frame.channel == protocol.CONTROL:
                message = protocol.decode_control(frame.payload)
                if message.get("id") == request_id and "ok" in message:
                    # Frames that came in the same read as the reply (an attach's
                    # first screen) must not wait in the decoder for the next read.
                    self.keep_buffered()
                    if message["ok"]:
                        return message.get("result")
                    raise error_from_json(message.get("error") or {})
                if message.get("event") == "error" and op == "hello":
                    raise error_from_json(message.get("error") or {})
            self.pending.append(frame)


def encode_send_args(session: str, data: bytes | str, window: int | None) -> dict[str, Any]:
    args: dict[str, Any] = {"session": session, "window": window}
    if isinstance(data, str):
        args["text"] = data
    else:
        import base64  # here: `tachi ls` and attach never need it

        args["data"] = base64.b64encode(data).decode()
    return args


def socket_from_env(explicit: str | os.PathLike[str] | None = None) -> Path:
    from tachi.paths import socket_path

    return socket_path(explicit)


__all__ = ["ProtocolError", "TachiError", "WireConnection", "encode_send_args", "socket_from_env"]
