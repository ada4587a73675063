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
        js = nc.jetstream(timeout=5)
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
        document ``{"hosts": […], "sessions": […]}`` per change."""
        try:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            given = str(hello.get("key", "")) if isinstance(hello, dict) else ""
        except (TimeoutError, ValueError, Exception):
            return
        if not hmac.compare_digest(given.encode(), self.key.encode()):
            await ws.send(json.dumps({"error": "wrong gateway key"}))
            await ws.close(1008, "wrong gateway key")
            return
        sent = -1
        while True:
            changed = self._changed
            if sent != self._version:
                sent = self._version
                hosts = sorted(self.hosts.values(), key=lambda h: h["host"])
                await ws.send(json.dumps({"hosts": hosts, "sessions": self.sessions}))
            await changed.wait()

    def host_of(self, session_id: str) -> str | None:
        """The host whose registry entry has ``session_id`` (by id or name), if
        exactly one has."""
        hosts = {
            d.get("host")
            for d in self.sessions
            if session_id in (d.get("id"), d.get("name")) and d.get("host")
        }
        return hosts.pop() if len(hosts) == 1 else None

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
        from tachi_nats.relay_client import fleet_url, open_connection

        loop = asyncio.get_running_loop()
        try:
            sock = await loop.run_in_executor(
                None, open_connection, fleet_url(self.settings, host), {}
            )
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
