"""``tachi gateway --listen ADDR``: one web page for the fleet.

The page lists every host and its sessions live from the registry (NATS KV,
pushed to the browser on every change) and opens any session in the browser
terminal of the WebSocket plugin (its static pages, unchanged) through NATS:
the browser speaks tachi frames over a WebSocket to the gateway, which opens a
virtual connection to the session's host (``tachi_nats.relay_client``: the
same as ``tachi --host nats://…``) and passes the frames on.

Who sees what:

- the list needs the gateway's key (random, printed once with the page's URL,
  in the URL fragment): it shows what ``tachi fleet ls`` shows;
- a terminal needs a token of that session's host in the browser's hello, as
  ever: the gateway authenticates nobody itself and holds no token; each
  daemon checks the hello (its token, its roles, its audit);
- frames are encrypted between the gateway and the daemon (NATS sees
  ciphertext); the gateway, like any client, sees the terminal in the clear.
  The daemon's transport key is pinned to the fingerprint its host publishes
  in the registry (``transportKey`` of ``info.HOST``, writable by that host's
  NATS user only): a daemon, or anything in the middle, answering with
  another key is refused;
- with the key, the page also lists the recordings of the object store (of
  hosts that are gone too) and plays one, checked against the SHA-256 of its
  host's ``record.stop`` audit record as ``tachi fleet record export`` checks
  it; and it reads the audit stream (``tachi fleet audit``), filtered by host,
  session and user, newest first, PAGE records at a time.

Everything peers put in the registry, the audit stream or a recording is data:
the page writes it with ``textContent`` only, never as HTML.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import socket
import ssl
from typing import Any

from tachi import protocol

log = logging.getLogger("tachi.gateway")
#: How often the list is pushed even without a registry change (a heartbeat
#: that expires changes nothing the watchers see).
REFRESH_SECONDS = 2.0
#: Audit records per page of the console (the newest first; "older" pages on).
PAGE = 500
#: The largest recording the page plays (it is sent to the browser whole).
PLAY_LIMIT = 64 << 20
#: How long a read of the whole audit stream is reused (the recordings list
#: and the audit view both read it; a page asks for both at once).
AUDIT_CACHE_SECONDS = 2.0
#: The longest filter value the audit view takes.
FILTER_LIMIT = 256


def _static(name: str) -> bytes | None:
    """A file of this plugin's static/ directory (by a plain name only)."""
    from importlib import resources

    if "/" in name or name in ("", ".", ".."):
        return None
    node = resources.files("tachi_nats") / "static" / name
    return node.read_bytes() if node.is_file() else None


