"""``tachi record start|stop|ls|export|rm`` and ``tachi play``."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import click

from tachi.cli.completion import complete_session
from tachi.cli.main import Context, cli, json_option, pass_ctx, token_option
from tachi.cli.output import emit_json, table
from tachi.errors import TachiError
from tachi.gotime import format_duration


@cli.group("record")
def record() -> None:
    """Record sessions as asciicast files that asciinema plays."""


def _show(rec: dict, as_json: bool) -> None:
    if as_json:
        emit_json(rec)
    else:
        click.echo(rec["id"])


@record.command("start")
@click.argument("session", shell_complete=complete_session)
@json_option
@token_option
@pass_ctx
def start(ctx: Context, session: str, as_json: bool) -> None:
    """Start recording SESSION from its current screen; prints the recording id."""
    with ctx.client() as client:
        _show(client.call("record.start", session=session), as_json)


@record.command("stop")
@click.argument("session", shell_complete=complete_session)
@json_option
@token_option
@pass_ctx
def stop(ctx: Context, session: str, as_json: bool) -> None:
    """Stop recording SESSION; prints the recording id."""
    with ctx.client() as client:
        _show(client.call("record.stop", session=session), as_json)


@record.command("ls")
@click.option("--session", help="Only recordings of this session.")
@json_option
@pass_ctx
def ls(ctx: Context, session: str | None, as_json: bool) -> None:
    """List recordings."""
    with ctx.client() as client:
        recs = client.call("record.list", session=session)
    if as_json:
        emit_json(recs)
        return
    if not recs:
        click.echo("no recordings", err=True)
        return
    table(
        ["ID", "SESSION", "STARTED", "DURATION", "SIZE", "STATE", "PATH"],
        [
            [
                r["id"],
                r["sessionId"],
                r["startTime"][:19].replace("T", " "),
                format_duration(r["duration"]),
                r["size"],
                _state(r),
                r["path"],
            ]
            for r in recs
        ],
    )


def _state(rec: dict) -> str:
    if rec["active"]:
        return "recording"
    return f"failed: {rec['error']}" if rec.get("error") else "done"


def check_recordings(recording: str | None) -> None:
    """Check recordings against the SHA-256 in their ``record.stop`` audit records
    (all of them, or ``recording``: an id or a file), after the audit log itself.

    Prints one line per recording and a summary; exits 1 naming the first file
    that does not match (or a log that does not verify), 3 if ``recording`` is
    not in the log. Reads this host's state directory: no daemon needed."""
    from tachi.audit import verify, verify_recordings
    from tachi.paths import state_dir

    directory = state_dir() / "audit"
    log_ok = verify(directory)
    if not log_ok.ok:
        click.echo(f"tachi: audit log verification failed: {log_ok.problem}", err=True)
        sys.exit(1)
    try:
        checks = verify_recordings(directory, recording)
    except OSError as exc:
        raise TachiError(f"cannot read the audit log: {exc.strerror or exc}") from None
    if recording is not None and not checks:
        click.echo(f"tachi: no recording {recording!r} in the audit log", err=True)
        sys.exit(3)
    for c in checks:
        line = f"{c.status:9} {c.id}  {c.path}"
        click.echo(f"{line}: {c.problem}" if c.problem and c.status != "removed" else line)
    bad = [c for c in checks if c.failed]
    if bad:
        click.echo(
            f"tachi: recording verification failed: {bad[0].path}: {bad[0].problem}"
            + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
            err=True,
        )
        sys.exit(1)
    ok = sum(c.status == "ok" for c in checks)
    click.echo(f"recordings ok: {ok} verified, {len(checks) - ok} not checked", err=True)


@record.command("verify")
@click.argument("recording", required=False)
def verify_cmd(recording: str | None) -> None:
    """Check RECORDING (an id or a file; default: all) against the SHA-256 its
    record.stop audit record holds; exit 1 naming a file that was changed."""
    check_recordings(recording)


def _fetch(ctx: Context, rec_id: str, dest: Path) -> int:
    """Copy a recording through the daemon into ``dest``; returns its size.

    ``dest`` is opened only once the daemon has sent the first chunk (an unknown
    recording leaves no empty file behind), and a file this call created is
    removed again if writing it fails. Raises ``TachiError`` naming ``dest``.
    """
    size = 0
    created = False
    try:
        with ctx.client() as client, contextlib.ExitStack() as stack:
            out = None
            offset = 0
            while True:
                chunk = client.call("record.read", recording=rec_id, offset=offset)
                if out is None:
                    created = not dest.exists()
                    out = stack.enter_context(open(dest, "wb"))
                data = base64.b64decode(chunk["data"])
                out.write(data)
                offset += len(data)
                size += len(data)
                if chunk["eof"]:
                    break
    except OSError as exc:
        if created:
            with contextlib.suppress(OSError):
                dest.unlink()
        raise TachiError(f"cannot write {dest}: {exc.strerror or exc}") from None
    return size


