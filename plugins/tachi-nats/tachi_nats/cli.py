"""``tachi fleet …``: read the fleet's registry and audit stream from NATS.

These need no daemon and no session: only the ``[fleet]`` settings (URL and
credentials) of config.toml. ``fleet ls`` and ``fleet hosts`` ask the daemon's
mirror of the registry first (``tachi_nats.mirror``: no nats-py to import, no
10,000 messages to read) and read NATS themselves when no daemon with
``[fleet]`` answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from tachi_nats import nats_io, view
from tachi_nats import settings as settings_mod


def _settings() -> settings_mod.FleetSettings:
    from tachi.errors import TachiError

    try:
        s = settings_mod.load()
    except TachiError as e:
        raise click.ClickException(str(e)) from None
    if s is None:
        raise click.ClickException(
            "no [fleet] table in config.toml: see docs/fleet.md ('tachi fleet up' prints one)"
        )
    return s


async def _open(s: settings_mod.FleetSettings) -> Any:
    try:
        # max_reconnect_attempts=0 would mean "forever" to nats-py's first connect.
        return await asyncio.wait_for(
            nats_io.connect(
                s,
                connect_timeout=3,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
            ),
            8,
        )
    except Exception as e:
        raise click.ClickException(
            f"cannot reach NATS at {', '.join(s.servers)}: {e or type(e).__name__}"
        ) from None


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        sys.exit(130)


async def _entries(kv: Any) -> dict[str, bytes]:
    """Every key of ``kv`` with its value: the last message of every subject,
    pushed by one ephemeral consumer into a plain subscription, so a fleet of
    10,000 sessions costs one round of messages, not 10,000 requests. (nats-py's
    KV watcher does the same with a queue and an Entry per message: 0.6 s for
    10,000 sessions here, against 0.1 s.)"""

    js, stream, pre = kv._js, kv._stream, kv._pre
    nc = js._nc
    inbox = nc.new_inbox()
    out: dict[str, bytes] = {}
    done = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Any) -> None:
        if not msg.reply:  # an idle heartbeat or flow control status
            return
        headers = msg.headers
        key = msg.subject[len(pre) :]
        if headers and headers.get("KV-Operation") in ("DEL", "PURGE"):
            out.pop(key, None)
        else:
            out[key] = msg.data
        pending = msg._get_metadata_fields(msg.reply)[8]  # either ack-subject form
        if pending == "0" and not done.done():
            done.set_result(None)

    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
    try:
        info = await nats_io.latest_per_key(js, stream, pre, inbox, inactive_threshold=10.0)
        try:
            if info.num_pending:  # else an empty bucket: nothing will come
                await asyncio.wait_for(done, 10)
        finally:
            with contextlib.suppress(Exception):
                await js._jsm.delete_consumer(stream, info.name)
    finally:
        await sub.unsubscribe()
    return out


async def read_registry(
    js: Any, s: settings_mod.FleetSettings
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[view.SessionEntry]]:
    """(``info`` by host, heartbeat by host (the hosts up), the session entries),
    read from NATS."""
    from nats.js.errors import BucketNotFoundError

    try:
        hosts_kv = await js.key_value(s.hosts_bucket)
        sessions_kv = await js.key_value(s.sessions_bucket)
    except BucketNotFoundError:
        return {}, {}, []
    host_entries = await _entries(hosts_kv)
    session_entries = await _entries(sessions_kv)
    info: dict[str, dict[str, Any]] = {}
    alive: dict[str, dict[str, Any]] = {}
    for key, value in host_entries.items():
        kind, _, name = key.partition(".")
        doc = view.host_doc(value)
        if doc is not None and kind in ("info", "alive"):
            (info if kind == "info" else alive)[name] = doc
    entries = [e for k, v in session_entries.items() if (e := view.session_entry(k, v))]
    return info, alive, entries


async def snapshot(js: Any, s: settings_mod.FleetSettings) -> tuple[dict[str, Any], list[dict]]:
    """(hosts by name with ``status`` up/gone, sessions with ``host`` and, for a gone
    host, ``state`` = ``unreachable``)."""
    info, alive, entries = await read_registry(js, s)
    hosts = {h["host"]: h for h in view.hosts(info, alive, entries)}
    sessions = [json.loads(e.document(st)) for e, st in view.select(entries, set(alive), {})]
    return hosts, sessions


class _Chunks:
    """Gathers the ``fleet.chunk`` events of one ``fleet.snapshot`` request (what
    ``Client._streamed`` asks of a stream: ``event``, ``result``, ``failed``)."""

    def __init__(self) -> None:
        import secrets

        self.tag = secrets.token_hex(6)
        self.parts: list[str] = []

    def event(self, message: dict[str, Any]) -> bool:
        if message.get("event") != "fleet.chunk" or message.get("stream") != self.tag:
            return False
        self.parts.append(str(message.get("data") or ""))
        return True

    def result(self, reply: dict[str, Any]) -> dict[str, Any]:
        return reply

    def failed(self, exc: BaseException) -> BaseException:
        return exc


def _daemon_client() -> Any:
    """A client of the daemon the command talks to (``--host`` or the local one),
    never starting one: no daemon, no mirror."""
    from tachi.client.sync import Client

    obj = click.get_current_context().find_root().obj
    return Client(
        getattr(obj, "socket", None),
        url=getattr(obj, "host", None),
        token=getattr(obj, "token", None),
        autostart=False,
        options=getattr(obj, "options", None),
    )


def _ask(
    client: Any, kind: str, filters: dict[str, str | None], unless: str | None = None
) -> tuple[dict[str, Any], bytes | None]:
    """``fleet.snapshot`` on ``client``'s daemon: (reply, payload), no payload when
    unchanged since ``unless``. Raises ``TachiError`` (no such operation: a daemon
    without ``[fleet]``; refused; not connected to NATS)."""
    import base64
    import zlib

    from tachi.errors import DaemonUnavailable

    chunks = _Chunks()
    args = {"view": kind, **filters, "unless": unless, "stream": chunks.tag}
    reply = client._streamed("fleet.snapshot", args, chunks, 30, "fleet.snapshot")
    if reply.get("unchanged"):
        return reply, None
    data = b"".join(base64.b64decode(p) for p in chunks.parts)
    if reply.get("encoding") == "zlib":
        data = zlib.decompress(data)
    if len(chunks.parts) != reply.get("chunks") or len(data) != reply.get("bytes"):
        raise DaemonUnavailable("the daemon's fleet listing arrived incomplete")
    return reply, data


def _through_daemon(kind: str, filters: dict[str, str | None]) -> bytes | None:
    """The payload from the daemon's mirror, or ``None`` when no daemon with
    ``[fleet]`` answers (the caller then reads NATS itself)."""
    from tachi.errors import TachiError

    try:
        with _daemon_client() as client:
            return _ask(client, kind, filters)[1]
    except (TachiError, OSError):
        return None


def _print_hosts(hosts: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(hosts, indent=2))
        return
    from tachi.cli.output import table

    if not hosts:
        click.echo("no hosts in the fleet yet", err=True)
        return
    table(view.HOST_HEADERS, view.host_rows(hosts))


def register(cli: Any) -> None:
    """Add the ``fleet`` group to the ``tachi`` command."""

    @cli.group("fleet")
    def fleet() -> None:
        """The fleet of tachi daemons on NATS: hosts, sessions, audit (docs/fleet.md)."""

    @fleet.command("hosts")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("--direct", is_flag=True, help="Read NATS here, not through the daemon.")
    def hosts_cmd(as_json: bool, direct: bool) -> None:
        """List the fleet's hosts: up (heartbeat seen) or gone."""
        data = None if direct else _through_daemon("hosts", {})
        if data is not None:
            _print_hosts(json.loads(data), as_json)
            return
        s = _settings()

        async def main() -> list[dict[str, Any]]:
            nc = await _open(s)
            try:
                return view.hosts(*await read_registry(nc.jetstream(timeout=5), s))
            finally:
                await nc.close()

        _print_hosts(_run(main()), as_json)

    @fleet.command("ls")
    @click.option("--host", help="Only sessions on this host.")
    @click.option(
        "--state",
        type=click.Choice(["pending", "active", "suspended", "unreachable"]),
        help="Only sessions in this state (unreachable: their host is gone).",
    )
    @click.option("--agent", help="Only sessions of this agent.")
    @click.option("--user", help="Only sessions of this user.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("--watch", is_flag=True, help="Keep the list on screen, updated live.")
    @click.option("--direct", is_flag=True, help="Read NATS here, not through the daemon.")
    def ls_cmd(
        host: str | None,
        state: str | None,
        agent: str | None,
        user: str | None,
        as_json: bool,
        watch: bool,
        direct: bool,
    ) -> None:
        """List the live sessions of every host (the `tachi ls` columns plus HOST).

        Through the daemon's mirror of the registry when a daemon with [fleet]
        answers, else from NATS directly: the same output either way."""
        filters = {"host": host, "state": state, "agent": agent, "user": user}
        kind = "json" if as_json else "rows"
        if not direct:
            if watch:
                if _watch_daemon(kind, filters):
                    return
            else:
                data = _through_daemon(kind, filters)
                if data is not None:
                    _print_payload(kind, data)
                    return
        s = _settings()

        async def main() -> None:
            nc = await _open(s)
            js = nc.jetstream(timeout=5)
            try:
                if not watch:
                    _print_payload(kind, await _direct(js, s, kind, filters))
                    return
                await _watch(js, s, kind, filters)
            finally:
                await nc.close()

        _run(main())

    @fleet.group("audit", invoke_without_command=True)
    @click.option("--host", help="Only this host's records.")
    @click.option("--session", help="Only records about this session id.")
    @click.option("--since", help="Only records at or after this RFC 3339 time or this long ago.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def audit(
        click_ctx: click.Context,
        host: str | None,
        session: str | None,
        since: str | None,
        as_json: bool,
    ) -> None:
        """Read every host's audit records from the fleet's stream."""
        if click_ctx.invoked_subcommand is not None:
            return
        s = _settings()
        since_ns = _since(since)

        async def main() -> list[dict[str, Any]]:
            nc = await _open(s)
            try:
                return await _audit_records(nc.jetstream(timeout=5), s, host)
            finally:
                await nc.close()

        from tachi.gotime import parse_rfc3339

        records = [
            r
            for r in _run(main())
            if (session is None or r.get("session") == session)
            and (since_ns is None or parse_rfc3339(str(r["time"])) >= since_ns)
        ]
        if as_json:
            click.echo(json.dumps(records, indent=2))
            return
        from tachi.cli.output import audit_line

        for r in records:
            click.echo(audit_line(r, host=r["host"]))

    @audit.command("verify")
    @click.option("--host", help="Only this host.")
    def audit_verify(host: str | None) -> None:
        """Check every host's hash chain and signed checkpoints from the stream alone
        (the keys from the registry); exit 1 naming the first problem."""
        s = _settings()

        async def main() -> list[tuple[str, bool, str]]:
            nc = await _open(s)
            try:
                return await _verify(nc.jetstream(timeout=5), s, host)
            finally:
                await nc.close()

        results = _run(main())
        if not results:
            click.echo("no audit records in the fleet's stream yet")
            return
        failed = False
        for name, ok, line in results:
            if ok:
                click.echo(f"{name}: ok, {line}")
            else:
                failed = True
                click.echo(f"tachi: {name}: audit verification failed: {line}", err=True)
        if failed:
            sys.exit(1)

    @fleet.command("attach")
    @click.argument("target", metavar="HOST/SESSION")
    @click.option("-r", "--read-only", is_flag=True, help="Watch only: never type or resize.")
    @click.option("-w", "--window", type=int, help="Select this window on attach.")
    @click.pass_context
    def attach_cmd(
        click_ctx: click.Context, target: str, read_only: bool, window: int | None
    ) -> None:
        """Attach to SESSION on fleet host HOST through NATS: the short form of
        'tachi --host nats://SERVER/HOST attach SESSION' (SERVER from [fleet] url;
        the daemon still wants a token: TACHI_TOKEN)."""
        from tachi_nats.relay_client import fleet_url

        host, _, session = target.partition("/")
        if not host or not session:
            raise click.UsageError(f"{target!r}: give HOST/SESSION")
        ctx = click_ctx.find_root().obj
        ctx.host = fleet_url(_settings(), host)
        from tachi.cli.session_cmds import _attach

        _attach(ctx, session, read_only=read_only, window=window)

    @fleet.command("up")
    @click.option(
        "--listen", default="127.0.0.1:4222", show_default=True, help="Address to listen on."
    )
    def up_cmd(listen: str) -> None:
        """Start a local nats-server with JetStream under the state directory and
        print the [fleet] lines for config.toml."""
        from tachi_nats import server

        directory = _server_dir()
        host, _, port_text = listen.rpartition(":")
        if not host or not port_text.isdigit():
            raise click.UsageError(f"--listen {listen!r}: give HOST:PORT")
        pid = server.running_pid(directory)
        if pid is not None:
            click.echo(f"nats-server already runs (pid {pid}) in {directory}", err=True)
            token = (directory / "token").read_text().strip()
            conf = (directory / "nats-server.conf").read_text()
            listen = conf.split('listen: "', 1)[1].split('"', 1)[0]
        else:
            try:
                pid, token = server.start(directory, host, int(port_text))
            except (RuntimeError, OSError) as e:
                raise click.ClickException(str(e)) from None
            click.echo(f"nats-server started (pid {pid}), JetStream in {directory}", err=True)
            admin = settings_mod.parse({"url": f"nats://{listen}", "token": token, "host": "admin"})
            assert admin is not None
            made = _run(_provision(admin))
            click.echo(f"created {', '.join(made)}", err=True)
        click.echo("# add to config.toml of every host (and restart its daemon):")
        click.echo("[fleet]")
        click.echo(f'url = "nats://{listen}"')
        click.echo(f'token = "{token}"')

    _register_admin(fleet)

    @fleet.command("down")
    def down_cmd() -> None:
        """Stop the nats-server that 'tachi fleet up' started."""
        from tachi_nats import server

        pid = server.stop(_server_dir())
        if pid is None:
            click.echo("no fleet nats-server runs here", err=True)
        else:
            click.echo(f"nats-server stopped (pid {pid})", err=True)


async def _provision(s: settings_mod.FleetSettings) -> list[str]:
    from tachi_nats.provision import provision

    nc = await _open(s)
    try:
        return await provision(nc.jetstream(timeout=10), s)
    except Exception as e:
        raise click.ClickException(
            f"cannot create the fleet's buckets, stream and object store: {e or type(e).__name__}"
            " (does this NATS user have admin rights?)"
        ) from None
    finally:
        await nc.close()


def _register_admin(fleet: Any) -> None:
    """``fleet init|forget|permissions`` and ``fleet record ls|export|play``."""

    @fleet.command("init")
    def init_cmd() -> None:
        """Create the fleet's buckets, audit stream and recordings object store (with
        [fleet] replicas), once, as an admin: hosts with their own permissions only
        cannot create them."""
        s = _settings()
        made = _run(_provision(s))
        click.echo(f"created {', '.join(made)}" if made else "everything was there already")

    @fleet.command("forget")
    @click.argument("host")
    def forget_cmd(host: str) -> None:
        """Remove gone HOST from the registry (its info, heartbeat and sessions); its
        audit records and recordings stay. Refused while HOST is up."""
        s = _settings()

        async def main() -> int:
            nc = await _open(s)
            try:
                js = nc.jetstream(timeout=5)
                hosts, _ = await snapshot(js, s)
                if host not in hosts:
                    raise click.ClickException(f"no host {host!r} in the fleet")
                if hosts[host]["status"] == "up":
                    raise click.ClickException(
                        f"{host} is up (its heartbeat is there): stop its daemon first"
                    )
                sessions_kv = await js.key_value(s.sessions_bucket)
                hosts_kv = await js.key_value(s.hosts_bucket)
                keys = await nats_io.host_keys(sessions_kv, host)
                for key in keys:
                    await sessions_kv.purge(key)
                for key in (f"info.{host}", f"alive.{host}"):
                    await hosts_kv.purge(key)
                return len(keys)
            except click.ClickException:
                raise
            except Exception as e:
                raise click.ClickException(
                    f"cannot forget {host}: {e or type(e).__name__} (admin rights needed)"
                ) from None
            finally:
                await nc.close()

        n = _run(main())
        click.echo(f"forgot {host} and {n} session(s); its audit records and recordings stay")

    @fleet.command("permissions")
    @click.option("--host", "hosts", multiple=True, help="A host user's permissions (repeatable).")
    @click.option("--reader", is_flag=True, help="A read-only user's permissions.")
    @click.option(
        "--client-of",
        "reaches",
        multiple=True,
        help="A transport client's permissions, to reach this host only (repeatable).",
    )
    def permissions_cmd(hosts: tuple[str, ...], reader: bool, reaches: tuple[str, ...]) -> None:
        """Print the NATS permissions of host users, a reader and/or a client of
        some hosts (tachi --host nats://SERVER/HOST), as JSON (the documented
        layout: docs/fleet.md, Security)."""
        from tachi_nats import provision

        prefix = "tachi"
        with contextlib.suppress(click.ClickException):
            prefix = _settings().prefix
        out: dict[str, Any] = {}
        for h in hosts:
            if not settings_mod.NAME.match(h):
                raise click.BadParameter(f"{h!r} is not a host name", param_hint="--host")
            out[h] = provision.host_permissions(prefix, h)
        if reader:
            out["reader"] = provision.reader_permissions(prefix)
        for h in reaches:
            if not settings_mod.NAME.match(h):
                raise click.BadParameter(f"{h!r} is not a host name", param_hint="--client-of")
        if reaches:
            out["client"] = provision.client_permissions(prefix, list(reaches))
        if not out:
            raise click.UsageError("give --host HOST (repeatable), --reader, --client-of HOST")
        click.echo(json.dumps(out, indent=2))

    @fleet.group("record")
    def record() -> None:
        """Recordings in the fleet's object store (also of hosts that are gone)."""

    @record.command("ls")
    @click.option("--host", help="Only this host's recordings.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def record_ls(host: str | None, as_json: bool) -> None:
        """List the recordings in the object store: HOST/ID, session, size, times."""
        from tachi_nats.recordings import list_recordings

        s = _settings()

        async def main() -> list[dict[str, Any]]:
            nc = await _open(s)
            try:
                return await list_recordings(nc.jetstream(timeout=5), s)
            finally:
                await nc.close()

        recs = [r for r in _run(main()) if host is None or r["host"] == host]
        if as_json:
            click.echo(json.dumps(recs, indent=2))
            return
        if not recs:
            click.echo("no recordings in the fleet", err=True)
            return
        from tachi.cli.output import table

        table(
            ["RECORDING", "SESSION", "SIZE", "STOPPED", "UPLOADED"],
            [
                [r["name"], r["session"] or "-", r["size"], r["stopped"] or "-", r["uploaded"]]
                for r in recs
            ],
        )

    @record.command("export")
    @click.argument("name", metavar="HOST/ID")
    @click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
        required=True,
        help="The file to write, or - for stdout.",
    )
    def record_export(name: str, output: Path) -> None:
        """Write recording HOST/ID from the object store to a file or stdout, checked
        against the SHA-256 of the host's record.stop audit record."""
        s = _settings()
        to_stdout = str(output) == "-"
        part = _fetch_recording(s, name, None if to_stdout else output.parent)
        try:
            if to_stdout:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
                sys.stdout.buffer.flush()
            else:
                size = part.stat().st_size
                os.replace(part, output)
                click.echo(f"wrote {output} ({size} bytes)", err=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    @record.command("play")
    @click.argument("name", metavar="HOST/ID")
    @click.option("--speed", type=click.FloatRange(min=0.01), default=1.0, show_default=True)
    @click.option(
        "--idle-limit", type=click.FloatRange(min=0), help="Cap pauses at this many seconds."
    )
    def record_play(name: str, speed: float, idle_limit: float | None) -> None:
        """Play recording HOST/ID from the object store in this terminal; Ctrl-C stops."""
        from tachi.playback import load_cast, play_events

        s = _settings()
        part = _fetch_recording(s, name, None)
        try:
            header, events = load_cast(part)
        finally:
            part.unlink()
        out = sys.stdout.buffer
        try:
            play_events(header, events, out, speed=speed, idle_limit=idle_limit)
        except KeyboardInterrupt:
            click.echo("[playback interrupted]", err=True)
            sys.exit(130)
        finally:
            with contextlib.suppress(OSError):
                out.write(b"\x1b[0m\x1b[?25h\x1b[?1049l\r\n")
                out.flush()
        click.echo("[playback finished]", err=True)


def _fetch_recording(s: settings_mod.FleetSettings, name: str, directory: Path | None) -> Path:
    """Recording ``name`` from the object store in a new file in ``directory`` (a
    temporary one if ``None``), checked; the file is removed again on any error."""
    import tempfile

    from tachi_nats.recordings import NotInFleet, fetch

    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tachi-fleet-", suffix=".cast.part")
    part = Path(tmp)

    async def main() -> None:
        nc = await _open(s)
        try:
            with os.fdopen(fd, "wb") as f:
                await fetch(nc.jetstream(timeout=10), s, name, f)
        finally:
            await nc.close()

    try:
        _run(main())
    except NotInFleet as e:
        part.unlink()
        raise click.ClickException(str(e)) from None
    except BaseException:
        part.unlink()
        raise
    return part


def _server_dir() -> Path:
    from tachi.paths import state_dir

    return state_dir() / "fleet" / "nats-server"


def _since(since: str | None) -> int | None:
    if not since:
        return None
    from tachi.gotime import now_ns, parse_duration, parse_rfc3339

    try:
        return parse_rfc3339(since)
    except ValueError:
        try:
            return now_ns() - parse_duration(since)
        except ValueError:
            raise click.BadParameter(
                f"{since!r} is neither an RFC 3339 time nor a duration", param_hint="--since"
            ) from None


async def _direct(
    js: Any, s: settings_mod.FleetSettings, kind: str, filters: dict[str, str | None]
) -> bytes:
    """What the daemon's mirror would send for ``kind``, read from NATS here."""
    _, alive, entries = await read_registry(js, s)
    selected = view.select(entries, set(alive), filters)
    return view.json_lines(selected) if kind == "json" else view.dumps(view.rows(selected))


def _print_payload(kind: str, data: bytes) -> None:
    """Print ``fleet ls``: the JSON array one session per line (indented at a
    terminal, for a person), or the table."""
    if kind == "json":
        if sys.stdout.isatty():
            click.echo(json.dumps(json.loads(data), indent=2))
        else:
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        return
    rows = json.loads(data)
    if not rows:
        click.echo("no live sessions in the fleet", err=True)
        return
    from tachi.cli.output import ago, table

    for row in rows:
        row[8] = ago(row[8])
    table(view.HEADERS, rows)


def _redraw(kind: str, data: bytes) -> None:
    if sys.stdout.isatty():
        click.echo("\x1b[H\x1b[2J", nl=False)
    _print_payload(kind, data)


def _watch_daemon(kind: str, filters: dict[str, str | None]) -> bool:
    """``fleet ls --watch`` through the daemon: asked every second, redrawn when
    its mirror changed (or a host's status did). ``False`` when no daemon with
    ``[fleet]`` answers at first (the caller then watches NATS itself)."""
    import time

    from tachi.errors import TachiError

    try:
        client = _daemon_client()
        reply, data = _ask(client, kind, filters)
    except (TachiError, OSError):
        return False
    try:
        with client:
            while True:
                if data is not None:
                    _redraw(kind, data)
                time.sleep(1.0)
                reply, data = _ask(client, kind, filters, reply.get("etag"))
    except KeyboardInterrupt:
        sys.exit(130)
    except (TachiError, OSError) as e:
        raise click.ClickException(f"the daemon stopped answering: {e}") from None


async def _watch(
    js: Any, s: settings_mod.FleetSettings, kind: str, filters: dict[str, str | None]
) -> None:
    """Redraw on every registry change, and at least every 2 s (a heartbeat that
    expires says nothing)."""
    sessions_kv = await js.key_value(s.sessions_bucket)
    hosts_kv = await js.key_value(s.hosts_bucket)
    watchers = [await sessions_kv.watchall(), await hosts_kv.watchall()]
    changed = asyncio.Event()

    async def pump(w: Any) -> None:
        while True:
            try:
                await w.updates(timeout=3600)
            except Exception:
                continue
            changed.set()

    pumps = [asyncio.create_task(pump(w)) for w in watchers]
    last = None
    try:
        while True:
            data = await _direct(js, s, kind, filters)
            if data != last:
                _redraw(kind, data)
                last = data
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), 2.0)
                await asyncio.sleep(0.1)  # a burst of changes: one redraw
            except TimeoutError:
                pass
    finally:
        for p in pumps:
            p.cancel()
        for w in watchers:
            await w.stop()