class Gateway:
    """The web console: HTTP pages, ``/fleet`` (the live list) and ``/ws``
    (frames to a session's host through NATS)."""

    def __init__(self, settings: Any, host: str, port: int, key: str) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.key = key
        self.hosts: dict[str, Any] = {}
        self.sessions: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._version = 0
        self._server: Any = None
        self.ssl: ssl.SSLContext | None = None
        self.js: Any = None
        self._audit_cache: tuple[float, list[dict[str, Any]]] | None = None
        self._audit_lock = asyncio.Lock()

    # -- running -------------------------------------------------------------------
    async def run(self, ready: Any = None) -> None:
        from websockets.asyncio.server import serve

        from tachi_nats import nats_io

        nc = await nats_io.connect(
            self.settings,
            connect_timeout=3,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
        )
        js = nc.jetstream(timeout=10)
        self.js = js
        watcher = asyncio.create_task(self._watch(js))
        try:
            async with serve(
                self._serve,
                self.host,
                self.port,
                ssl=self.ssl,
                process_request=self._http,
                max_size=protocol.MAX_PAYLOAD + protocol.HEADER.size,
            ) as server:
                self._server = server
                self.port = server.sockets[0].getsockname()[1]
                if ready is not None:
                    ready(self)
                await asyncio.Future()
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
            with contextlib.suppress(Exception):
                await nc.close()

    async def _watch(self, js: Any) -> None:
        """Keep ``hosts``/``sessions`` current: a snapshot on every registry change
        (after a 50 ms pause, so a burst is one), and every REFRESH_SECONDS."""
        from tachi_nats import cli as fleet_cli

        changed = asyncio.Event()
        pumps: list[asyncio.Task[None]] = []

        async def pump(kv_name: str) -> None:
            while True:
                try:
                    kv = await js.key_value(kv_name)
                    w = await kv.watchall()
                    while True:
                        await w.updates(timeout=3600)
                        changed.set()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    await asyncio.sleep(1)

        for name in (self.settings.sessions_bucket, self.settings.hosts_bucket):
            pumps.append(asyncio.create_task(pump(name)))
        try:
            while True:
                try:
                    hosts, sessions = await fleet_cli.snapshot(js, self.settings)
                    if (hosts, sessions) != (self.hosts, self.sessions):
                        self.hosts, self.sessions = hosts, sessions
                        self._version += 1
                        self._changed.set()
                        self._changed = asyncio.Event()
                except Exception as exc:
                    log.debug("gateway: registry snapshot failed: %s", exc)
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), REFRESH_SECONDS)
                    await asyncio.sleep(0.05)
        finally:
            for p in pumps:
                p.cancel()

    # -- HTTP ------------------------------------------------------------------------
    def origin_allowed(self, origin: str | None, host_header: str | None) -> bool:
        """A WebSocket from a page of this gateway only (or a program: no Origin)."""
        if origin is None:
            return True
        scheme = "https" if self.ssl is not None else "http"
        return host_header is not None and origin == f"{scheme}://{host_header}"

    async def _http(self, ws: Any, request: Any) -> Any:
        if not self.origin_allowed(request.headers.get("Origin"), request.headers.get("Host")):
            return ws.respond(403, "Origin not allowed\n")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        from tachi_websocket import web

        path = request.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            return web._response(200, _static("gateway.html") or b"", web._TYPES[".html"])
        if path == "/static/gateway.js":
            return web._response(200, _static("gateway.js") or b"", web._TYPES[".js"])
        parts = path.strip("/").split("/")
        if parts[0] == "s" and len(parts) == 2:  # the browser terminal, as served by a daemon
            return web._response(200, web._asset("terminal.html") or b"", web._TYPES[".html"])
        if parts[0] == "static":
            return await web.respond(None, None, request) or ws.respond(404, "Not found\n")
        return ws.respond(404, "Not found\n")

    # -- WebSockets ------------------------------------------------------------------
    async def _serve(self, ws: Any) -> None:
        path = ws.request.path.split("?", 1)[0]
        if path == "/fleet":
            await self._fleet(ws)
        elif path == "/ws":
            await self._terminal(ws)
        else:
            await ws.close(1008, "no such endpoint")

    async def _fleet(self, ws: Any) -> None:
        """The live list: the first message must be ``{"key": …}``; then one JSON
        document ``{"hosts": […], "sessions": […]}`` per change. Meanwhile the
        page may ask (``{"id": N, "op": …}``, answered by ``{"reply": N, "ok":
        …}``): ``recordings``, ``play`` (``name`` = ``HOST/ID``) and ``audit``
        (``host``, ``session``, ``user``, ``before``)."""
        try:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            given = str(hello.get("key", "")) if isinstance(hello, dict) else ""
        except (TimeoutError, ValueError, Exception):
            return
        if not hmac.compare_digest(given.encode(), self.key.encode()):
            await ws.send(json.dumps({"error": "wrong gateway key"}))
            await ws.close(1008, "wrong gateway key")
            return
        from websockets.exceptions import ConnectionClosed

        async def push() -> None:
            sent = -1
            while True:
                changed = self._changed
                if sent != self._version:
                    sent = self._version
                    hosts = sorted(self.hosts.values(), key=lambda h: h["host"])
                    await ws.send(json.dumps({"hosts": hosts, "sessions": self.sessions}))
                await changed.wait()

        pusher = asyncio.create_task(push())
        try:
            async for message in ws:
                reply = await self._answer(message)
                if reply is not None:
                    await ws.send(json.dumps(reply))
        except ConnectionClosed:
            pass
        finally:
            pusher.cancel()
            with contextlib.suppress(BaseException):
                await pusher

    async def _answer(self, message: Any) -> dict[str, Any] | None:
        """The reply to one request of the page; a bad request gets an error
        reply, never an exception (the list goes on)."""
        try:
            request = json.loads(message)
        except (TypeError, ValueError):
            return None
        if not isinstance(request, dict):
            return None
        rid = request.get("id")
        op = request.get("op")
        try:
            if op == "recordings":
                result: Any = await self.recordings()
            elif op == "play":
                result = await self.play(str(request.get("name", "")))
            elif op == "audit":
                result = await self.audit(
                    host=_filter(request.get("host")),
                    session=_filter(request.get("session")),
                    user=_filter(request.get("user")),
                    before=request.get("before"),
                )
            else:
                raise ValueError(f"unknown request {str(op)[:40]!r}")
        except (ValueError, LookupError) as exc:
            return {"reply": rid, "ok": False, "error": str(exc)}
        except Exception as exc:
            log.debug("gateway: %s failed: %r", op, exc)
            return {"reply": rid, "ok": False, "error": f"{op} failed: {exc or type(exc).__name__}"}
        return {"reply": rid, "ok": True, "result": result}

    # -- recordings and audit (the page's requests) ---------------------------------
    async def audit_records(self) -> list[dict[str, Any]]:
        """Every host's audit records from the stream, oldest first (as
        ``tachi fleet audit --json``), read at most every AUDIT_CACHE_SECONDS."""
        from tachi_nats import cli as fleet_cli

        async with self._audit_lock:
            now = asyncio.get_running_loop().time()
            if self._audit_cache is None or now - self._audit_cache[0] > AUDIT_CACHE_SECONDS:
                records = await fleet_cli._audit_records(self.js, self.settings, None)
                self._audit_cache = (asyncio.get_running_loop().time(), records)
            return self._audit_cache[1]

    async def recordings(self) -> list[dict[str, Any]]:
        """The object store's recordings (``tachi fleet record ls --json``), each
        with ``started`` and ``duration`` (seconds) from its host's audited
        ``record.start``/``record.stop`` where the stream has them; newest first."""
        from tachi.gotime import parse_rfc3339
        from tachi_nats.recordings import list_recordings

        recs = await list_recordings(self.js, self.settings)
        times: dict[tuple[str, str], dict[str, str]] = {}
        for r in await self.audit_records():
            details = r.get("details")
            if not isinstance(details, dict) or r.get("action") not in (
                "record.start",
                "record.stop",
            ):
                continue
            key = (str(r.get("host")), str(details.get("recording")))
            times.setdefault(key, {}).setdefault(str(r["action"]), str(r.get("time")))
        for rec in recs:
            seen = times.get((rec["host"], rec["id"]), {})
            rec["started"] = seen.get("record.start")
            rec["duration"] = None
            with contextlib.suppress(ValueError, TypeError):
                stopped = rec["stopped"] or seen.get("record.stop")
                start_ns, stop_ns = parse_rfc3339(rec["started"]), parse_rfc3339(stopped)
                rec["duration"] = max(0, stop_ns - start_ns) / 1e9
        recs.sort(key=lambda r: str(r.get("started") or r.get("stopped") or ""), reverse=True)
        return recs

    async def play(self, name: str) -> dict[str, Any]:
        """Recording ``name`` (``HOST/ID``) as text for the page's player, once it
        hashes to the SHA-256 of its host's ``record.stop`` audit record.
        ``LookupError`` (the page shows the message) when it is missing, too big
        or fails that check: a replaced object is never played."""
        import io

        from nats.js.errors import BucketNotFoundError, ObjectNotFoundError

        from tachi_nats.recordings import NotInFleet, fetch

        if len(name) > FILTER_LIMIT or name.count("/") != 1:
            raise LookupError(f"{name[:80]!r}: give HOST/RECORDING_ID")
        try:
            obs = await self.js.object_store(self.settings.recordings_bucket)
            info = await obs.get_info(name)
        except (BucketNotFoundError, ObjectNotFoundError):
            raise LookupError(f"no recording {name} in the fleet's object store") from None
        if (info.size or 0) > PLAY_LIMIT:
            raise LookupError(
                f"{name} is {info.size} bytes, more than the console plays"
                f" ({PLAY_LIMIT >> 20} MiB): use 'tachi fleet record export'"
            )
        out = io.BytesIO()
        try:
            size = await fetch(self.js, self.settings, name, out)
        except NotInFleet as exc:
            log.warning("gateway: refused to play %s: %s", name, exc)
            raise LookupError(f"not played: {exc}") from None
        return {"name": name, "size": size, "cast": out.getvalue().decode("utf-8", "replace")}

    async def audit(
        self,
        *,
        host: str | None = None,
        session: str | None = None,
        user: str | None = None,
        before: Any = None,
    ) -> dict[str, Any]:
        """The newest PAGE records matching every filter given (``session``: an
        id, or a name a ``session.create`` record gave; ``user``: the
        principal), older than the ``before`` cursor (``[time, host, seq]`` of
        the last record of the previous page) if given. ``matched`` counts all
        that match; ``more`` says older pages exist."""
        cursor: tuple[str, str, int] | None = None
        if before is not None:
            if not (
                isinstance(before, list)
                and len(before) == 3
                and isinstance(before[0], str)
                and isinstance(before[1], str)
                and isinstance(before[2], int)
            ):
                raise ValueError("before: [time, host, seq] of the last record shown")
            cursor = (before[0], before[1], before[2])
        records = await self.audit_records()
        ids: set[str] = set()
        if session is not None:
            ids.add(session)
            for r in records:
                details = r.get("details")
                if (
                    r.get("action") == "session.create"
                    and isinstance(details, dict)
                    and details.get("name") == session
                    and r.get("session")
                ):
                    ids.add(str(r["session"]))
        matching = [
            r
            for r in records
            if (host is None or r.get("host") == host)
            and (session is None or r.get("session") in ids)
            and (user is None or _principal_matches(r.get("principal"), user))
        ]
        older = [r for r in matching if cursor is None or _key(r) < cursor]
        page = older[::-1][:PAGE]
        return {
            "records": page,
            "matched": len(matching),
            "more": len(older) > len(page),
            "limit": PAGE,
        }

    def host_of(self, session_id: str) -> str | None:
        """The host whose registry entry has ``session_id`` (by id or name), if
        exactly one has."""
        hosts = {
            d.get("host")
            for d in self.sessions
            if session_id in (d.get("id"), d.get("name")) and d.get("host")
        }
        return hosts.pop() if len(hosts) == 1 else None

    def pinned_key(self, host: str) -> str:
        """The transport key fingerprint ``host`` publishes in the registry, which
        its daemon must present. Raises ``PermissionDenied`` when it publishes
        none (a tachi from before keys were published): the gateway does not
        fall back to trusting whatever key answers."""
        from tachi.errors import PermissionDenied

        fingerprint = (self.hosts.get(host) or {}).get("transportKey")
        if not isinstance(fingerprint, str) or not fingerprint.startswith("SHA256:"):
            raise PermissionDenied(
                f"{host} publishes no transport key in the registry (a tachi older than"
                " the gateway?), so the gateway cannot check whom it reaches"
            )
        return fingerprint

    def open_host(self, host: str) -> socket.socket:
        """A virtual connection to ``host``'s daemon through NATS with its
        transport key pinned (``pinned_key``); blocking. Raises ``PermissionDenied``
        when the daemon presents another key, ``DaemonUnavailable`` when it
        cannot be reached."""
        from tachi.errors import PermissionDenied
        from tachi_nats.relay_client import fleet_url, open_connection

        fingerprint = self.pinned_key(host)
        try:
            return open_connection(fleet_url(self.settings, host), {"fingerprint": fingerprint})
        except PermissionDenied as exc:
            log.warning("gateway: %s refused: %s", host, exc)
            raise PermissionDenied(
                f"{host}: {exc.message} (the registry publishes {fingerprint} for it)"
            ) from None

    async def _terminal(self, ws: Any) -> None:
        """Frames to the host of the session the first request names. The
        browser waits for its hello's answer before it names a session, so the
        gateway answers the hello provisionally and hands it to the daemon with
        that request: the daemon's refusal then answers the request (and ends
        the connection), its acceptance is not passed on twice."""
        try:
            hello_msg = await asyncio.wait_for(ws.recv(), 30)
            hello = _control_of(hello_msg)
            if hello is None or hello.get("op") != "hello":
                return
            provisional = {
                "version": protocol.VERSION,
                "server": "tachi gateway (the host's daemon checks the token at the next request)",
                "principal": None,
            }
            await ws.send(
                protocol.encode_control({"id": hello.get("id"), "ok": True, "result": provisional})
            )
            request_msg = await asyncio.wait_for(ws.recv(), 30)
            request = _control_of(request_msg)
        except Exception:
            return
        if request is None:
            return
        args = request.get("args") or {}
        host = self.host_of(str(args.get("session", ""))) if isinstance(args, dict) else None

        async def fail(error: dict[str, Any], reason: str) -> None:
            reply = {"id": request.get("id"), "ok": False, "error": error}
            with contextlib.suppress(Exception):
                await ws.send(protocol.encode_control(reply))
                await ws.close(1008, reason[:120])

        if host is None:
            message = "no host of the fleet has this session (or more than one)"
            await fail({"code": "not_found", "message": message}, message)
            return
        from tachi.errors import TachiError

        loop = asyncio.get_running_loop()
        try:
            sock = await loop.run_in_executor(None, self.open_host, host)
        except TachiError as exc:
            await fail(exc.to_json(), exc.message)
            return
        except Exception as exc:
            await fail({"code": "unavailable", "message": f"cannot reach {host}: {exc}"}, "")
            return
        sock.setblocking(False)
        try:
            await loop.sock_sendall(sock, hello_msg)
            decoder = protocol.FrameDecoder(max_payload=protocol.MAX_PAYLOAD)
            answer: dict[str, Any] | None = None
            rest: list[Any] = []
            while answer is None:
                data = await asyncio.wait_for(loop.sock_recv(sock, 256 * 1024), 30)
                if not data:
                    break
                for frame in decoder.feed(data):
                    control = (
                        protocol.decode_control(frame.payload)
                        if frame.channel == protocol.CONTROL
                        else None
                    )
                    if (
                        answer is None
                        and control is not None
                        and control.get("id") == hello.get("id")
                    ):
                        answer = control
                    else:
                        rest.append(frame)
            if answer is None or not answer.get("ok"):
                error = (answer or {}).get("error") or {
                    "code": "unavailable",
                    "message": f"{host} closed the connection",
                }
                await fail(error, str(error.get("message", "")))
                return
            for frame in rest:
                await ws.send(protocol.encode(frame.channel, frame.payload))
            await loop.sock_sendall(sock, request_msg)
            await _bridge(ws, sock, decoder)
        except Exception as exc:
            log.debug("gateway: terminal connection to %s ended: %s", host, exc)
        finally:
            sock.close()