def _fetch_asciicast(ctx: Context, rec_id: str, dest: Path) -> int:
    """Write a recording to ``dest`` as asciicast v2; returns the size written.

    A recording in a plugin's format is fetched as it is, beside ``dest``, and
    turned into asciicast by the recorder of that format installed here (its
    ``export``); with none, ``InvalidRequest`` is raised before anything is
    fetched. ``dest`` may be left partly written on error: callers pass a
    temporary file."""
    from tachi.playback import reader_for, to_asciicast

    with ctx.client() as client:
        fmt = client.call("record.get", recording=rec_id).get("format") or "asciicast"
    if fmt == "asciicast":
        return _fetch(ctx, rec_id, dest)
    recorder = reader_for(fmt)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".raw")
    os.close(fd)
    raw = Path(name)
    try:
        _fetch(ctx, rec_id, raw)
        to_asciicast(recorder, raw, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            raw.unlink()
    return dest.stat().st_size


def _local_reader(path: Path) -> object | None:
    """The installed recorder whose extension ``path`` has, if it is not asciicast
    (a plugin's file played by name); ``None`` for anything else."""
    if path.name.endswith(".cast"):
        return None
    from tachi.playback import installed_recorders, reader_for

    recorders = installed_recorders()
    for fmt, recorder in recorders.items():
        ext = getattr(recorder, "extension", "")
        if fmt != "asciicast" and ext and path.name.endswith(ext):
            return reader_for(fmt, recorders)
    return None


@record.command("export")
@click.argument("recording")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    required=True,
    help="The file to write, or - for stdout.",
)
@pass_ctx
def export(ctx: Context, recording: str, output: Path) -> None:
    """Write RECORDING to a file or stdout (asciicast v2: `asciinema play FILE`
    plays it; a plugin's format goes through its recorder's export). A recording
    cut mid-event (a full disk, a crash) is exported up to
    its last whole event, with a marker there. Nothing is left behind on error."""
    from tachi.playback import end_on_a_whole_event, load_cast

    to_stdout = str(output) == "-"
    # A regular file is written beside itself and renamed into place once
    # checked, so a failure never leaves a partial file under the name the user
    # gave; stdout, a device or a pipe (never replaced!) gets the checked copy.
    in_place = not to_stdout and (not output.exists() or output.is_file())
    directory = output.parent if in_place else None
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{output.name}.", suffix=".part")
    os.close(fd)
    part = Path(name)
    try:
        size = _fetch_asciicast(ctx, recording, part)
        cut = end_on_a_whole_event(part)
        load_cast(part)
        if in_place:
            # mkstemp made it 0600: give it the mode open() would have (the umask's).
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(part, 0o666 & ~umask)
            os.replace(part, output)
        else:
            with open(part, "rb") as src, contextlib.ExitStack() as stack:
                dst = sys.stdout.buffer if to_stdout else stack.enter_context(open(output, "wb"))
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    if cut:
        click.echo(f"tachi: warning: {recording} was cut mid-event; exported up to there", err=True)
    if not to_stdout:
        click.echo(f"wrote {output} ({size} bytes)", err=True)


@record.command("rm")
@click.argument("recording")
@pass_ctx
def rm(ctx: Context, recording: str) -> None:
    """Delete RECORDING (file and index entry)."""
    with ctx.client() as client:
        client.call("record.rm", recording=recording)


@cli.command("play")
@click.argument("recording")
@click.option("--speed", type=click.FloatRange(min=0.01), default=1.0, show_default=True)
@click.option("--idle-limit", type=click.FloatRange(min=0), help="Cap pauses at this many seconds.")
@pass_ctx
def play(ctx: Context, recording: str, speed: float, idle_limit: float | None) -> None:
    """Play RECORDING (an id, a .cast file, or a file in an installed recorder's
    format) in this terminal; Ctrl-C stops."""
    from tachi.playback import load_cast, play_events, to_asciicast

    with contextlib.ExitStack() as stack:
        path = Path(recording)
        if not path.is_file():
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="tachi-play-"))
            path = Path(tmp) / "rec.cast"
            _fetch_asciicast(ctx, recording, path)
        elif (reader := _local_reader(path)) is not None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="tachi-play-"))
            converted = Path(tmp) / "rec.cast"
            to_asciicast(reader, path, converted)
            path = converted
        # Parsed before anything is written: a file that is not a recording gets
        # one error line, not a screen reset first.
        header, events = load_cast(path)
        out = sys.stdout.buffer
        interrupted = False
        try:
            play_events(header, events, out, speed=speed, idle_limit=idle_limit)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            # Whatever the recording left on: normal screen, cursor, attributes.
            with contextlib.suppress(OSError):
                out.write(b"\x1b[0m\x1b[?25h\x1b[?1049l\r\n")
                out.flush()
    if interrupted:
        # Like any command stopped by Ctrl-C: a script can tell it did not finish.
        click.echo("[playback interrupted]", err=True)
        sys.exit(130)
    click.echo("[playback finished]", err=True)