async def _audit_records(
    js: Any, s: settings_mod.FleetSettings, host: str | None
) -> list[dict[str, Any]]:
    """Every record in the stream (of ``host``), each with ``host``, by time."""
    from nats.js.errors import NotFoundError

    try:
        subjects = await nats_io.stream_subjects(js, s.audit_stream, s.audit_subject(host or "*"))
    except NotFoundError:
        return []
    records = []
    for subject in sorted(subjects):
        name = subject.rsplit(".", 1)[1]
        for msg in await nats_io.read_subject(js, s.audit_stream, subject):
            record = json.loads(msg.data)
            record["host"] = name
            records.append(record)
    records.sort(key=lambda r: (r["time"], r["host"], r["seq"]))
    return records


async def _verify(
    js: Any, s: settings_mod.FleetSettings, host: str | None
) -> list[tuple[str, bool, str]]:
    """(host, ok, what) for each host with records in the stream: its chain walked
    as `tachi audit verify` walks the file, its checkpoints checked against the
    public key the host published in the registry."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from nats.js.errors import NotFoundError

    from tachi import audit

    try:
        subjects = await nats_io.stream_subjects(js, s.audit_stream, s.audit_subject(host or "*"))
    except NotFoundError:
        return []
    hosts, _ = await snapshot(js, s)
    out = []
    for subject in sorted(subjects):
        name = subject.rsplit(".", 1)[1]
        lines = [
            bytes(m.data) + b"\n" for m in await nats_io.read_subject(js, s.audit_stream, subject)
        ]
        cps = [
            bytes(m.data)
            for m in await nats_io.read_subject(js, s.audit_stream, s.checkpoint_subject(name))
        ]
        key_b64 = (hosts.get(name) or {}).get("auditPublicKey") or ""
        signed: dict[int, tuple[str, int]] = {}
        problem = ""
        if cps and not key_b64:
            problem = "no checkpoint public key for this host in the registry"
        elif cps:
            anchor = Ed25519PublicKey.from_public_bytes(base64.b64decode(key_b64))
            for number, raw in enumerate(cps, 1):
                bad = audit._checkpoint_problem(raw, anchor, key_b64, "the registry's key")
                if bad is not None:
                    problem = f"checkpoint {number}: {bad}"
                    break
                obj = json.loads(raw)
                signed[obj["seq"]] = (obj["hash"], number)
        count, _first_bad, chain_problem = audit._walk_chain(lines, signed)
        if chain_problem:
            out.append((name, False, chain_problem))
        elif problem:
            out.append((name, False, problem))
        elif signed and max(signed) > count:
            out.append(
                (
                    name,
                    False,
                    f"record {count + 1}: missing, but a checkpoint signs record"
                    f" {max(signed)} (records lost?)",
                )
            )
        else:
            out.append((name, True, f"{count} records, {len(signed)} checkpoints"))
    return out
