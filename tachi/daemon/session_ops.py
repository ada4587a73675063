"""Operations on sessions and windows (the seed's SessionManager and SessionMultiplexer)."""

from __future__ import annotations

import asyncio
import functools
import signal as signals
from typing import TYPE_CHECKING, Any

from tachi.core.clients import AttachedClient
from tachi.daemon.client_ops import client_by_id, detach_clients
from tachi.daemon.ops import (
    Need,
    RequestContext,
    arg_dict,
    arg_float,
    arg_int,
    arg_str,
    operation,
)
from tachi.errors import InvalidRequest, NotFound, PermissionDenied, TimedOut
from tachi.models import (
    FieldMask,
    PTYConfig,
    Session,
    SessionFilter,
    SessionRequest,
    check_window_name,
    field_mask,
)

if TYPE_CHECKING:
    pass


@operation("session.create", action="session.create")
async def create(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    try:
        req = SessionRequest.from_json(arg_dict(args, "request"))
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidRequest(f"invalid session request: {exc}") from None
    session = ctx.effects.create_session(ctx.principal, req)
    return session.to_model().to_json()


@operation("session.list", filters="session.get")
async def list_sessions(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        flt = SessionFilter.from_json(arg_dict(args, "filter"))
    except ValueError as exc:
        raise InvalidRequest(f"invalid filter: {exc}") from None
    mask = _field_mask(args.get("fields"))
    visible = []
    for info in ctx.sessions.list(flt):
        target = ctx.sessions.sessions.get(info.id, info)
        if ctx.shows(target):
            visible.append(info.to_json(mask))
    return visible


def _field_mask(paths: Any) -> FieldMask | None:
    """``session.list``'s ``fields``, parsed (``None``: whole sessions)."""
    if paths is None:
        return None
    if not isinstance(paths, list):
        raise InvalidRequest("'fields' must be a list of field names")
    try:
        return field_mask(paths)
    except ValueError as exc:
        raise InvalidRequest(f"invalid fields: {exc}") from None


@operation("session.get", action="session.get", session="session", live=False)
async def get(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    found = ctx.target
    model = found if isinstance(found, Session) else found.to_model()
    return model.to_json()


def _pty_from(args: dict[str, Any], term: str) -> PTYConfig | None:
    size = arg_dict(args, "size")
    if not size:
        return None
    try:
        pty = PTYConfig(
            term=term,
            rows=int(size.get("rows") or 0),
            cols=int(size.get("cols") or 0),
            xPixel=int(size.get("xPixel") or 0),
            yPixel=int(size.get("yPixel") or 0),
        )
        pty.validate()
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"invalid size: {exc}") from None
    return pty


def _attach_needs(ctx: RequestContext, args: dict[str, Any]) -> list[Need]:
    """A writable client that names a window switches it (``window.select``);
    ``detachOthers`` detaches the clients there are (``session.detach``)."""
    session = ctx.session
    needs = []
    if arg_int(args, "window") is not None and not _attach_read_only(ctx, args):
        needs.append(Need("window.select", session))
    if args.get("detachOthers") and session.clients:
        needs.append(Need("session.detach", session))
    return needs


def _attach_read_only(ctx: RequestContext, args: dict[str, Any]) -> bool:
    # Without session.write the client is attached read-only, not refused.
    return bool(args.get("readOnly")) or not ctx.granted["session.write"]


@operation(
    "session.attach",
    action="session.attach",
    session="session",
    may=("session.write",),
    also=_attach_needs,
)
async def attach(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.session
    read_only = _attach_read_only(ctx, args)
    role, role_until = session.access.role_and_end(ctx.principal)
    role = role or "owner"  # a plugin's policy let it in
    size = _pty_from(args, session.info.pty.term if session.info.pty else "")
    resume = arg_dict(args, "resume")
    window_id = arg_int(args, "window")
    if window_id is not None and read_only:
        window_id = None if window_id == session.mux.get(None).id else window_id
        if window_id is not None:
            raise PermissionDenied("a read-only client cannot switch the session's window")
    client = AttachedClient(
        wire=ctx.connection.wire,
        principal=ctx.principal,
        role=role,
        read_only=read_only,
        size=size,
        limit=ctx.config.client_buffer,
        snapshot=session.snapshot_active,
        role_until=role_until,
        on_role_lapsed=functools.partial(ctx.sharing.lapsed, session),
    )
    if args.get("detachOthers") and session.clients:
        detach_clients(ctx, session, list(session.clients.values()))
    # Audited before it takes effect: if the audit log cannot be written, fail closed.
    ctx.effects.client_attached(ctx.principal, session, client)
    client.connection = ctx.connection
    ctx.connection.attach(session, client)
    resume_seq = (
        arg_int(resume, "seq") if resume.get("window") == session.mux.get(None).id else None
    )
    # Scheduled, so the reply goes out before the first screen and the client
    # knows what follows.
    asyncio.get_running_loop().call_soon(
        functools.partial(session.attach, client, window_id=window_id, resume_seq=resume_seq)
    )
    result = session.to_model().to_json()
    result["readOnly"] = read_only
    result["role"] = role
    return result


@operation("client.resize", attached=True, may=("session.resize",), ordered=True)
async def client_resize(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """The attached client's terminal size; a read-only client's (or one that
    may not ``session.resize``) is noted, never applied."""
    session, client = ctx.connection.require_attached()
    if not client.may_write() or not ctx.may("session.resize"):
        if client.ended:
            raise InvalidRequest("this connection is not attached to a session")
        client.denied_inputs += 1
        ctx.audit_by(
            "session.resize",
            session.id,
            result="denied",
            reason=f"{client.role} client is read-only",
        )
        return {"applied": False, "reason": "read-only clients never resize the session"}
    pty = _pty_from({"size": args}, "")
    assert pty is not None
    # Audited before it applies (a drag is coalesced: see SharingService.client_resize).
    ctx.sharing.client_resize(ctx.principal, session, client, pty)
    session.client_resized(client, pty)
    return {"applied": True}


@operation("client.redraw", attached=True, action="session.read")
async def client_redraw(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session, client = ctx.connection.require_attached()
    client.send_screen(*session.snapshot_active())
    return {}


@operation("client.detach", attached=True, needs="its own attachment", ordered=True)
async def client_detach(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    ctx.connection.require_attached()
    ctx.connection.detach("detached")
    return {}


@operation("session.detach", action="session.detach", session="session")
async def detach(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.session
    client_id = arg_int(args, "client")
    clients = (
        [client_by_id(session, client_id)]
        if client_id is not None
        else list(session.clients.values())
    )
    detach_clients(ctx, session, clients)
    return {"detached": len(clients)}


@operation("session.close", action="session.close", session="session")
async def close(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    from tachi.models import CloseReason

    session = ctx.session
    ctx.audit_by("session.close", session.id, reason="closed")
    session.finish(CloseReason.CLOSED)
    return session.to_model().to_json()


@operation("session.resize", action="session.resize", session="session", ordered=True)
async def resize(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.session
    ctx.connection.deny_if_read_only("resizing")
    pty = _pty_from(args, session.info.pty.term if session.info.pty else "")
    if pty is None:
        raise InvalidRequest("missing argument 'size'")
    ctx.audit_by("session.resize", session.id, details=pty.to_json())
    session.resize(pty)
    return session.to_model().to_json()


@operation("session.signal", action="session.signal", session="session")
async def send_signal(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.session
    sig = parse_signal(args.get("signal"))
    window = session.mux.get(arg_int(args, "window"))
    ctx.audit_by(
        "session.signal",
        session.id,
        details={"signal": signals.Signals(sig).name, "window": window.id},
    )
    window.child.send_signal(sig)
    return {"signal": signals.Signals(sig).name, "window": window.id}


@operation("session.send", action="session.write", session="session")
async def send(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.session
    text = arg_str(args, "text", required=False)
    data = text.encode("utf-8", "surrogateescape") if text is not None else b""
    if "data" in args:
        import base64

        try:
            data = base64.b64decode(arg_str(args, "data") or "", validate=True)
        except ValueError:
            raise InvalidRequest("data must be base64") from None
    window_id = arg_int(args, "window")
    # Audited first: input the log cannot account for never reaches the program.
    ctx.effects.admit_input(ctx.principal, session, len(data), data)
    session.write(data, window_id)
    ctx.effects.note_input(ctx.principal, session, data)
    return {"bytes": len(data)}


@operation("session.capture", action="session.read", session="session")
async def capture(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.session
    window = session.mux.get(arg_int(args, "window"))
    wanted = arg_int(args, "history")
    # A read of what the session shows: audited before it is answered.
    ctx.sharing.note_read(
        ctx.principal, session, "session.capture", {"window": window.id, "history": wanted}
    )
    cursor = window.screen.cursor()
    result = {
        "window": window.id,
        "rows": window.screen.rows,
        "cols": window.screen.cols,
        "text": window.screen.ansi() if args.get("ansi") else window.screen.text(),
        "cursor": {"row": cursor.row, "col": cursor.col, "visible": cursor.visible},
        "seq": window.seq,
    }
    if wanted is not None:
        # The last N lines of scrollback (-1: all of it), oldest first.
        lines = window.screen.history()
        result["history"] = lines if wanted < 0 else lines[max(0, len(lines) - wanted) :]
    return result


@operation("session.wait", action="session.read", session="session", live=False)
async def wait(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """Wait for output (``match``, ``matches``) or for the session to exit. A
    waiter whose access to the session ends meanwhile (revoked, expired,
    rotated out, handed away) gets ``PermissionDenied`` with the reason, never
    a match on what it may no longer read."""
    found = ctx.target
    if isinstance(found, Session):
        return await _wait(ctx, args)
    with ctx.sharing.bind(
        lambda: ctx.connection.principal, found.id, "session.read", {"stream": "session.wait"}
    ):
        return await _wait(ctx, args)


async def _wait(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    ref = arg_str(args, "session") or ""
    found = ctx.target
    timeout = arg_float(args, "timeout")
    pattern = arg_str(args, "match", required=False)
    if args.get("matches") is not None or args.get("new") or args.get("since") is not None:
        if isinstance(found, Session) and args.get("expect"):
            return {"outcome": "eof", "before": "", "position": None}  # closed already
        return await _wait_new(ctx, args, pattern, timeout)
    try:
        if pattern is not None:
            session = ctx.sessions.live(ref)
            matched = await session.wait_match(pattern, arg_int(args, "window"), timeout)
            return {"matched": matched}
        if args.get("exit"):
            if isinstance(found, Session):
                return {"exitCode": found.exitCode, "closeReason": str(found.closeReason)}
            code = await found.wait_exit(timeout)
            return {"exitCode": code, "closeReason": str(found.info.closeReason)}
    except TimeoutError:
        what = f"pattern {pattern!r}" if pattern is not None else "the session to exit"
        raise TimedOut(f"timed out after {timeout:g}s waiting for {what}") from None
    raise InvalidRequest("wait needs 'match' or 'exit'")


async def _wait_new(
    ctx: RequestContext, args: dict[str, Any], pattern: str | None, timeout: float | None
) -> dict[str, Any]:
    """``session.wait`` on output after a position (``since``) or after the
    call (``new``), for one pattern (``match``) or several (``matches``).
    With ``expect``, EOF and timeout are outcomes in the reply; without, they
    raise ``NotFound`` and ``TimedOut``."""
    from tachi.daemon.run_ops import wait_output

    session = ctx.target
    if isinstance(session, Session):
        reason = f" ({session.closeReason})" if session.closeReason else ""
        raise NotFound(f"session {session.id} is closed{reason}")
    patterns = args.get("matches")
    if patterns is None:
        patterns = [pattern] if pattern is not None else []
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise InvalidRequest("argument 'matches' must be a list of strings")
    if len(patterns) > 64:
        raise InvalidRequest("at most 64 patterns")
    since = arg_int(args, "since")
    window = session.mux.get(arg_int(args, "window"))
    result = await wait_output(window, patterns, since, timeout)
    if args.get("expect") or result["outcome"] == "match":
        return result
    if result["outcome"] == "eof":
        raise NotFound(f"window {window.id} exited before a pattern appeared")
    raise TimedOut(f"timed out after {timeout:g}s waiting for {patterns!r} in new output")


# -- windows ------------------------------------------------------------------------
@operation("window.new", action="window.new", session="session", ordered=True)
async def window_new(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.session
    ctx.connection.deny_if_read_only("opening windows")
    command = args.get("command") or []
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise InvalidRequest("command must be a list of strings")
    name = arg_str(args, "name", required=False)
    if name is not None:
        try:
            check_window_name(name)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    try:
        window = session.mux.new_window(command, name, select=args.get("select", True) is not False)
    except OSError as exc:
        raise InvalidRequest(
            f"cannot start {(command or session.info.command)[0]!r}: {exc.strerror or exc}"
        ) from None
    ctx.effects.window_event(ctx.principal, session, "window.new", window.id)
    return window.to_model(window is session.mux.active).to_json()


@operation("window.list", action="session.read", session="session")
async def window_list(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    session = ctx.session
    active = session.mux.active
    return [w.to_model(w is active).to_json() for w in session.mux.windows()]


@operation("window.select", action="window.select", session="session", ordered=True)
async def window_select(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.session
    ctx.connection.deny_if_read_only("switching windows")
    step = arg_int(args, "step")
    if step is not None:
        window = session.mux.cycle(1 if step > 0 else -1)
    else:
        window = session.mux.select(arg_int(args, "window", required=True) or 0)
    ctx.effects.window_event(ctx.principal, session, "window.select", window.id)
    return window.to_model(True).to_json()


@operation("window.rename", action="window.rename", session="session")
async def window_rename(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.session
    ctx.connection.deny_if_read_only("renaming windows")
    name = arg_str(args, "name") or ""
    try:
        check_window_name(name)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    window_id = arg_int(args, "window", required=True)
    if window_id == -1:
        window_id = session.mux.get(None).id
    window = session.mux.rename(window_id or 0, name)
    ctx.effects.window_event(ctx.principal, session, "window.rename", window.id)
    return window.to_model(window is session.mux.active).to_json()


@operation("window.close", action="window.close", session="session", ordered=True)
async def window_close(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.session
    ctx.connection.deny_if_read_only("closing windows")
    window_id = arg_int(args, "window", required=True) or 0
    session.mux.close(window_id)
    ctx.effects.window_event(ctx.principal, session, "window.close", window_id)
    return {"window": window_id}


def parse_signal(value: Any) -> int:
    """``INT``, ``SIGINT``, ``2`` (or ``"2"``) → 2. Raises ``InvalidRequest``."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    elif isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return int(signals.Signals[name])
        except KeyError:
            raise InvalidRequest(f"unknown signal {value!r} (try INT, TERM, HUP, 9)") from None
    else:
        raise InvalidRequest("missing argument 'signal'")
    try:
        return int(signals.Signals(number))
    except ValueError:
        raise InvalidRequest(f"unknown signal number {number}") from None