def _filter(value: Any) -> str | None:
    """A filter of the audit view: ``None`` (none) or a non-empty string."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > FILTER_LIMIT:
        raise ValueError(f"a filter is a string of at most {FILTER_LIMIT} characters")
    return value


def _key(record: dict[str, Any]) -> tuple[str, str, int]:
    """A record's place in the stream's order (as ``tachi fleet audit`` sorts)."""
    seq = record.get("seq")
    return (str(record.get("time")), str(record.get("host")), seq if isinstance(seq, int) else 0)


def _principal_matches(principal: Any, user: str) -> bool:
    """``user`` names the principal whole, or its name before a ``@`` or after
    a ``KIND:`` prefix (``alice`` finds ``alice`` and ``user:alice``)."""
    if not isinstance(principal, str):
        return False
    return user in (principal, principal.split("@", 1)[0], principal.split(":", 1)[-1])


def _control_of(message: Any) -> dict[str, Any] | None:
    """The control message a WebSocket message carries (one frame), else ``None``."""
    if not isinstance(message, bytes):
        return None
    try:
        frames = protocol.FrameDecoder().feed(message)
        if len(frames) != 1 or frames[0].channel != protocol.CONTROL:
            return None
        control = protocol.decode_control(frames[0].payload)
    except Exception:
        return None
    return control if isinstance(control, dict) else None


async def _bridge(ws: Any, sock: socket.socket, decoder: Any) -> None:
    """Frames both ways between the browser's WebSocket and the NATS bridge's
    socket (one frame per WebSocket message), until either side ends."""
    from websockets.exceptions import ConnectionClosed

    loop = asyncio.get_running_loop()

    async def down() -> None:
        while True:
            data = await loop.sock_recv(sock, 256 * 1024)
            if not data:
                return
            for frame in decoder.feed(data):
                await ws.send(protocol.encode(frame.channel, frame.payload))

    async def up() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                if isinstance(message, bytes):
                    await loop.sock_sendall(sock, message)

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await ws.close()


def register(cli: Any) -> None:
    """Add ``tachi gateway``."""
    import click

    @cli.command("gateway")
    @click.option(
        "--listen",
        default="127.0.0.1:7690",
        show_default=True,
        help="HOST:PORT for the web console (TLS with --tls-cert off loopback).",
    )
    @click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False))
    @click.option("--tls-key", type=click.Path(exists=True, dir_okay=False))
    def gateway_cmd(listen: str, tls_cert: str | None, tls_key: str | None) -> None:
        """A web console for the fleet: every host's sessions live, each one
        openable in the browser terminal through NATS (docs/fleet.md)."""
        import ipaddress

        from tachi_nats.cli import _settings

        settings = _settings()
        host, _, port_text = listen.rpartition(":")
        host = host.strip("[]")
        if not host or not port_text.isdigit():
            raise click.UsageError(f"--listen {listen!r}: give HOST:PORT")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback and not tls_cert:
            raise click.UsageError(
                "off loopback the console needs TLS: give --tls-cert and --tls-key"
            )
        gateway = Gateway(settings, host, int(port_text), secrets.token_urlsafe(24))
        if tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls_cert, tls_key or tls_cert)
            gateway.ssl = ctx

        def ready(g: Gateway) -> None:
            scheme = "https" if g.ssl else "http"
            shown = f"[{g.host}]" if ":" in g.host else g.host
            click.echo(f"{scheme}://{shown}:{g.port}/#key={g.key}", err=False)
            click.echo("(the key is in the fragment: keep the link private)", err=True)

        try:
            asyncio.run(gateway.run(ready))
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {listen}: {exc.strerror or exc}"
            ) from None
