"""The fleet agent: one thread with its own asyncio loop that keeps this host's
entries in the registry and ships its audit log to the stream.

Why a thread and not tasks on the daemon's loop: nats-py does its (re)connects,
TLS handshakes, JSON and PubAck bookkeeping on the loop it runs on. On its own
loop none of that, nor a slow or dead NATS, can delay a keystroke. The daemon's
side only hands over small values under a lock and wakes the loop
(``call_soon_threadsafe``): a few microseconds per hook call, never a wait.

Bounded by construction: the registry keeps one pending document per session
(a newer state replaces the older), and the audit shipper keeps no queue at all:
it reads the audit log (the source of truth) from its outbox position, so an
outage of any length costs no memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from tachi_nats import nats_io
from tachi_nats.settings import HEARTBEAT_EVERY, HEARTBEAT_TTL, FleetSettings

log = logging.getLogger("tachi.fleet")

#: Records published before waiting for their acknowledgements.
BATCH = 256
#: How often the shipper looks at the audit log for new records. Polled, not
#: woken per record: a wake-up per record (through ``tachi_audit_event``) cost
#: every audited request a copy and two thread hand-offs, and the shipper then
#: took the GIL just as the keystrokes after a ``session.input`` record came
#: (echo p99 1.6x with [fleet] on). A record reaches the stream within this.
AUDIT_POLL = 0.5
_DELETE = None


class FleetAgent:
    """Publishes this host's sessions, heartbeat and audit records to NATS."""

    def __init__(
        self,
        settings: FleetSettings,
        *,
        state_dir: Path,
        audit_dir: Path,
        public_key: str,
        version: str,
        recordings_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.host = settings.host
        self.audit_path = audit_dir / "audit.jsonl"
        self.checkpoints_path = audit_dir / "audit.checkpoints.jsonl"
        self.outbox_path = state_dir / "fleet" / "outbox.json"
        self.public_key = public_key
        self.version = version
        #: The NATS transport's long-term key (``tachi_nats.transport``), whose
        #: fingerprint the registry publishes so a client (the gateway) can pin it.
        self.transport_key_path = state_dir / "fleet" / "transport.key"
        self._lock = threading.Lock()
        #: The latest JSON of every live session, for a full re-publish after a reconnect.
        self._known: dict[str, bytes] = {}
        #: Session id -> JSON to put, or _DELETE.
        self._pending: dict[str, bytes | None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_registry: asyncio.Event | None = None
        self._wake_audit: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.connected = False
        #: The JetStream context while connected (the fleet mirror reads through it).
        self.js: Any = None
        #: Called on the agent's loop after a reconnect (what was pushed meanwhile is lost).
        self.on_reconnect: list[Any] = []
        self.shipped_seq = 0
        self.audit_halted: str | None = None
        self._started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._records = _Outbox(self, "records", self.audit_path, settings.audit_subject(self.host))
        self._checkpoints = _Outbox(
            self, "checkpoints", self.checkpoints_path, settings.checkpoint_subject(self.host)
        )
        from tachi_nats.recordings import Uploader

        self.uploads = Uploader(
            settings,
            state_dir=state_dir,
            audit_path=self.audit_path,
            recordings_dir=recordings_dir,
            shipped=lambda: self.shipped_seq,
        )
        #: Wake-ups handed to the loop and not run yet, by event: a burst of hook
        #: calls costs one call_soon_threadsafe (one write to the loop's self-pipe).
        self._wake_pending: set[str] = set()

    # -- called from the daemon (any thread) -------------------------------------
    def start(self) -> None:
        """Start the agent's thread; returns at once (connecting happens there)."""
        self._thread = threading.Thread(target=self._run, name="tachi-fleet", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def session_changed(self, session_id: str, document: bytes | None) -> None:
        """Publish ``document`` (the session's JSON) for ``session_id``, or remove it
        (``None``). Never blocks; the latest call wins."""
        with self._lock:
            if document is None:
                self._known.pop(session_id, None)
            else:
                if self._known.get(session_id) == document:
                    return
                self._known[session_id] = document
            self._pending[session_id] = document
        self._wake("_wake_registry")

    def known(self) -> dict[str, bytes]:
        with self._lock:
            return dict(self._known)

    def stop(self, timeout: float = 3.0) -> None:
        """Say goodbye (the heartbeat key goes at once), ship what can be shipped
        within ``timeout``, and end the thread."""
        if self._thread is None:
            return
        self._wake("_stopping")
        self._thread.join(timeout)

    def _wake(self, name: str) -> None:
        """Set the event ``name`` on the agent's loop, unless a wake-up of it is
        already on its way. Safe because the loop clears an event before it
        looks at the work: whatever was handed over before the pending wake-up
        runs is seen."""
        loop, event = self._loop, getattr(self, name)
        if loop is None or event is None or name in self._wake_pending:
            return
        self._wake_pending.add(name)
        try:
            loop.call_soon_threadsafe(self._fire, name, event)
        except RuntimeError:  # the loop has closed: nothing to wake
            self._wake_pending.discard(name)

    def _fire(self, name: str, event: asyncio.Event) -> None:
        self._wake_pending.discard(name)
        event.set()

    # -- the agent's own thread ----------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception:
            log.exception("fleet agent stopped")
        finally:
            self._loop = None
            loop.close()
            # Recordings finished since the last scan go into the upload queue on
            # disk now, so the next start uploads them even without its own scan.
            try:
                self.uploads.scan()
            except OSError as e:
                log.warning("fleet: cannot save the recording upload queue: %s", e)

    async def _main(self) -> None:
        self._wake_registry = asyncio.Event()
        self._wake_audit = asyncio.Event()
        self._stopping = asyncio.Event()
        self._ready.set()
        while not self._stopping.is_set():
            # With unlimited reconnects nats-py retries the first connect by itself
            # too (every reconnect_time_wait, reporting each failure to error_cb):
            # race it against stopping, so a daemon whose NATS never comes up still
            # stops at once.
            connecting = asyncio.ensure_future(
                nats_io.connect(
                    self.settings,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=self._nats_error,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                )
            )
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait([connecting, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(BaseException):
                    await connecting
                return
            stopping.cancel()
            try:
                nc = connecting.result()
            except Exception as e:  # a bad key, refused authorization: retry slowly
                await self._nats_error(e)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 5)
                continue
            self._reported = False
            log.info("fleet: connected to %s as host %s", nc.connected_url.netloc, self.host)
            try:
                await self._serve(nc)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 2)

    async def _nats_error(self, e: Exception) -> None:
        # Once per outage, not once per attempt: NATS may be down for hours.
        if not self.connected and not self._reported:
            self._reported = True
            log.warning(
                "fleet: cannot reach NATS at %s (%s); retrying in the background",
                ", ".join(self.settings.servers),
                e or type(e).__name__,
            )
        else:
            log.debug("fleet: NATS error: %s", e)

    async def _disconnected(self) -> None:
        if self.connected:
            log.warning("fleet: disconnected from NATS; the registry and audit catch up later")
            self._reported = True  # the reconnect attempts' errors say nothing new
        self.connected = False

    async def _reconnected(self) -> None:
        log.info("fleet: reconnected to NATS")
        self.connected = True
        self._resync = True
        self._resync_audit = True
        assert self._wake_registry is not None and self._wake_audit is not None
        self._wake_registry.set()
        self._wake_audit.set()
        for callback in list(self.on_reconnect):
            callback()

    async def _serve(self, nc: Any) -> None:
        """Keep the registry and the audit stream current over ``nc`` until stopping."""
        js = nc.jetstream(timeout=3)
        while not self._stopping.is_set():
            try:
                sessions, hosts = await nats_io.ensure_fleet(js, self.settings)
                break
            except Exception as e:
                log.warning(
                    "fleet: cannot set up the buckets and stream (%s); if this host's"
                    " NATS user may not create them, run 'tachi fleet init' as an admin",
                    e or type(e).__name__,
                )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 2)
        else:
            return
        self.connected = True
        self._resync = True
        self.js = js
        tasks = [
            asyncio.create_task(self._registry(js, sessions, hosts)),
            asyncio.create_task(self._heartbeat(js)),
            asyncio.create_task(self._audit(js)),
            asyncio.create_task(self.uploads.run(js)),
        ]
        try:
            await self._stopping.wait()
        finally:
            self.js = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Goodbye, bounded: ship what is left, then say we are gone at once
            # rather than when the heartbeat expires.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._final(js, sessions), 1.5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(hosts.delete(f"alive.{self.host}"), 1)

    async def _final(self, js: Any, sessions: Any) -> None:
        await self._flush_sessions(sessions)
        if self.audit_halted is None:
            await self._records.ship(js)
            await self._checkpoints.ship(js)

    # -- registry ------------------------------------------------------------------
    async def _registry(self, js: Any, sessions: Any, hosts: Any) -> None:
        assert self._wake_registry is not None
        while True:
            try:
                if self._resync:
                    self._resync = False
                    await self._publish_info(js, hosts)
                    await self._resync_sessions(sessions)
                await self._flush_sessions(sessions)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("fleet: registry update failed (%s); retrying", e)
                self._resync = True
                await asyncio.sleep(1)
                continue
            await self._wake_registry.wait()
            self._wake_registry.clear()

    async def _publish_info(self, js: Any, hosts: Any) -> None:
        info = {
            "host": self.host,
            "auditPublicKey": self.public_key,
            "version": self.version,
            "pid": os.getpid(),
            "startedAt": self._started,
        }
        fingerprint = await self._transport_fingerprint()
        if fingerprint:
            info["transportKey"] = fingerprint
        await hosts.put(f"info.{self.host}", nats_io.dumps(info))
        await self._beat(js)

    async def _transport_fingerprint(self) -> str | None:
        """``SHA256:…`` of the transport key this daemon answers connects with, or
        ``None`` when it serves no NATS transport (``serve = false``). The
        transport makes the key at its start, on the daemon's loop; this thread
        only reads it (making it here too could race the transport's O_EXCL
        create), waiting up to 5 s for it to appear."""
        from tachi_nats.transport import key_fingerprint, options_of

        if not options_of(self.settings)[0]:
            return None
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        for _ in range(50):
            try:
                raw = self.transport_key_path.read_bytes()
            except FileNotFoundError:
                await asyncio.sleep(0.1)
                continue
            except OSError as e:
                log.warning("fleet: cannot read the transport key: %s", e)
                return None
            try:
                public = X25519PrivateKey.from_private_bytes(raw).public_key()
            except ValueError:
                await asyncio.sleep(0.1)  # being written at this very moment
                continue
            return key_fingerprint(
                public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            )
        log.warning("fleet: no transport key at %s to publish", self.transport_key_path)
        return None

    async def _resync_sessions(self, sessions: Any) -> None:
        """After (re)connecting: publish every live session and remove this host's
        entries that are not live any more (closed while NATS or the daemon was away)."""
        with self._lock:
            known = dict(self._known)
            self._pending.update(known)
        for key in await nats_io.host_keys(sessions, self.host):
            if key.split(".", 1)[1] not in known:
                await sessions.delete(key)

    async def _flush_sessions(self, sessions: Any) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        try:
            for session_id, document in list(pending.items()):
                key = f"{self.host}.{session_id}"
                if document is None:
                    await sessions.delete(key)
                else:
                    await sessions.put(key, document)
                del pending[session_id]
        finally:
            if pending:  # put back what was not sent, unless something newer came
                with self._lock:
                    for session_id, document in pending.items():
                        self._pending.setdefault(session_id, document)

    async def _heartbeat(self, js: Any) -> None:
        while True:
            try:
                await self._beat(js)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("fleet: heartbeat failed: %s", e)
            await asyncio.sleep(HEARTBEAT_EVERY)

    async def _beat(self, js: Any) -> None:
        with self._lock:
            count = len(self._known)
        beat = {
            "host": self.host,
            "time": time.time(),
            "sessions": count,
            "auditShipped": self.shipped_seq,
            "auditHalted": self.audit_halted,
        }
        # A KV put with a per-message TTL: the server removes it if we stop beating.
        await js.publish(
            f"$KV.{self.settings.hosts_bucket}.alive.{self.host}",
            nats_io.dumps(beat),
            msg_ttl=HEARTBEAT_TTL,
        )

    # -- audit ---------------------------------------------------------------------
    async def _audit(self, js: Any) -> None:
        assert self._wake_audit is not None
        synced = False
        while True:
            try:
                if not synced or self._resync_audit:
                    self._resync_audit = False
                    await self._records.reconcile(js)
                    await self._checkpoints.reconcile(js)
                    synced = True
                # Records before checkpoints: a checkpoint never names a record the
                # stream does not have yet.
                await self._records.ship(js)
                await self._checkpoints.ship(js)
                self.uploads.kick.set()  # a record.stop may have reached the stream
            except asyncio.CancelledError:
                raise
            except _Halt as e:
                self.audit_halted = str(e)
                log.error("fleet: audit shipping stopped: %s", e)
                return
            except Exception as e:
                log.debug("fleet: audit shipping paused (%s); retrying", e)
                self._resync_audit = True
                await asyncio.sleep(1)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake_audit.wait(), AUDIT_POLL)
            self._wake_audit.clear()

    _resync = True
    _resync_audit = False
    _reported = False


class _Halt(Exception):
    """Shipping cannot go on without someone looking (the stream holds another chain)."""


class _Outbox:
    """Ships one append-only JSONL file (records or checkpoints) to one subject,
    from the position of the last acknowledged line, persisted in the state dir.

    Each line is published byte for byte with ``Nats-Msg-Id`` = its hash, so a
    re-send within the stream's duplicate window is dropped by the server; on
    every (re)connect the position is also checked against the last message the
    stream holds for the subject, so a re-send after any outage starts right
    after it: nothing lost, nothing twice.
    """

    def __init__(self, agent: FleetAgent, name: str, path: Path, subject: str) -> None:
        self.agent = agent
        self.name = name
        self.path = path
        self.subject = subject
        self.count, self.offset = self._load()

    # The outbox file holds both cursors: {"records": [count, offset], ...}.
    def _load(self) -> tuple[int, int]:
        try:
            data = json.loads(self.agent.outbox_path.read_text())
            count, offset = data[self.name]
            return int(count), int(offset)
        except (OSError, ValueError, KeyError, TypeError):
            return 0, 0

    def _save(self) -> None:
        path = self.agent.outbox_path
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[self.name] = [self.count, self.offset]
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _msg_id(self, obj: dict[str, Any]) -> str:
        if self.name == "records":
            return str(obj["hash"])
        return f"cp-{obj['seq']}-{obj['hash']}"

    def _lines(self, offset: int, limit: int) -> list[tuple[bytes, int]]:
        """Up to ``limit`` whole lines from ``offset``: (line without newline, end offset)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                data = f.read(limit * 4096)
        except FileNotFoundError:
            return []
        out = []
        pos = 0
        while len(out) < limit:
            end = data.find(b"\n", pos)
            if end < 0:
                break
            out.append((data[pos:end], offset + end + 1))
            pos = end + 1
        if not out and len(data) == limit * 4096:  # one very long line
            with open(self.path, "rb") as f:
                f.seek(offset)
                line = f.readline()
            if line.endswith(b"\n"):
                out.append((line[:-1], offset + len(line)))
        return out

    def _line_before(self, offset: int) -> bytes | None:
        """The whole line that ends at ``offset`` (without its newline), if any."""
        if offset <= 0:
            return None
        start = max(0, offset - (1 << 20))
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read(offset - start)
        except OSError:
            return None
        if not data.endswith(b"\n"):
            return None
        return data[:-1].rsplit(b"\n", 1)[-1]

    async def reconcile(self, js: Any) -> None:
        """Move the position to just after the last line the stream holds for this
        host; ``_Halt`` if that line is not in the file."""
        from nats.js.errors import NotFoundError

        try:
            last = await js.get_last_msg(self.agent.settings.audit_stream, self.subject)
            target: bytes | None = bytes(last.data)
        except NotFoundError:
            target = None
        if target is None:
            count, offset = 0, 0
        elif self.count and self._line_before(self.offset) == target:
            count, offset = self.count, self.offset  # the outbox was right
        else:
            count, offset = self._find(target)
        if (count, offset) != (self.count, self.offset):
            log.info(
                "fleet: %s outbox at %d, the stream has %d: shipping from there",
                self.name,
                self.count,
                count,
            )
        self.count, self.offset = count, offset
        self._save()
        if self.name == "records":
            self.agent.shipped_seq = self.count

    def _find(self, target: bytes) -> tuple[int, int]:
        count, offset = 0, 0
        while True:
            batch = self._lines(offset, BATCH)
            if not batch:
                raise _Halt(
                    f"the stream's last {self.name[:-1]} for host {self.agent.host} is not in"
                    f" {self.path} (another daemon uses the fleet host name"
                    f" {self.agent.host!r}, or this log was reset?)"
                )
            for line, end in batch:
                count += 1
                offset = end
                if line == target:
                    return count, offset

    async def ship(self, js: Any) -> None:
        """Publish every whole line past the position, ``BATCH`` at a time, moving the
        position over each acknowledged prefix."""
        while True:
            batch = self._lines(self.offset, BATCH)
            if not batch:
                return
            futures = []
            for line, end in batch:
                obj = json.loads(line)
                fut = await js.publish_async(
                    self.subject, line, headers={"Nats-Msg-Id": self._msg_id(obj)}
                )
                futures.append((fut, end))
            try:
                for fut, end in futures:
                    await asyncio.wait_for(fut, 5)
                    self.count += 1
                    self.offset = end
            finally:
                for fut, _ in futures:
                    if not fut.done():
                        fut.cancel()
                self._save()
                if self.name == "records":
                    self.agent.shipped_seq = self.count
