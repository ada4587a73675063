"""``tachi.Client``: the seed's SessionManager and SessionConn, blocking.

Example::

    import tachi
    from tachi.models import SessionRequest

    with tachi.Client() as client:
        session = client.create(SessionRequest(command=["bash"]))
        client.send(session.id, "echo hello\\n")
        client.wait(session.id, match="hello", timeout=5)
        print(client.capture(session.id))
        client.close(session.id)

Every method raises a ``tachi.errors.TachiError`` subclass on failure:
``NotFound``, ``PermissionDenied``, ``InvalidRequest``, ``TimedOut``,
``DaemonUnavailable``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tachi import protocol
from tachi.client.endpoint import resolve
from tachi.client.runs import MAX_OUTPUT, OutputCallback
from tachi.client.wire import WireConnection, encode_send_args
from tachi.errors import DaemonUnavailable, NotFound, TachiError, TimedOut, error_from_json
from tachi.models import (
    PTYConfig,
    Recording,
    Session,
    SessionFilter,
    SessionRequest,
    Window,
)

if TYPE_CHECKING:
    import signal as signals

    from tachi.client.results import ExecResult, ExpectResult, Grant, RunResult, Share


class Client:
    """A connection to a daemon: the local one (started on demand unless
    ``autostart=False``), or the remote one at ``url`` (``wss://host:7681``, or
    ``TACHI_HOST``) through an installed transport plugin. ``options`` are the
    connection options such plugins read (``fingerprint``, ``ca_file``,
    ``svid_cert``, ``svid_key``, ``trust_bundle``, ``server_id``)."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        autostart: bool = True,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.endpoint = resolve(socket, url, options)
        self.socket_path = self.endpoint.socket
        self.token = token if token is not None else os.environ.get("TACHI_TOKEN") or None
        self._autostart = autostart and not self.endpoint.remote
        self._wire = WireConnection(self.endpoint, token=self.token, autostart=self._autostart)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def disconnect(self) -> None:
        self._wire.close()

    def call(self, op: str, **args: Any) -> Any:
        """Send one control request; returns its result."""
        return self._wire.call(op, args)

    # -- SessionManager ---------------------------------------------------------------
    def create(self, req: SessionRequest | None = None) -> Session:
        return Session.from_json(
            self.call("session.create", request=(req or SessionRequest()).to_json())
        )

    def attach(
        self,
        session_id: str,
        *,
        read_only: bool = False,
        window: int | None = None,
        size: PTYConfig | None = None,
        resume: tuple[int, int] | None = None,
    ) -> SessionConn:
        """Attach on a new connection of its own and return the stream.

        ``resume=(window, seq)`` (from an earlier ``SessionConn.position``) asks for
        exactly the output produced since; if the daemon no longer holds it, or the
        active window changed, a screen snapshot is sent instead."""
        wire = WireConnection(self.endpoint, token=self.token, autostart=self._autostart)
        result = wire.call(
            "session.attach",
            {
                "session": session_id,
                "readOnly": read_only,
                "window": window,
                "size": size.to_json() if size else None,
                "resume": {"window": resume[0], "seq": resume[1]} if resume else None,
            },
        )
        return SessionConn(wire, result)

    def detach(self, session_id: str, *, client: int | None = None) -> int:
        """Detach every client of the session (or the one with id ``client``);
        returns how many."""
        return int(self.call("session.detach", session=session_id, client=client)["detached"])

    def events(
        self, session_id: str | None = None, *, output: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Yield session events (``tachi events --json``) as they happen, on a
        connection of their own, until the daemon goes away (then
        ``DaemonUnavailable``) or the iterator is closed."""
        wire = WireConnection(self.endpoint, token=self.token, autostart=self._autostart)
        try:
            wire.call("events.subscribe", {"session": session_id, "output": output})
            while True:
                frame = wire.next_frame()
                if frame is None or frame.channel != protocol.CONTROL:
                    continue
                message = json.loads(frame.payload)
                if message.get("event") == "session.event":
                    yield message
                elif message.get("event") == "events.dropped":
                    raise DaemonUnavailable(f"event stream dropped: {message.get('message')}")
        finally:
            wire.close()

    def run(
        self,
        session_id: str,
        command: str,
        *,
        window: int | None = None,
        timeout: float | None = None,
        max_output: int | None = MAX_OUTPUT,
        on_output: OutputCallback | None = None,
        detach: bool = False,
    ) -> RunResult:
        """Type ``command`` (any text: several lines, a heredoc) into the
        session's shell and wait for it: its output alone and exit code
        (``tachi run``). The output streams from the daemon: ``max_output``
        bytes at most (the first and last halves; ``None``: all), with a marked
        gap (``RunResult.omitted``); ``on_output(data, omitted)`` gets it as it
        comes instead, and ``output`` is then empty. Raises ``TimedOut`` after
        ``timeout`` seconds (the command keeps running: ``TimedOut.run`` is its
        id for ``run_wait``/``run_output``, ``TimedOut.output`` what came so
        far), ``WindowBusy`` when no shell came to the window's foreground in
        that time. With ``detach`` it returns once the command is typed
        (``state`` ``running``, ``run`` its id)."""
        from tachi.client.results import RunResult

        return RunResult.from_json(
            self._run(session_id, command, window, timeout, max_output, on_output, detach)
        )

    def _run(
        self,
        session_id: str,
        command: str,
        window: int | None,
        timeout: float | None,
        max_output: int | None,
        on_output: OutputCallback | None,
        detach: bool = False,
    ) -> dict[str, Any]:
        """``run``'s reply as the daemon sent it, the streamed output put in."""
        from tachi.client.runs import RunStream

        run = RunStream(on_output)
        args = run.args(session_id, command, window, timeout, max_output, detach)
        return self._streamed("session.run", args, run, timeout, repr(command))

    def _streamed(
        self, op: str, args: dict[str, Any], run: Any, timeout: float | None, what: str
    ) -> dict[str, Any]:
        """Send ``op`` and gather its ``run.*`` events until the reply."""
        import time

        from tachi.client.runs import REPLY_GRACE

        wire = self._wire
        request_id = wire.send_request(op, args)
        deadline = None if timeout is None else time.monotonic() + timeout + REPLY_GRACE
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise run.failed(
                    TimedOut(
                        f"{what}: no answer from the daemon within {timeout:g}s (+{REPLY_GRACE:g}s)"
                    )
                )
            frame = wire.recv_frame(left)
            if frame is None:
                continue
            if frame.channel == protocol.CONTROL:
                message = protocol.decode_control(frame.payload)
                if message.get("id") == request_id and "ok" in message:
                    wire.keep_buffered()
                    if not message["ok"]:
                        raise run.failed(error_from_json(message.get("error") or {}))
                    return run.result(message.get("result") or {})
                if run.event(message):
                    continue
            wire.pending.append(frame)

    def run_wait(
        self, run: str, *, timeout: float | None = None, session: str | None = None
    ) -> RunResult:
        """Wait for run ``run`` (a detached or timed-out one) to end; its result
        with the output the daemon kept of it (the first and last 128 KiB, the
        gap marked). Raises ``TimedOut`` (it keeps running), ``NotFound``."""
        from tachi.client.results import RunResult

        return RunResult.from_json(self.call("run.wait", run=run, timeout=timeout, session=session))

    def run_output(
        self,
        run: str,
        *,
        follow: bool = False,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        session: str | None = None,
    ) -> RunResult:
        """Run ``run``'s output so far (what the daemon kept); with ``follow``,
        and what it writes until it ends or ``timeout`` seconds pass (no error:
        ``state`` says whether it ended). ``on_output`` as for ``run``."""
        from tachi.client.results import RunResult
        from tachi.client.runs import RunStream

        stream = RunStream(on_output)
        args = {
            "run": run,
            "session": session,
            "follow": follow or None,
            "timeout": timeout,
            "stream": stream.tag,
        }
        return RunResult.from_json(self._streamed("run.output", args, stream, timeout, run))

    def run_list(self, session_id: str) -> list[RunResult]:
        """The runs the session keeps (``tachi run ls``), oldest first, without
        their output."""
        from tachi.client.results import RunResult

        return [RunResult.from_json(r) for r in self.call("run.list", session=session_id)]

    def exec(
        self,
        command: list[str],
        *,
        stdin: bytes = b"",
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run ``command`` on the daemon's host with no session (``tachi exec``):
        ``stdin`` is fed and closed. Raises ``PermissionDenied`` without the
        ``exec`` right."""
        import base64

        from tachi.client.results import ExecResult

        wire = WireConnection(self.endpoint, token=self.token, autostart=self._autostart)
        out = {"stdout": bytearray(), "stderr": bytearray()}
        try:
            args = {"command": command, "cwd": cwd, "env": env or {}, "timeout": timeout}
            wire.call("exec.start", args)
            with contextlib.suppress(NotFound):  # it may have ended already
                wire.call("exec.stdin", {"data": base64.b64encode(stdin).decode(), "eof": True})
            while True:
                frame = wire.next_frame()
                if frame is None or frame.channel != protocol.CONTROL:
                    continue
                message = json.loads(frame.payload)
                if message.get("event") == "exec.output":
                    out[message["stream"]] += base64.b64decode(message["data"])
                elif message.get("event") == "exec.exit":
                    return ExecResult(
                        message["exitCode"], bytes(out["stdout"]), bytes(out["stderr"])
                    )
        finally:
            wire.close()

    def clients(self, session_id: str) -> list[dict[str, Any]]:
        """The clients attached to the session (``tachi clients --json``)."""
        return list(self.call("session.clients", session=session_id))

    def rename(self, session_id: str, name: str) -> Session:
        """Rename a live session (``""`` removes the name)."""
        return Session.from_json(self.call("session.rename", session=session_id, name=name))

    def prune(self, older_than: int = 0) -> int:
        """Forget sessions closed at least ``older_than`` ns ago; returns how many."""
        return int(self.call("session.prune", olderThan=older_than)["removed"])

    def close(self, session_id: str) -> Session:
        return Session.from_json(self.call("session.close", session=session_id))

    def resize(self, session_id: str, pty: PTYConfig) -> Session:
        return Session.from_json(
            self.call("session.resize", session=session_id, size=pty.to_json())
        )

    def send_signal(
        self, session_id: str, sig: int | str | signals.Signals, *, window: int | None = None
    ) -> str:
        value = int(sig) if isinstance(sig, int) else sig
        return str(
            self.call("session.signal", session=session_id, signal=value, window=window)["signal"]
        )

    def list(self, flt: SessionFilter | None = None) -> list[Session]:
        flt = flt or SessionFilter()
        found = [Session.from_json(s) for s in self.call("session.list", filter=flt.to_json())]
        # Applied here too: a daemon older than a filter field ignores it.
        return [s for s in found if flt.matches(s)]

    def list_json(
        self, flt: SessionFilter | None = None, fields: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """``list`` as the daemon's JSON, each session holding only ``fields``
        (``"state"``, ``"pty.cols"``, ``"windows.id"`` …; ``id`` always): for
        long listings, which cost less to send and decode. ``None``: every field."""
        flt = flt or SessionFilter()
        args: dict[str, Any] = {"filter": flt.to_json()}
        if fields is not None:
            args["fields"] = list(fields)
        return [s for s in self.call("session.list", **args) if flt.matches_json(s)]

    def get(self, session_id: str) -> Session:
        return Session.from_json(self.call("session.get", session=session_id))

    # -- scripting ------------------------------------------------------------------
    def send(self, session_id: str, data: str | bytes, *, window: int | None = None) -> int:
        return int(
            self._wire.call("session.send", encode_send_args(session_id, data, window))["bytes"]
        )

    def capture(
        self,
        session_id: str,
        *,
        window: int | None = None,
        ansi: bool = False,
        history: int | None = None,
    ) -> str:
        """The screen as text (or escape sequences with ``ansi``), preceded by the
        last ``history`` lines of scrollback (``-1``: all of it)."""
        result = self.call(
            "session.capture", session=session_id, window=window, ansi=ansi, history=history
        )
        return "".join(line + "\n" for line in result.get("history", [])) + str(result["text"])

    def wait(
        self,
        session_id: str,
        *,
        match: str | list[str] | None = None,
        exit: bool = False,
        timeout: float | None = None,
        window: int | None = None,
        new: bool = False,
        since: int | None = None,
    ) -> dict[str, Any]:
        """Block until ``match`` (a regex, or a list of them) appears or the
        session exits (``exit``). By default a pattern is looked for on the
        screen and in new output; with ``new`` only in output after the call,
        with ``since`` only in output after that position (from an earlier
        result's ``position``). Raises ``TimedOut`` after ``timeout`` seconds."""
        several = isinstance(match, list)
        return self.call(
            "session.wait",
            session=session_id,
            match=None if several else match,
            matches=match if several else None,
            exit=exit,
            timeout=timeout,
            window=window,
            new=new or None,
            since=since,
        )

    def read_output(
        self,
        session_id: str,
        *,
        since: int | None = None,
        window: int | None = None,
        max_bytes: int | None = None,
    ) -> dict[str, Any]:
        """The window's output after position ``since`` as text (escape
        sequences removed): ``{output, start, position, skipped}``; pass
        ``position`` as the next ``since``. Without ``since``, the newest
        ``max_bytes`` (default and at most 512 KiB) of what the window keeps
        (its last 256 KiB at least)."""
        return dict(
            self.call(
                "window.output",
                session=session_id,
                since=since,
                window=window,
                maxBytes=max_bytes,
            )
        )

    def expect(
        self,
        session_id: str,
        patterns: list[str],
        *,
        timeout: float | None = None,
        window: int | None = None,
        since: int | None = None,
    ) -> ExpectResult:
        """Wait until one of ``patterns`` (regexes, RE2 syntax) appears in the
        window's output after the call (or after position ``since``), as
        pexpect's ``expect``: the earliest match wins. ``outcome`` is
        ``match`` (``index``, ``match``, ``before``), ``eof`` (the window's
        program ended) or ``timeout``; no exception for those two."""
        from tachi.client.results import ExpectResult

        return ExpectResult.from_json(
            self.call(
                "session.wait",
                session=session_id,
                matches=list(patterns),
                timeout=timeout,
                window=window,
                since=since,
                new=since is None or None,
                expect=True,
            )
        )

    # -- SessionMultiplexer ------------------------------------------------------------
    def new_window(
        self, session_id: str, command: list[str] | None = None, *, name: str | None = None
    ) -> Window:
        return Window.from_json(
            self.call("window.new", session=session_id, command=command or [], name=name)
        )

    def switch_window(self, session_id: str, window_id: int) -> Window:
        return Window.from_json(self.call("window.select", session=session_id, window=window_id))

    def list_windows(self, session_id: str) -> list[Window]:
        return [Window.from_json(w) for w in self.call("window.list", session=session_id)]

    def close_window(self, session_id: str, window_id: int) -> None:
        self.call("window.close", session=session_id, window=window_id)

    def rename_window(self, session_id: str, window_id: int, name: str) -> Window:
        return Window.from_json(
            self.call("window.rename", session=session_id, window=window_id, name=name)
        )

    # -- SessionRecorder ----------------------------------------------------------------
    def start_recording(self, session_id: str) -> Recording:
        return Recording.from_json(self.call("record.start", session=session_id))

    def stop_recording(self, session_id: str) -> Recording:
        return Recording.from_json(self.call("record.stop", session=session_id))

    def playback(self, recording_id: str) -> Recording:
        return Recording.from_json(self.call("record.get", recording=recording_id))

    def list_recordings(self, session_id: str | None = None) -> list[Recording]:
        return [Recording.from_json(r) for r in self.call("record.list", session=session_id)]

    def read_recording(self, recording_id: str) -> bytes:
        """The whole asciicast file (``tachi record export``), read through the daemon."""
        from tachi.client.shared import recording_bytes

        return recording_bytes(
            lambda offset: self.call("record.read", recording=recording_id, offset=offset)
        )

    def remove_recording(self, recording_id: str) -> None:
        self.call("record.rm", recording=recording_id)

    # -- sharing ------------------------------------------------------------------------
    def share(
        self,
        session_id: str,
        role: str,
        *,
        user: str | None = None,
        ttl: str | None = None,
        allow_ips: Sequence[str] = (),
    ) -> Share:
        """Grant ``role`` (observer or collaborator); the token is only in the result."""
        from tachi.client.results import Share

        return Share.from_json(
            self.call(
                "share.create", session=session_id, role=role, user=user, ttl=ttl,
                allowIps=list(allow_ips),
            )
        )  # fmt: skip

    def grants(self, session_id: str, *, include_inactive: bool = False) -> list[Grant]:
        from tachi.client.results import Grant

        return [
            Grant.from_json(g)
            for g in self.call("share.list", session=session_id, all=include_inactive)
        ]

    def revoke(self, session_id: str, grant_id: str) -> None:
        self.call("share.revoke", session=session_id, grant=grant_id)

    def rotate_token(
        self, session_id: str, grant_id: str | None = None, *, grace: str | None = None
    ) -> list[Share]:
        """New tokens for one grant (or all of the session's); holders get them in-band."""
        from tachi.client.results import Share

        rotated = self.call("token.rotate", session=session_id, grant=grant_id, grace=grace)
        return [Share.from_json(r) for r in rotated]

    def handoff(self, session_id: str, to: str, *, keep: str = "observer") -> Session:
        return Session.from_json(self.call("session.handoff", session=session_id, to=to, keep=keep))

    # -- audit (this host's log, read from the state directory) ----------------------------
    def audit(
        self, *, session: str | None = None, since: str | None = None
    ) -> list[dict[str, Any]]:
        """Audit records, as ``tachi audit --json`` (local daemons only)."""
        from tachi.client.shared import audit_records

        return audit_records(session, since)

    def verify_audit(self) -> Any:
        """``tachi audit verify``: a ``tachi.audit.VerifyResult`` (``ok``, ``problem`` …)."""
        from tachi.audit import verify
        from tachi.paths import state_dir

        return verify(state_dir() / "audit")

    def verify_recordings(self, recording: str | None = None) -> Any:
        """``tachi record verify``: a list of ``tachi.audit.RecordingCheck`` (``id``,
        ``path``, ``status``, ``problem``, ``failed``), each recording checked
        against the SHA-256 its ``record.stop`` audit record holds. Check
        :meth:`verify_audit` first: a log that does not verify vouches for nothing."""
        from tachi.audit import verify_recordings
        from tachi.paths import state_dir

        return verify_recordings(state_dir() / "audit", recording)

    # -- daemon --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self.call("daemon.status")


class SessionConn:
    """An attached session (seed: SessionConn): ``read``/``write``/``resize``/``close``/``wait``.

    ``read`` returns terminal output bytes; a screen snapshot (on attach, window
    switch, or after the client fell behind) arrives as output too, so what you
    read is what a terminal would display.
    """

    def __init__(self, wire: WireConnection, attach_result: dict[str, Any]) -> None:
        self._wire = wire
        self.session = Session.from_json(attach_result)
        self.read_only: bool = bool(attach_result.get("readOnly"))
        self.role: str = str(attach_result.get("role"))
        self.events: list[dict[str, Any]] = []
        self.exit_code: int | None = None
        self.closed_reason: str | None = None
        self.detached: dict[str, Any] | None = None
        self.window: int | None = None
        self.seq: int = 0
        self._expect: Any = None

    def fileno(self) -> int:
        return self._wire.fileno()

    def read(self, size: int = -1, timeout: float | None = None) -> bytes:
        """Next chunk of output; ``b""`` once detached or the session closed.

        ``timeout`` seconds without output returns ``b""`` too but leaves the
        connection usable (check ``self.done``); events arriving meanwhile do
        not extend it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            frame = self._wire.next_frame(left)
            if frame is None:
                return b""
            data = self.handle_frame(frame)
            if data:
                return data
        return b""

    def read_until(self, pattern: bytes | str, timeout: float = 10.0) -> bytes:
        """Read until ``pattern`` has appeared in the output; returns everything
        read, up to the end of the chunk that completed it.

        The bound is the whole wait, not each read: raises ``TimeoutError``
        after ``timeout`` seconds (its message ends with the last output read),
        and ``EOFError`` if the attachment ends first. Matching is on the bytes
        a terminal would be sent, escape sequences included."""
        from tachi.client.shared import PatternWait

        wait = PatternWait(pattern, timeout)
        deadline = time.monotonic() + timeout
        while not wait.found:
            if self.done:
                raise wait.ended()
            left = deadline - time.monotonic()
            if left <= 0:
                raise wait.timed_out()
            wait.add(self.read(timeout=left))
        return bytes(wait.seen)

    def expect(self, patterns: list[str] | str, timeout: float = 10.0) -> ExpectResult:
        """Read until one of ``patterns`` (regexes, RE2 syntax, multi-line)
        matches the output, escape sequences removed; as pexpect's ``expect``:
        the earliest match wins, and what follows it is kept for the next
        ``expect``. ``outcome`` is ``match`` (``index``, ``match``, ``before``),
        ``eof`` (the attachment ended) or ``timeout`` (after ``timeout``
        seconds in all), with the text read in ``before``; never raises for
        those."""
        from tachi.client.results import ExpectResult
        from tachi.client.runs import ExpectBuffer, compile_patterns

        regexes = compile_patterns(patterns)
        if self._expect is None:
            self._expect = ExpectBuffer()
        buffer = self._expect
        deadline = time.monotonic() + timeout
        while True:
            hit = buffer.search(regexes)
            if hit is not None:
                return ExpectResult("match", hit[0], hit[1], hit[2], self.seq)
            left = deadline - time.monotonic()
            if self.done or left <= 0:
                outcome = "eof" if self.done else "timeout"
                return ExpectResult(outcome, None, None, buffer.take(), self.seq)
            buffer.add(self.read(timeout=left))

    def handle_frame(self, frame: protocol.Frame) -> bytes:
        """Apply one frame; returns bytes to show (possibly empty)."""
        if frame.channel == protocol.STDOUT:
            window, seq, data = protocol.decode_output(frame.payload)
            self.window, self.seq = window, seq + len(data)
            return data
        message = json.loads(frame.payload)
        event = message.get("event")
        if event == "screen":
            self.window, self.seq = message["window"], message["seq"]
            return str(message["data"]).encode()
        if event == "closed":
            self.exit_code = message.get("exitCode")
            self.closed_reason = message.get("reason")
        elif event == "detached":
            self.detached = message
        elif event == "error" and "id" not in message:
            raise error_from_json(message.get("error") or {})
        self.events.append(message)
        return b""

    @property
    def position(self) -> tuple[int, int] | None:
        """(window, seq) of the output read so far: pass it as ``resume=`` to reattach."""
        return None if self.window is None else (self.window, self.seq)

    @property
    def done(self) -> bool:
        return self.detached is not None

    def write(self, data: bytes) -> int:
        self._wire.send_stdin(data)
        return len(data)

    def resize(self, rows: int, cols: int, xpixel: int = 0, ypixel: int = 0) -> None:
        self._wire.send_request(
            "client.resize", {"rows": rows, "cols": cols, "xPixel": xpixel, "yPixel": ypixel}
        )

    def request(self, op: str, **args: Any) -> int:
        """Send a control request on this connection without waiting (reply arrives as an event)."""
        return self._wire.send_request(op, args)

    def close(self) -> None:
        """Detach and drop the connection."""
        with contextlib.suppress(DaemonUnavailable, TachiError):
            self._wire.send_request("client.detach", {})
        self._wire.close()

    def wait(self, timeout: float | None = None) -> int | None:
        """Read (and discard) output until the session ends; returns its exit code."""
        while not self.done:
            frame = self._wire.next_frame(timeout)
            if frame is None:
                break
            self.handle_frame(frame)
        return self.exit_code

    def __enter__(self) -> SessionConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Client", "SessionConn"]
