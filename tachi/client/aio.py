"""``tachi.AsyncClient``: the asyncio twin of :class:`tachi.Client`.

Example::

    async with await tachi.AsyncClient.connect() as client:
        session = await client.create(SessionRequest(command=["bash"]))
        conn = await client.attach(session.id)
        await conn.write(b"echo hi\\n")
        print(await conn.read())

Same errors as the blocking client. Requests may run concurrently on one
client: replies are matched to requests by id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from tachi import protocol
from tachi.client.autostart import start_daemon
from tachi.client.endpoint import Endpoint, resolve
from tachi.client.results import ExecResult, ExpectResult, Grant, RunResult, Share
from tachi.client.runs import MAX_OUTPUT, OutputCallback
from tachi.client.shared import PatternWait, audit_records
from tachi.errors import DaemonUnavailable, NotFound, TimedOut, error_from_json
from tachi.models import PTYConfig, Recording, Session, SessionFilter, SessionRequest, Window


class _AsyncWire:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self.stream: asyncio.Queue[protocol.Frame | None] = asyncio.Queue()
        #: ``run`` streams by tag: their events go there, not to ``stream``.
        self.listeners: dict[Any, Callable[[dict[str, Any]], bool]] = {}
        self._pump = asyncio.get_running_loop().create_task(self._read_forever())

    @classmethod
    async def open(cls, endpoint: Endpoint, token: str | None, autostart: bool) -> _AsyncWire:
        if endpoint.remote:
            # The transport plugin connects (and verifies TLS) in a thread; what it
            # hands back is a connected stream socket carrying frames: one end of
            # a socketpair, or a TCP connection (any family will do).
            sock = await asyncio.to_thread(endpoint.open, autostart=False)
            reader, writer = await asyncio.open_connection(sock=sock)
        else:
            path = endpoint.socket
            try:
                reader, writer = await asyncio.open_unix_connection(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                if not autostart:
                    raise DaemonUnavailable(f"no tachi daemon at {path}") from None
                await asyncio.to_thread(start_daemon, path)
                reader, writer = await asyncio.open_unix_connection(str(path))
        wire = cls(reader, writer)
        args: dict[str, Any] = {"version": protocol.VERSION}
        if token:
            args["token"] = token
        await wire.call("hello", args)
        return wire

    async def _read_forever(self) -> None:
        frames = protocol.StreamFrames(self._reader, protocol.MAX_PAYLOAD * 4)
        try:
            while (frame := await frames.next()) is not None:
                if frame.channel == protocol.CONTROL:
                    message = protocol.decode_control(frame.payload)
                    fut = self._replies.pop(message.get("id"), None) if "ok" in message else None
                    if fut is not None:
                        if not fut.done():
                            if message["ok"]:
                                fut.set_result(message.get("result"))
                            else:
                                fut.set_exception(error_from_json(message.get("error") or {}))
                        continue
                    listener = self.listeners.get(message.get("stream"))
                    if listener is not None and listener(message):
                        continue
                    if message.get("event") == "error":
                        error = error_from_json(message.get("error") or {})
                        for pending in self._replies.values():
                            pending.set_exception(error)
                        self._replies.clear()
                await self.stream.put(frame)
        except (ConnectionError, protocol.ProtocolError):
            pass
        finally:
            for fut in self._replies.values():
                if not fut.done():
                    fut.set_exception(DaemonUnavailable("the daemon closed the connection"))
            await self.stream.put(None)

    def send(self, channel: int, payload: bytes) -> None:
        self._writer.write(protocol.encode(channel, payload))

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        request_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = fut
        self._writer.write(protocol.encode_control({"id": request_id, "op": op, "args": args}))
        await self._writer.drain()
        return await fut

    async def close(self) -> None:
        self._writer.close()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self._pump
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


class AsyncClient:
    """Create with ``await AsyncClient.connect(...)``; use as an async context manager."""

    def __init__(
        self, wire: _AsyncWire, endpoint: Endpoint, token: str | None, autostart: bool
    ) -> None:
        self._wire = wire
        self.endpoint = endpoint
        self._token = token
        self._autostart = autostart

    @classmethod
    async def connect(
        cls,
        socket: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        autostart: bool = True,
        options: dict[str, Any] | None = None,
    ) -> AsyncClient:
        """Connect like ``tachi.Client``: the local daemon, or ``url`` (or ``TACHI_HOST``)."""
        endpoint = resolve(socket, url, options)
        token = token if token is not None else os.environ.get("TACHI_TOKEN") or None
        autostart = autostart and not endpoint.remote
        return cls(await _AsyncWire.open(endpoint, token, autostart), endpoint, token, autostart)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def disconnect(self) -> None:
        await self._wire.close()

    async def call(self, op: str, **args: Any) -> Any:
        return await self._wire.call(op, args)

    async def create(self, req: SessionRequest | None = None) -> Session:
        return Session.from_json(
            await self.call("session.create", request=(req or SessionRequest()).to_json())
        )

    async def get(self, session_id: str) -> Session:
        return Session.from_json(await self.call("session.get", session=session_id))

    async def list(self, flt: SessionFilter | None = None) -> list[Session]:
        flt = flt or SessionFilter()
        found = await self.call("session.list", filter=flt.to_json())
        # Applied here too: a daemon older than a filter field ignores it.
        return [s for s in (Session.from_json(x) for x in found) if flt.matches(s)]

    async def list_json(
        self, flt: SessionFilter | None = None, fields: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """``Client.list_json``."""
        flt = flt or SessionFilter()
        args: dict[str, Any] = {"filter": flt.to_json()}
        if fields is not None:
            args["fields"] = list(fields)
        return [s for s in await self.call("session.list", **args) if flt.matches_json(s)]

    async def close(self, session_id: str) -> Session:
        return Session.from_json(await self.call("session.close", session=session_id))

    async def detach(self, session_id: str, *, client: int | None = None) -> int:
        return int(
            (await self.call("session.detach", session=session_id, client=client))["detached"]
        )

    async def run(
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
        """Like ``Client.run``."""
        from tachi.client.runs import RunStream

        run = RunStream(on_output)
        args = run.args(session_id, command, window, timeout, max_output, detach)
        return RunResult.from_json(
            await self._streamed("session.run", args, run, timeout, repr(command))
        )

    async def _streamed(
        self, op: str, args: dict[str, Any], run: Any, timeout: float | None, what: str
    ) -> dict[str, Any]:
        """Call ``op``, its ``run.*`` events gathered by ``run``."""
        from tachi.client.runs import REPLY_GRACE

        self._wire.listeners[run.tag] = run.event
        try:
            limit = None if timeout is None else timeout + REPLY_GRACE
            try:
                reply = await asyncio.wait_for(self.call(op, **args), limit)
            except TimeoutError:
                raise run.failed(
                    TimedOut(
                        f"{what}: no answer from the daemon within {timeout:g}s (+{REPLY_GRACE:g}s)"
                    )
                ) from None
            except TimedOut as exc:
                raise run.failed(exc) from None
        finally:
            self._wire.listeners.pop(run.tag, None)
        return dict(run.result(reply))

    async def run_wait(
        self, run: str, *, timeout: float | None = None, session: str | None = None
    ) -> RunResult:
        """Like ``Client.run_wait``."""
        return RunResult.from_json(
            await self.call("run.wait", run=run, timeout=timeout, session=session)
        )

    async def run_output(
        self,
        run: str,
        *,
        follow: bool = False,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        session: str | None = None,
    ) -> RunResult:
        """Like ``Client.run_output``."""
        from tachi.client.runs import RunStream

        stream = RunStream(on_output)
        args = {
            "run": run,
            "session": session,
            "follow": follow or None,
            "timeout": timeout,
            "stream": stream.tag,
        }
        return RunResult.from_json(await self._streamed("run.output", args, stream, timeout, run))

    async def run_list(self, session_id: str) -> list[RunResult]:
        """Like ``Client.run_list``."""
        return [RunResult.from_json(r) for r in await self.call("run.list", session=session_id)]

    async def events(
        self, session_id: str | None = None, *, output: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """Like ``Client.events``, as an async iterator."""
        wire = await _AsyncWire.open(self.endpoint, self._token, self._autostart)
        try:
            await wire.call("events.subscribe", {"session": session_id, "output": output})
            while (frame := await wire.stream.get()) is not None:
                if frame.channel != protocol.CONTROL:
                    continue
                message = json.loads(frame.payload)
                if message.get("event") == "session.event":
                    yield message
                elif message.get("event") == "events.dropped":
                    raise DaemonUnavailable(f"event stream dropped: {message.get('message')}")
        finally:
            await wire.close()

    async def exec(
        self,
        command: list[str],
        *,
        stdin: bytes = b"",
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Like ``Client.exec``."""
        wire = await _AsyncWire.open(self.endpoint, self._token, self._autostart)
        out = {"stdout": bytearray(), "stderr": bytearray()}
        try:
            args = {"command": command, "cwd": cwd, "env": env or {}, "timeout": timeout}
            await wire.call("exec.start", args)
            with contextlib.suppress(NotFound):  # it may have ended already
                await wire.call(
                    "exec.stdin", {"data": base64.b64encode(stdin).decode(), "eof": True}
                )
            while (frame := await wire.stream.get()) is not None:
                message = json.loads(frame.payload) if frame.channel == protocol.CONTROL else {}
                if message.get("event") == "exec.output":
                    out[message["stream"]] += base64.b64decode(message["data"])
                elif message.get("event") == "exec.exit":
                    return ExecResult(
                        message["exitCode"], bytes(out["stdout"]), bytes(out["stderr"])
                    )
            raise DaemonUnavailable("the daemon went away while the command ran")
        finally:
            await wire.close()

    async def clients(self, session_id: str) -> list[dict[str, Any]]:
        return list(await self.call("session.clients", session=session_id))

    async def rename(self, session_id: str, name: str) -> Session:
        return Session.from_json(await self.call("session.rename", session=session_id, name=name))

    async def prune(self, older_than: int = 0) -> int:
        return int((await self.call("session.prune", olderThan=older_than))["removed"])

    async def resize(self, session_id: str, pty: PTYConfig) -> Session:
        return Session.from_json(
            await self.call("session.resize", session=session_id, size=pty.to_json())
        )

    async def send_signal(
        self, session_id: str, sig: int | str, *, window: int | None = None
    ) -> str:
        result = await self.call("session.signal", session=session_id, signal=sig, window=window)
        return str(result["signal"])

    async def send(self, session_id: str, data: str | bytes, *, window: int | None = None) -> int:
        args: dict[str, Any] = {"session": session_id, "window": window}
        if isinstance(data, str):
            args["text"] = data
        else:
            args["data"] = base64.b64encode(data).decode()
        return int((await self._wire.call("session.send", args))["bytes"])

    async def capture(
        self,
        session_id: str,
        *,
        window: int | None = None,
        ansi: bool = False,
        history: int | None = None,
    ) -> str:
        result = await self.call(
            "session.capture", session=session_id, window=window, ansi=ansi, history=history
        )
        return "".join(line + "\n" for line in result.get("history", [])) + str(result["text"])

    async def wait(
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
        return await self.call(
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

    async def read_output(
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
            await self.call(
                "window.output",
                session=session_id,
                since=since,
                window=window,
                maxBytes=max_bytes,
            )
        )

    async def expect(
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
        return ExpectResult.from_json(
            await self.call(
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

    async def new_window(
        self, session_id: str, command: list[str] | None = None, *, name: str | None = None
    ) -> Window:
        return Window.from_json(
            await self.call("window.new", session=session_id, command=command or [], name=name)
        )

    async def list_windows(self, session_id: str) -> list[Window]:
        return [Window.from_json(w) for w in await self.call("window.list", session=session_id)]

    async def switch_window(self, session_id: str, window_id: int) -> Window:
        return Window.from_json(
            await self.call("window.select", session=session_id, window=window_id)
        )

    async def close_window(self, session_id: str, window_id: int) -> None:
        await self.call("window.close", session=session_id, window=window_id)

    # -- SessionRecorder ----------------------------------------------------------------
    async def start_recording(self, session_id: str) -> Recording:
        return Recording.from_json(await self.call("record.start", session=session_id))

    async def stop_recording(self, session_id: str) -> Recording:
        return Recording.from_json(await self.call("record.stop", session=session_id))

    async def playback(self, recording_id: str) -> Recording:
        return Recording.from_json(await self.call("record.get", recording=recording_id))

    async def list_recordings(self, session_id: str | None = None) -> list[Recording]:
        found = await self.call("record.list", session=session_id)
        return [Recording.from_json(r) for r in found]

    async def read_recording(self, recording_id: str) -> bytes:
        chunks = []
        offset = 0
        while True:
            part = await self.call("record.read", recording=recording_id, offset=offset)
            data = base64.b64decode(part["data"])
            chunks.append(data)
            offset += len(data)
            if part["eof"]:
                return b"".join(chunks)

    async def remove_recording(self, recording_id: str) -> None:
        await self.call("record.rm", recording=recording_id)

    # -- sharing ------------------------------------------------------------------------
    async def share(
        self,
        session_id: str,
        role: str,
        *,
        user: str | None = None,
        ttl: str | None = None,
        allow_ips: Sequence[str] = (),
    ) -> Share:
        result = await self.call(
            "share.create", session=session_id, role=role, user=user, ttl=ttl,
            allowIps=list(allow_ips),
        )  # fmt: skip
        return Share.from_json(result)

    async def grants(self, session_id: str, *, include_inactive: bool = False) -> list[Grant]:
        found = await self.call("share.list", session=session_id, all=include_inactive)
        return [Grant.from_json(g) for g in found]

    async def revoke(self, session_id: str, grant_id: str) -> None:
        await self.call("share.revoke", session=session_id, grant=grant_id)

    async def rotate_token(
        self, session_id: str, grant_id: str | None = None, *, grace: str | None = None
    ) -> list[Share]:
        rotated = await self.call("token.rotate", session=session_id, grant=grant_id, grace=grace)
        return [Share.from_json(r) for r in rotated]

    async def handoff(self, session_id: str, to: str, *, keep: str = "observer") -> Session:
        result = await self.call("session.handoff", session=session_id, to=to, keep=keep)
        return Session.from_json(result)

    async def rename_window(self, session_id: str, window_id: int, name: str) -> Window:
        result = await self.call("window.rename", session=session_id, window=window_id, name=name)
        return Window.from_json(result)

    # -- audit and daemon ------------------------------------------------------------------
    async def audit(
        self, *, session: str | None = None, since: str | None = None
    ) -> list[dict[str, Any]]:
        return await asyncio.to_thread(audit_records, session, since)

    async def verify_audit(self) -> Any:
        from tachi.audit import verify
        from tachi.paths import state_dir

        return await asyncio.to_thread(verify, state_dir() / "audit")

    async def verify_recordings(self, recording: str | None = None) -> Any:
        from tachi.audit import verify_recordings
        from tachi.paths import state_dir

        return await asyncio.to_thread(verify_recordings, state_dir() / "audit", recording)

    async def status(self) -> dict[str, Any]:
        return dict(await self.call("daemon.status"))

    async def attach(
        self,
        session_id: str,
        *,
        read_only: bool = False,
        window: int | None = None,
        size: PTYConfig | None = None,
        resume: tuple[int, int] | None = None,
    ) -> AsyncSessionConn:
        """Attach on a connection of its own; ``resume=(window, seq)`` continues
        from that output offset (exactly, if the daemon still holds it)."""
        wire = await _AsyncWire.open(self.endpoint, self._token, self._autostart)
        result = await wire.call(
            "session.attach",
            {
                "session": session_id,
                "readOnly": read_only,
                "window": window,
                "size": size.to_json() if size else None,
                "resume": {"window": resume[0], "seq": resume[1]} if resume else None,
            },
        )
        return AsyncSessionConn(wire, result)


class AsyncSessionConn:
    """Async SessionConn: ``read``, ``write``, ``resize``, ``close``, ``wait``."""

    def __init__(self, wire: _AsyncWire, attach_result: dict[str, Any]) -> None:
        self._wire = wire
        self.session = Session.from_json(attach_result)
        self.read_only = bool(attach_result.get("readOnly"))
        self.exit_code: int | None = None
        self.done = False
        self._expect: Any = None

    async def read(self) -> bytes:
        """Next output (snapshots included); ``b""`` once detached or closed."""
        import json

        while not self.done:
            frame = await self._wire.stream.get()
            if frame is None:
                self.done = True
                break
            if frame.channel == protocol.STDOUT:
                return protocol.decode_output(frame.payload)[2]
            message = json.loads(frame.payload)
            if message.get("event") == "screen":
                return str(message["data"]).encode()
            if message.get("event") == "closed":
                self.exit_code = message.get("exitCode")
            if message.get("event") == "detached":
                self.done = True
        return b""

    async def read_until(self, pattern: bytes | str, timeout: float = 10.0) -> bytes:
        """``SessionConn.read_until``: read until ``pattern`` has appeared; returns
        everything read. Raises ``TimeoutError`` after ``timeout`` seconds (the
        message ends with the last output read) and ``EOFError`` if the
        attachment ends first."""
        wait = PatternWait(pattern, timeout)

        async def until_found() -> None:
            while not wait.found:
                if self.done:
                    raise wait.ended()
                wait.add(await self.read())

        try:
            await asyncio.wait_for(until_found(), timeout)
        except TimeoutError:
            raise wait.timed_out() from None
        return bytes(wait.seen)

    async def expect(self, patterns: list[str] | str, timeout: float = 10.0) -> ExpectResult:
        """``SessionConn.expect``: the first of ``patterns`` to match new output
        (RE2; escape sequences removed), or the ``eof``/``timeout`` outcome."""
        from tachi.client.runs import ExpectBuffer, compile_patterns

        regexes = compile_patterns(patterns)
        if self._expect is None:
            self._expect = ExpectBuffer()
        buffer = self._expect

        async def until_found() -> tuple[int, str, str] | None:
            while True:
                hit = buffer.search(regexes)
                if hit is not None or self.done:
                    return hit
                buffer.add(await self.read())

        try:
            hit = await asyncio.wait_for(until_found(), timeout)
        except TimeoutError:
            return ExpectResult("timeout", None, None, buffer.take())
        if hit is None:
            return ExpectResult("eof", None, None, buffer.take())
        return ExpectResult("match", hit[0], hit[1], hit[2])

    async def write(self, data: bytes) -> int:
        for start in range(0, len(data), protocol.MAX_PAYLOAD):
            self._wire.send(protocol.STDIN, data[start : start + protocol.MAX_PAYLOAD])
        return len(data)

    async def resize(self, rows: int, cols: int, xpixel: int = 0, ypixel: int = 0) -> None:
        await self._wire.call(
            "client.resize", {"rows": rows, "cols": cols, "xPixel": xpixel, "yPixel": ypixel}
        )

    async def wait(self) -> int | None:
        while not self.done:
            await self.read()
        return self.exit_code

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._wire.call("client.detach", {}), 2)
        await self._wire.close()
