"""``tachi exec``: run one command under the daemon, with no session.

Protocol: ``exec.start`` starts it (one at a time per connection) and replies
with its pid; the connection then gets ``exec.output`` events (``stream``
``stdout`` or ``stderr``, ``data`` base64) and one ``exec.exit`` event
(``exitCode``: the status, or 128 + the signal number). ``exec.stdin`` feeds
stdin (``eof`` closes it), ``exec.signal`` signals the command's process
group. The connection ending kills the command. Authorised as ``exec``, which
only the daemon's owner holds (never an observer), and audited at start and
exit.

With ``pty`` the command runs on a :class:`tachi.core.pty.PtyChild`, as a
session's window does: input is queued and written as the terminal takes it,
never with a blocking write on the event loop, and an ``exec.stdin`` request
is answered once the terminal has room again, so a client that sends faster
than the command reads is held back by the connection's request limit.
Output stops being read while the client has not taken what was sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
from typing import Any

from tachi.core.pty import INPUT_HIGH_WATER, PtyChild, default_signals
from tachi.daemon.ops import RequestContext, arg_dict, arg_float, arg_str, operation
from tachi.errors import Conflict, InvalidRequest, NotFound
from tachi.gotime import now_ns

_CHUNK = 64 * 1024


class ExecJob:
    """One running command and the connection it reports to: on pipes
    (``proc``) or on a terminal (``child``), exactly one of them."""

    def __init__(self, ctx: RequestContext, pid: int) -> None:
        self.ctx = ctx
        self.pid = pid
        self.started = now_ns()
        self.proc: asyncio.subprocess.Process | None = None
        self.child: PtyChild | None = None
        #: The terminal's exit status, set when ``child`` has exited and its
        #: output has been sent.
        self.pty_exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        #: ``exec.start`` with ``record``: the output goes to a recording too.
        self.recording: Any = None

    @property
    def running(self) -> bool:
        if self.child is not None:
            return not self.pty_exit.done()
        return self.proc is not None and self.proc.returncode is None

    def send(self, event: dict[str, Any]) -> None:
        self.ctx.connection.send(event)

    async def output(self, stream: str, data: bytes) -> None:
        if self.recording is not None:
            self.recording.output(data)
        payload = base64.b64encode(data).decode()
        self.send({"event": "exec.output", "stream": stream, "data": payload})
        # Back-pressure: a client that does not read slows the command, not the daemon.
        await self.ctx.connection.wire.drained()

    async def pump(self, reader: asyncio.StreamReader | None, stream: str) -> None:
        if reader is None:
            return
        while data := await reader.read(_CHUNK):
            await self.output(stream, data)

    def pty_output(self, data: bytes) -> None:
        """``PtyChild.on_output``: send it; while the client has not taken what
        was sent before, stop reading the terminal (the command then waits)."""
        if self.recording is not None:
            self.recording.output(data)
        payload = base64.b64encode(data).decode()
        self.send({"event": "exec.output", "stream": "stdout", "data": payload})
        wire, tasks = self.ctx.connection.wire, self.ctx.connection.tasks
        if self.child is not None and wire.buffered() > _CHUNK and not tasks.closing:
            self.child.pause_reading()
            self.ctx.connection.tasks.spawn(self._resume_when_drained(self.child))

    async def _resume_when_drained(self, child: PtyChild) -> None:
        await self.ctx.connection.wire.drained()
        child.resume_reading()

    def pty_exited(self, code: int) -> None:
        """``PtyChild.on_exit``: after the last output, with the shell-style status."""
        if not self.pty_exit.done():
            self.pty_exit.set_result(code)

    def kill(self) -> None:
        if self.running and self.pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)


def _job(ctx: RequestContext) -> ExecJob:
    job = getattr(ctx.connection, "exec_job", None)
    if job is None or not job.running:
        raise NotFound("no command is running on this connection (start one with exec.start)")
    return job


@operation("exec.start", action="exec", owner="local-or-daemon-token")
async def start(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    if getattr(ctx.connection, "exec_job", None) is not None:
        raise Conflict("this connection already runs a command")
    argv = args.get("command")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise InvalidRequest("command must be a non-empty list of strings")
    cwd = arg_str(args, "cwd", required=False) or os.path.expanduser("~")
    if not os.path.isdir(cwd):
        raise InvalidRequest(f"cannot start in {cwd!r}: no such directory")
    extra = arg_dict(args, "env")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TACHI_TOKEN")}
    env |= {str(k): str(v) for k, v in extra.items()}
    use_pty = bool(args.get("pty"))
    job: ExecJob
    try:
        if use_pty:
            size = arg_dict(args, "size")
            rows, cols = int(size.get("rows") or 24), int(size.get("cols") or 80)
            job = ExecJob(ctx, 0)
            # ptyprocess makes the terminal the command's controlling one, so
            # Ctrl-C typed into it interrupts the command.
            job.child = PtyChild(
                argv, env=env, cwd=cwd, rows=rows, cols=cols,
                on_output=job.pty_output, on_exit=job.pty_exited,
            )  # fmt: skip
            job.pid = job.child.pid
        else:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=default_signals,
            )
            job = ExecJob(ctx, proc.pid)
            job.proc = proc
    except OSError as exc:
        raise InvalidRequest(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
    if args.get("record"):
        size = arg_dict(args, "size")
        job.recording = ctx.recordings.record_stream(
            " ".join(argv)[:80],
            ctx.principal.user,
            width=int(size.get("cols") or 80),
            height=int(size.get("rows") or 24),
        )
    ctx.connection.exec_job = job
    ctx.connection.closers.append(job.kill)
    ctx.audit_by("exec.start", details={"command": argv, "cwd": cwd, "pty": use_pty})
    timeout = arg_float(args, "timeout")
    # Owned by the connection: when it ends, the killed command's exit is
    # still audited before the daemon closes its audit log.
    ctx.connection.tasks.spawn(_supervise(job, timeout))
    return {"pid": job.pid}


async def _supervise(job: ExecJob, timeout: float | None) -> None:
    timed_out = False
    if job.child is not None:
        try:
            status = await asyncio.wait_for(asyncio.shield(job.pty_exit), timeout)
        except TimeoutError:
            timed_out = True
            job.kill()
            status = await job.pty_exit
    else:
        proc = job.proc
        assert proc is not None
        pumps = [job.pump(proc.stdout, "stdout"), job.pump(proc.stderr, "stderr")]
        try:
            await asyncio.wait_for(asyncio.gather(proc.wait(), *pumps), timeout)
        except TimeoutError:
            timed_out = True
            job.kill()
            await proc.wait()
        code = proc.returncode
        assert code is not None
        status = 128 - code if code < 0 else code
    event: dict[str, Any] = {"event": "exec.exit", "exitCode": 124 if timed_out else status}
    if timed_out:
        event["timedOut"] = True
    if job.recording is not None:
        job.recording.close()
        event["recording"] = job.recording.id
    job.send(event)
    job.ctx.audit_by(
        "exec.exit",
        result="info",
        details={"exitCode": event["exitCode"], "duration": now_ns() - job.started},
    )
    job.ctx.connection.exec_job = None


@operation("exec.stdin", exec_job=True, action="exec", owner="local-or-daemon-token")
async def stdin(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    job = _job(ctx)
    try:
        data = base64.b64decode(arg_str(args, "data", required=False) or "", validate=True)
    except ValueError:
        raise InvalidRequest("data must be base64") from None
    if job.child is not None:
        # Queued at once, in request order; answered once the terminal has taken
        # enough of it, so a sender faster than the command fills the
        # connection's request slots and is no longer read.
        job.child.write(data + b"\x04" if args.get("eof") else data)
        await job.child.input_below(INPUT_HIGH_WATER)
        return {"bytes": len(data)}
    assert job.proc is not None
    writer = job.proc.stdin
    if writer is None or writer.is_closing():
        if not data:  # closing what is closed already is fine
            return {"bytes": 0}
        raise Conflict("the command's stdin is closed")
    writer.write(data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    if args.get("eof"):
        writer.close()
    return {"bytes": len(data)}


@operation("exec.signal", exec_job=True, action="exec", owner="local-or-daemon-token")
async def send_signal(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    from tachi.daemon.session_ops import parse_signal

    job = _job(ctx)
    number = parse_signal(args.get("signal"))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(job.pid, number)
    return {"signal": signal.Signals(number).name}
