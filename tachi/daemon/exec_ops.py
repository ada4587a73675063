"""``tachi exec``: run one command under the daemon, with no session.

Protocol: ``exec.start`` starts it (one at a time per connection) and replies
with its pid; the connection then gets ``exec.output`` events (``stream``
``stdout`` or ``stderr``, ``data`` base64) and one ``exec.exit`` event
(``exitCode``: the status, or 128 + the signal number). ``exec.stdin`` feeds
stdin (``eof`` closes it), ``exec.signal`` signals the command's process
group. The connection ending kills the command. Authorised as ``exec``, which
only the daemon's owner holds (never an observer), and audited at start and
exit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import functools
import os
import pty
import signal
import struct
import termios
from typing import Any

from tachi.core.pty import default_signals
from tachi.daemon.ops import RequestContext, arg_dict, arg_float, arg_str, operation
from tachi.daemon.token_ops import require_local_owner
from tachi.errors import Conflict, InvalidRequest, NotFound
from tachi.gotime import now_ns

_CHUNK = 64 * 1024


def _on_terminal(tty_fd: int) -> None:
    """In the child: default signals, and the pty as the controlling terminal, so
    that Ctrl-C typed into it interrupts the command. By descriptor: uvloop runs
    this before it moves the pty onto stdin."""
    default_signals()
    if os.getsid(0) != os.getpid():  # not every event loop calls setsid before this
        os.setsid()
    fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)


class ExecJob:
    """One running command and the connection it reports to."""

    def __init__(self, ctx: RequestContext, proc: asyncio.subprocess.Process) -> None:
        self.ctx = ctx
        self.proc = proc
        self.started = now_ns()
        self.pty_fd: int | None = None
        #: ``exec.start`` with ``record``: the output goes to a recording too.
        self.recording: Any = None

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

    async def pump_pty(self) -> None:
        assert self.pty_fd is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.run_in_executor(None, os.read, self.pty_fd, _CHUNK)
            except OSError:  # EIO: the command and its children closed the terminal
                return
            if not data:
                return
            await self.output("stdout", data)

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def _job(ctx: RequestContext) -> ExecJob:
    job = getattr(ctx.connection, "exec_job", None)
    if job is None or job.proc.returncode is not None:
        raise NotFound("no command is running on this connection (start one with exec.start)")
    return job


@operation("exec.start")
async def start(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    ctx.daemon.authorize(ctx.principal, "exec", None)
    require_local_owner(ctx, "exec.start", daemon_token=True)
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
    pty_fd = None
    try:
        if use_pty:
            pty_fd, child_fd = pty.openpty()
            size = arg_dict(args, "size")
            if size:
                rows, cols = int(size.get("rows") or 24), int(size.get("cols") or 80)
                fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=child_fd, stdout=child_fd, stderr=child_fd, cwd=cwd, env=env,
                preexec_fn=functools.partial(_on_terminal, child_fd),
            )  # fmt: skip
            os.close(child_fd)
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
    except OSError as exc:
        if pty_fd is not None:
            os.close(pty_fd)
        raise InvalidRequest(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
    job = ExecJob(ctx, proc)
    job.pty_fd = pty_fd
    if args.get("record"):
        size = arg_dict(args, "size")
        job.recording = ctx.daemon.recordings.record_stream(
            " ".join(argv)[:80],
            ctx.principal.user,
            width=int(size.get("cols") or 80),
            height=int(size.get("rows") or 24),
        )
    ctx.connection.exec_job = job
    ctx.connection.closers.append(job.kill)
    ctx.daemon.audit_by(
        ctx.principal, "exec.start", details={"command": argv, "cwd": cwd, "pty": use_pty}
    )
    timeout = arg_float(args, "timeout")
    asyncio.get_running_loop().create_task(_supervise(job, timeout))
    return {"pid": proc.pid}


async def _supervise(job: ExecJob, timeout: float | None) -> None:
    pumps = (
        [job.pump_pty()]
        if job.pty_fd is not None
        else [job.pump(job.proc.stdout, "stdout"), job.pump(job.proc.stderr, "stderr")]
    )
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.gather(job.proc.wait(), *pumps), timeout)
    except TimeoutError:
        timed_out = True
        job.kill()
        await job.proc.wait()
    finally:
        if job.pty_fd is not None:
            os.close(job.pty_fd)
    code = job.proc.returncode
    assert code is not None
    status = 128 - code if code < 0 else code
    event: dict[str, Any] = {"event": "exec.exit", "exitCode": 124 if timed_out else status}
    if timed_out:
        event["timedOut"] = True
    if job.recording is not None:
        job.recording.close()
        event["recording"] = job.recording.id
    job.send(event)
    job.ctx.daemon.audit_by(
        job.ctx.principal,
        "exec.exit",
        result="info",
        details={"exitCode": event["exitCode"], "duration": now_ns() - job.started},
    )
    job.ctx.connection.exec_job = None


@operation("exec.stdin")
async def stdin(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    job = _job(ctx)
    try:
        data = base64.b64decode(arg_str(args, "data", required=False) or "", validate=True)
    except ValueError:
        raise InvalidRequest("data must be base64") from None
    if job.pty_fd is not None:
        os.write(job.pty_fd, data)
        if args.get("eof"):
            os.write(job.pty_fd, b"\x04")
        return {"bytes": len(data)}
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


@operation("exec.signal")
async def send_signal(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    from tachi.daemon.session_ops import parse_signal

    job = _job(ctx)
    number = parse_signal(args.get("signal"))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(job.proc.pid, number)
    return {"signal": signal.Signals(number).name}
