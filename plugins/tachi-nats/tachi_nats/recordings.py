"""Finished recordings in the fleet's object store, and reading them back.

Upload (the agent's thread): the audit log says which recordings finished and
their SHA-256 (``record.stop``), so the uploader follows it from a cursor, like
the audit shipper, and keeps what it has to do in ``STATE/fleet/uploads.json``:
the cursor, the paths of recordings still running (from ``record.start``) and
the queue of finished ones. The cursor moves only once the queue holding what it
passed is on disk, so a crash, a restart or an outage of any length loses no
recording; an upload cut midway is simply done again (its chunks went to a
subject of their own, which the object's metadata never names).

A recording is uploaded only after its ``record.stop`` record is in the audit
stream, and only if the file still hashes to that record's SHA-256, so whatever
``tachi fleet record export`` reads can be checked against the stream.

The object ``HOST/RECORDING_ID`` is written the way the NATS object store writes
one (chunks, then the metadata message with a rollup), except that the chunks go
to ``$O.BUCKET.C.HOST.<nuid>``: a host's permissions can then name its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from tachi_nats.settings import FleetSettings

log = logging.getLogger("tachi.fleet")

#: Bytes per chunk message (the object store's default).
CHUNK = 128 * 1024
#: Chunks published before waiting for their acknowledgements.
WINDOW = 16
#: How often the audit log is looked at without a kick from the shipper.
POLL = 2.0


def object_name(host: str, recording: str) -> str:
    return f"{host}/{recording}"


def _meta_subject(bucket: str, name: str) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


class Uploader:
    """Uploads this host's finished recordings; runs on the agent's loop."""

    def __init__(
        self,
        settings: FleetSettings,
        *,
        state_dir: Path,
        audit_path: Path,
        recordings_dir: Path | None,
        shipped: Any,
    ) -> None:
        """``shipped()`` is the seq of the last audit record the stream acknowledged."""
        self.settings = settings
        self.host = settings.host
        self.path = state_dir / "fleet" / "uploads.json"
        self.audit_path = audit_path
        self.recordings_dir = recordings_dir
        self.shipped = shipped
        self.kick = asyncio.Event()
        self.uploaded = 0
        state = self._load()
        self.count, self.offset = state.get("cursor", [0, 0])
        self.started: dict[str, str] = dict(state.get("started", {}))
        self.queue: list[dict[str, Any]] = list(state.get("queue", []))
        self.failed: list[dict[str, Any]] = list(state.get("failed", []))

    # -- the persisted queue -----------------------------------------------------
    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        data = {
            "cursor": [self.count, self.offset],
            "started": self.started,
            "queue": self.queue,
            "failed": self.failed[-100:],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def scan(self) -> bool:
        """Read the audit log past the cursor: remember started recordings' files,
        queue finished ones, drop removed ones. True if anything changed (saved)."""
        try:
            with open(self.audit_path, "rb") as f:
                f.seek(self.offset)
                data = f.read(4 << 20)
        except FileNotFoundError:
            return False
        end = data.rfind(b"\n")
        if end < 0:
            return False
        for line in data[: end + 1].splitlines():
            self.count += 1
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            self._note(rec)
        self.offset += end + 1
        self._save()
        return True

    def _note(self, rec: dict[str, Any]) -> None:
        action = rec.get("action")
        details = rec.get("details") or {}
        rec_id = details.get("recording") if isinstance(details, dict) else None
        if not isinstance(rec_id, str):
            return
        if action in ("record.start", "record.resume") and details.get("path"):
            self.started[rec_id] = str(details["path"])
        elif action == "record.stop":
            path = self.started.pop(rec_id, None) or self._find(rec_id)
            if isinstance(details.get("sha256"), str) and path:
                self.queue = [q for q in self.queue if q["id"] != rec_id]
                self.queue.append(
                    {
                        "id": rec_id,
                        "path": path,
                        "sha256": details["sha256"],
                        "size": details.get("size"),
                        "session": rec.get("session"),
                        "seq": rec.get("seq", self.count),
                        "stopped": rec.get("time"),
                    }
                )
        elif action == "record.rm" and rec.get("result") == "allowed":
            self.queue = [q for q in self.queue if q["id"] != rec_id]

    def _find(self, rec_id: str) -> str | None:
        """The file of a recording whose start the cursor did not see."""
        if self.recordings_dir is None:
            return None
        with contextlib.suppress(OSError):
            for p in self.recordings_dir.glob(f"*-{rec_id}.*"):
                return str(p)
        return None

    # -- uploading -------------------------------------------------------------------
    async def run(self, js: Any) -> None:
        """Scan and upload until cancelled; an error (NATS away) pauses a second."""
        obs_ready = False
        while True:
            try:
                if not obs_ready:
                    await js.object_store(self.settings.recordings_bucket)
                    obs_ready = True
                await asyncio.get_running_loop().run_in_executor(None, self.scan)
                while self.queue and self.queue[0].get("seq", 0) <= self.shipped():
                    await self._upload(js, self.queue[0])
                    self.queue.pop(0)
                    self._save()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("fleet: recording upload paused (%s); retrying", e)
                await asyncio.sleep(1)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.kick.wait(), POLL)
            self.kick.clear()

    async def _upload(self, js: Any, item: dict[str, Any]) -> None:
        """Put one recording (unless the store has it already), then remove the
        local file if so configured. A file that is gone or no longer hashes to
        its audit record is not uploaded: logged and put on the failed list."""
        from nats.js import api
        from nats.js.errors import NotFoundError

        bucket = self.settings.recordings_bucket
        name = object_name(self.host, item["id"])
        digest = "SHA-256=" + base64.urlsafe_b64encode(bytes.fromhex(item["sha256"])).decode()
        try:
            last = await js.get_last_msg(f"OBJ_{bucket}", _meta_subject(bucket, name))
            existing = json.loads(last.data)
        except NotFoundError:
            existing = None
        if not (existing and existing.get("digest") == digest and not existing.get("deleted")):
            path = Path(item["path"])
            try:
                f = open(path, "rb")  # noqa: SIM115 (closed below, read in the executor)
            except OSError as e:
                self._fail(item, f"cannot read {path}: {e.strerror or e}")
                return
            loop = asyncio.get_running_loop()
            nuid = f"{self.host}.{secrets.token_hex(11)}"
            chunk_subject = f"$O.{bucket}.C.{nuid}"
            h = hashlib.sha256()
            size = chunks = 0
            try:
                while True:
                    acks = []
                    for _ in range(WINDOW):
                        block = await loop.run_in_executor(None, f.read, CHUNK)
                        if not block:
                            break
                        h.update(block)
                        size += len(block)
                        chunks += 1
                        acks.append(await js.publish_async(chunk_subject, block))
                    for ack in acks:
                        await asyncio.wait_for(ack, 10)
                    if len(acks) < WINDOW:
                        break
            finally:
                f.close()
            if h.hexdigest() != item["sha256"]:
                self._fail(item, "the file no longer matches the SHA-256 of its record.stop")
                return
            info = {
                "name": name,
                "description": f"tachi recording {item['id']} of host {self.host}",
                "headers": {
                    "Tachi-Host": [self.host],
                    "Tachi-Session": [item.get("session") or ""],
                    "Tachi-Stopped": [item.get("stopped") or ""],
                    "Tachi-Sha256": [item["sha256"]],
                },
                "options": {"max_chunk_size": CHUNK},
                "bucket": bucket,
                "nuid": nuid,
                "size": size,
                "chunks": chunks,
                "mtime": datetime.now(UTC).isoformat(),
                "digest": digest,
            }
            await js.publish(
                _meta_subject(bucket, name),
                json.dumps(info).encode(),
                headers={api.Header.ROLLUP: "sub"},
            )
            self.uploaded += 1
            log.info("fleet: recording %s uploaded (%d bytes)", item["id"], size)
        if not self.settings.keep_local_recordings:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(item["path"])

    def _fail(self, item: dict[str, Any], why: str) -> None:
        log.error("fleet: recording %s not uploaded: %s", item["id"], why)
        self.failed.append({**item, "error": why})


# -- reading (the `tachi fleet record` commands) -------------------------------------


async def list_recordings(js: Any, settings: FleetSettings) -> list[dict[str, Any]]:
    """Every recording in the object store: host, id, session, size, sha256,
    stopped, uploaded; by host, then upload time."""
    from nats.js.errors import BucketNotFoundError, NotFoundError

    try:
        obs = await js.object_store(settings.recordings_bucket)
        infos = await obs.list(ignore_deletes=True)
    except (BucketNotFoundError, NotFoundError):
        return []
    out = []
    for info in infos:
        host, _, rec_id = info.name.partition("/")
        headers = info.headers or {}

        def header(key: str, headers: dict = headers) -> str | None:
            value = headers.get(key)
            return (value[0] if isinstance(value, list) else value) or None

        out.append(
            {
                "host": host,
                "id": rec_id,
                "name": info.name,
                "session": header("Tachi-Session"),
                "size": info.size,
                "sha256": header("Tachi-Sha256"),
                "stopped": header("Tachi-Stopped"),
                "uploaded": info.mtime,
            }
        )
    out.sort(key=lambda r: (r["host"], r["uploaded"] or "", r["id"]))
    return out


async def audited_digest(js: Any, settings: FleetSettings, host: str, rec_id: str) -> str | None:
    """The SHA-256 in host ``host``'s ``record.stop`` audit record of ``rec_id``,
    read from the audit stream (the newest such record), or ``None``."""
    from nats.js.errors import NotFoundError

    from tachi_nats import nats_io

    try:
        msgs = await nats_io.read_subject(js, settings.audit_stream, settings.audit_subject(host))
    except NotFoundError:
        return None
    found = None
    needle = rec_id.encode()
    for msg in msgs:
        if needle not in msg.data:  # most records are about something else
            continue
        rec = json.loads(msg.data)
        details = rec.get("details") or {}
        if rec.get("action") == "record.stop" and details.get("recording") == rec_id:
            found = details.get("sha256")
    return found if isinstance(found, str) else None


class NotInFleet(Exception):
    """The recording is not in the object store, or fails its check (the message says)."""


async def fetch(js: Any, settings: FleetSettings, name: str, out: BinaryIO) -> int:
    """Write recording ``name`` (``HOST/ID``) to ``out``; its size. Raises
    ``NotInFleet`` when it is not there, or when what was read does not hash to
    the SHA-256 of the host's ``record.stop`` audit record (``out`` then holds
    bytes the caller must throw away)."""
    from nats.js.errors import BucketNotFoundError, DigestMismatchError, ObjectNotFoundError

    host, _, rec_id = name.partition("/")
    if not host or not rec_id:
        raise NotInFleet(f"{name!r}: give HOST/RECORDING_ID (see 'tachi fleet record ls')")
    want = await audited_digest(js, settings, host, rec_id)
    try:
        obs = await js.object_store(settings.recordings_bucket)
        h = _HashingWriter(out)
        await obs.get(name, writeinto=h)
    except (BucketNotFoundError, ObjectNotFoundError):
        raise NotInFleet(f"no recording {name} in the fleet's object store") from None
    except DigestMismatchError:
        raise NotInFleet(f"{name}: the object store's copy is damaged (digest mismatch)") from None
    if want is None:
        raise NotInFleet(f"{name}: no record.stop for it in host {host}'s audit stream")
    if h.digest.hexdigest() != want:
        raise NotInFleet(
            f"{name}: does not match the SHA-256 in host {host}'s record.stop audit record"
            " (replaced in the object store?)"
        )
    return h.size


class _HashingWriter:
    """A file-like ``write`` that hashes what passes through it."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.out.write(data)
