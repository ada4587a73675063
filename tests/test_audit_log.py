"""The tamper-evident audit log (tachi.audit), on real files.

Tampering is done the way an attacker would: by rewriting the files on disk,
then asking ``verify`` to name the first bad record.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import tachi.audit as audit_mod
from tachi.audit import AuditLog, AuditWriteError, read_records, verify
from tachi.errors import TachiError

ZERO = "0" * 64


def _append(log: AuditLog, i: int, **overrides: Any) -> dict:
    fields: dict[str, Any] = {
        "action": "session.attach" if i % 3 else "session.create",
        "result": "allowed" if i % 5 else "denied",
        "principal": f"user{i % 4}",
        "source": "uid:1000" if i % 2 else "ip:192.0.2.7",
        "session": f"s{i % 3}",
        "reason": None if i % 5 else "not a peer",
        "details": {"i": i, "note": "ünïcode ✓"},
    }
    fields.update(overrides)
    return log.append(**fields)


def _make_log(directory: Path, n: int = 200, every: int = 64) -> list[dict]:
    with AuditLog(directory, checkpoint_every=every) as log:
        return [_append(log, i) for i in range(1, n + 1)]


def _lines(directory: Path, name: str = "audit.jsonl") -> list[str]:
    return (directory / name).read_text().splitlines()


def _write_lines(directory: Path, lines: list[str], name: str = "audit.jsonl") -> None:
    (directory / name).write_text("".join(line + "\n" for line in lines))


def _spec_hash(record: dict) -> str:
    """The record hash as the format spec defines it, computed independently."""
    body = {k: v for k, v in record.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(b"tachi-audit-record/v1\0" + canonical).hexdigest()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """A closed log of 200 records; checkpoints at 64, 128, 192 and 200 (close)."""
    d = tmp_path / "audit"
    _make_log(d)
    return d


# -- the intact chain -----------------------------------------------------------------


def test_chain_of_200_records_verifies(log_dir: Path) -> None:
    result = verify(log_dir)
    assert result.ok, result.problem
    assert (result.records, result.checkpoints, result.first_bad, result.problem) == (
        200,
        4,
        None,
        "",
    )
    records = [json.loads(line) for line in _lines(log_dir)]
    assert [r["seq"] for r in records] == list(range(1, 201))
    assert list(records[0]) == list(audit_mod.RECORD_KEYS)
    prev = ZERO
    for r in records:
        assert r["prev"] == prev
        assert r["hash"] == _spec_hash(r)
        assert r["time"].endswith("Z")
        prev = r["hash"]
    checkpoints = [json.loads(line) for line in _lines(log_dir, "audit.checkpoints.jsonl")]
    assert [c["seq"] for c in checkpoints] == [64, 128, 192, 200]
    assert list(checkpoints[0]) == ["seq", "hash", "time", "publicKey", "signature"]
    assert checkpoints[-1]["hash"] == records[-1]["hash"]


def test_checkpoint_signature_matches_the_documented_payload(log_dir: Path) -> None:
    pem = (log_dir / "audit.key").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    public = key.public_key()
    for cp in (json.loads(line) for line in _lines(log_dir, "audit.checkpoints.jsonl")):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert base64.b64decode(cp["publicKey"]) == raw
        payload = b"tachi-audit-checkpoint/v1\0" + f"{cp['seq']}:{cp['hash']}".encode()
        public.verify(base64.b64decode(cp["signature"]), payload)  # raises if wrong


def test_append_returns_the_record_as_written(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a") as log:
        first = log.append(
            action="auth.denied", result="denied", principal="bob", source="ip:1.2.3.4"
        )
        second = log.append(
            action="session.create",
            result="allowed",
            principal="alice",
            source="uid:1000",
            session="s1",
            details={"argv": ("sh", "-c"), "cwd": Path("/tmp"), 7: "seven"},
        )
    assert first["seq"] == 1 and first["prev"] == ZERO
    assert second["prev"] == first["hash"]
    # Tuples, paths and int keys are stored as the JSON a reader will parse back.
    assert second["details"] == {"argv": ["sh", "-c"], "cwd": "/tmp", "7": "seven"}
    assert [json.loads(line) for line in _lines(log.directory)] == [first, second]
    assert verify(log.directory).ok


def test_append_rejects_bad_result_and_details(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a") as log:
        with pytest.raises(ValueError, match="result"):
            log.append(action="x", result="maybe", principal="p", source="uid:0")
        with pytest.raises(ValueError):
            log.append(action="x", result="info", principal="p", source="uid:0",
                       details={"x": float("nan")})  # fmt: skip
    assert _lines(log.directory) == []


def test_checkpoints_every_n_and_on_demand(tmp_path: Path) -> None:
    d = tmp_path / "a"
    log = AuditLog(d, checkpoint_every=10)
    for i in range(25):
        _append(log, i)
    assert [json.loads(x)["seq"] for x in _lines(d, "audit.checkpoints.jsonl")] == [10, 20]
    cp = log.checkpoint()
    assert cp is not None and cp["seq"] == 25
    assert log.checkpoint() is None  # tip already signed
    log.close()
    log.close()  # idempotent
    assert [json.loads(x)["seq"] for x in _lines(d, "audit.checkpoints.jsonl")] == [10, 20, 25]
    assert verify(d).ok


# -- tampering ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 57, 200])
@pytest.mark.parametrize(
    ("field", "value"),
    [("principal", "mallory"), ("result", "allowed"), ("details", None), ("time", "x")],
)
def test_edited_record_is_named(log_dir: Path, n: int, field: str, value: Any) -> None:
    lines = _lines(log_dir)
    record = json.loads(lines[n - 1])
    record[field] = value if record[field] != value else "changed"
    lines[n - 1] = json.dumps(record, separators=(",", ":"))
    _write_lines(log_dir, lines)

    result = verify(log_dir)
    assert not result.ok
    assert result.first_bad == n
    assert result.records == n - 1
    assert result.problem == f"record {n}: hash mismatch (edited?)"


def test_edited_byte_in_raw_line_is_named(log_dir: Path) -> None:
    lines = _lines(log_dir)
    lines[99] = lines[99].replace('"user', '"uSer', 1)
    _write_lines(log_dir, lines)
    result = verify(log_dir)
    assert (result.ok, result.first_bad) == (False, 100)


@pytest.mark.parametrize("n", [1, 90, 150])
def test_deleted_record_is_named(log_dir: Path, n: int) -> None:
    lines = _lines(log_dir)
    del lines[n - 1]
    _write_lines(log_dir, lines)
    result = verify(log_dir)
    assert not result.ok
    assert result.first_bad == n
    assert result.problem.startswith(f"record {n}: ")


def test_deleted_and_renumbered_records_break_prev(log_dir: Path) -> None:
    # Delete record 90, renumber and rehash the rest: every record's own hash checks
    # out, but the new record 90 (the old 91) still points at the deleted one.
    records = [json.loads(line) for line in _lines(log_dir)]
    del records[89]
    for r in records[89:]:
        r["seq"] -= 1
        r["hash"] = _spec_hash(r)
    _write_lines(log_dir, [json.dumps(r, separators=(",", ":")) for r in records])
    result = verify(log_dir)
    assert (result.ok, result.first_bad) == (False, 90)
    assert "prev does not match" in result.problem


def test_swapped_records_are_named(log_dir: Path) -> None:
    lines = _lines(log_dir)
    lines[29], lines[30] = lines[30], lines[29]
    _write_lines(log_dir, lines)
    result = verify(log_dir)
    assert not result.ok
    assert result.first_bad == 30
    assert "record 30" in result.problem and "reordered" in result.problem


def test_tail_truncated_past_a_checkpoint_is_caught(log_dir: Path) -> None:
    _write_lines(log_dir, _lines(log_dir)[:150])  # checkpoints sign 192 and 200
    result = verify(log_dir)
    assert not result.ok
    assert result.records == 150
    assert result.first_bad == 151
    assert "record 151: missing" in result.problem and "truncated" in result.problem


def test_chain_rehashed_after_an_edit_is_caught_by_a_checkpoint(log_dir: Path) -> None:
    # Without the key an attacker can still recompute every hash after an edit;
    # the next signed checkpoint no longer matches.
    records = [json.loads(line) for line in _lines(log_dir)]
    records[99]["principal"] = "mallory"
    prev = records[98]["hash"]
    for r in records[99:]:
        r["prev"] = prev
        r["hash"] = prev = _spec_hash(r)
    _write_lines(log_dir, [json.dumps(r, separators=(",", ":")) for r in records])
    result = verify(log_dir)
    assert not result.ok
    assert result.first_bad == 128
    assert "signed at checkpoint line 2" in result.problem


def test_tampered_checkpoint_signature_is_caught(log_dir: Path) -> None:
    lines = _lines(log_dir, "audit.checkpoints.jsonl")
    cp = json.loads(lines[1])
    sig = bytearray(base64.b64decode(cp["signature"]))
    sig[5] ^= 0x01
    cp["signature"] = base64.b64encode(bytes(sig)).decode()
    lines[1] = json.dumps(cp, separators=(",", ":"))
    _write_lines(log_dir, lines, "audit.checkpoints.jsonl")
    result = verify(log_dir)
    assert not result.ok
    assert result.first_bad is None
    assert result.problem == "checkpoint line 2: seq 128: bad signature (forged or edited?)"


def test_checkpoint_moved_to_another_record_is_caught(log_dir: Path) -> None:
    lines = _lines(log_dir, "audit.checkpoints.jsonl")
    cp = json.loads(lines[0])
    cp["seq"] = 63
    cp["hash"] = json.loads(_lines(log_dir)[62])["hash"]
    lines[0] = json.dumps(cp, separators=(",", ":"))
    _write_lines(log_dir, lines, "audit.checkpoints.jsonl")
    result = verify(log_dir)
    assert not result.ok and "bad signature" in result.problem


def test_replaced_key_file_is_caught(log_dir: Path) -> None:
    other = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (log_dir / "audit.key").write_bytes(other)
    result = verify(log_dir)
    assert not result.ok
    assert "signed by a key other than audit.key" in result.problem


def test_missing_key_or_checkpoints_file_is_caught(tmp_path: Path) -> None:
    for name in ("audit.key", "audit.checkpoints.jsonl"):
        d = tmp_path / name
        _make_log(d, n=5)
        (d / name).unlink()
        result = verify(d)
        assert not result.ok and name in result.problem


def test_garbage_line_is_named(log_dir: Path) -> None:
    lines = _lines(log_dir)
    lines.insert(49, "not json at all")
    _write_lines(log_dir, lines)
    result = verify(log_dir)
    assert (result.ok, result.first_bad, result.records) == (False, 50, 49)
    assert result.problem.startswith("line 50: not a JSON record")


def test_duplicate_keys_are_refused(log_dir: Path) -> None:
    # Readers disagree on which of two equal keys wins; verify must not pick one.
    lines = _lines(log_dir)
    lines[9] = lines[9][:-1] + ',"principal":"mallory"}'
    _write_lines(log_dir, lines)
    result = verify(log_dir)
    assert (result.ok, result.first_bad) == (False, 10)
    assert "duplicate key" in result.problem


def test_unreadable_key_fails_closed_and_fails_verify(log_dir: Path) -> None:
    (log_dir / "audit.key").write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n")
    with pytest.raises(AuditWriteError, match=r"audit\.key"):
        AuditLog(log_dir)
    result = verify(log_dir)
    assert not result.ok and "public key" in result.problem


def test_verify_against_a_pinned_public_key(log_dir: Path) -> None:
    pinned = json.loads(_lines(log_dir, "audit.checkpoints.jsonl")[0])["publicKey"]
    assert verify(log_dir, public_key=pinned).ok
    stranger = Ed25519PrivateKey.generate().public_key()
    raw = stranger.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    result = verify(log_dir, public_key=base64.b64encode(raw).decode())
    assert not result.ok and "the pinned public key" in result.problem


def test_no_log_is_not_ok(tmp_path: Path) -> None:
    result = verify(tmp_path / "nothing")
    assert not result.ok and "no audit log" in result.problem


# -- resuming -------------------------------------------------------------------------


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    d = tmp_path / "a"
    first = _make_log(d, n=10, every=4)
    with AuditLog(d, checkpoint_every=4) as log:
        more = [_append(log, i) for i in range(11, 16)]
    assert more[0]["seq"] == 11 and more[0]["prev"] == first[-1]["hash"]
    result = verify(d)
    assert (result.ok, result.records) == (True, 15), result.problem
    seqs = [json.loads(x)["seq"] for x in _lines(d, "audit.checkpoints.jsonl")]
    assert seqs == [4, 8, 10, 14, 15]  # every 4 records since the last checkpoint


def test_reopen_after_a_crash_continues_the_chain(tmp_path: Path) -> None:
    d = tmp_path / "a"
    # A writer that dies without close(): no final checkpoint, lock dropped by the kernel.
    script = textwrap.dedent(
        f"""
        import os
        from tachi.audit import AuditLog
        log = AuditLog({str(d)!r}, checkpoint_every=4)
        for i in range(6):
            log.append(action="session.create", result="allowed", principal="p", source="uid:0")
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    assert len(_lines(d)) == 6
    with AuditLog(d, checkpoint_every=4) as log:
        record = _append(log, 7)
    assert record["seq"] == 7
    assert record["prev"] == json.loads(_lines(d)[5])["hash"]
    assert verify(d).ok


def test_partial_last_line_is_reported_then_recovered_on_reopen(log_dir: Path) -> None:
    partial = b'{"seq":201,"time":"2026-01-01T00:00:00Z","princ'
    with open(log_dir / "audit.jsonl", "ab") as f:
        f.write(partial)
    result = verify(log_dir)
    assert not result.ok
    assert result.first_bad == 201 and "partial last line" in result.problem
    # A reader skips it.
    assert len(list(read_records(log_dir / "audit.jsonl"))) == 200

    with AuditLog(log_dir) as log:
        record = _append(log, 202)
    records = [json.loads(line) for line in _lines(log_dir)]
    assert records[200]["action"] == "audit.recovered"
    assert records[200]["details"] == {"truncatedBytes": len(partial)}
    assert records[201] == record and record["seq"] == 202
    result = verify(log_dir)
    assert (result.ok, result.records) == (True, 202), result.problem


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "a"
    with AuditLog(d):
        with pytest.raises(AuditWriteError, match="in use"):
            AuditLog(d)
        # Even fail-open never lets two writers fork the chain.
        other = AuditLog(d, fail_open=True)
        other.append(action="x", result="info", principal="p", source="uid:0")
        other.close()
    assert _lines(d) == []


# -- write failures -------------------------------------------------------------------

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")


def _point_at_dev_full(d: Path) -> None:
    d.mkdir(mode=0o700)
    (d / "audit.jsonl").symlink_to("/dev/full")


@needs_dev_full
def test_disk_full_fails_closed(tmp_path: Path) -> None:
    d = tmp_path / "a"
    _point_at_dev_full(d)
    dev_mode = os.stat("/dev/full").st_mode
    events: list[dict] = []
    log = AuditLog(d, on_event=events.append)
    with pytest.raises(AuditWriteError) as info:
        log.append(action="session.create", result="allowed", principal="p", source="uid:0")
    assert isinstance(info.value, TachiError) and info.value.code == "audit"
    assert "No space left" in str(info.value)
    assert events == []
    log.close()
    assert os.stat("/dev/full").st_mode == dev_mode  # never chmod a device


def test_unopenable_log_fails_closed_at_open(tmp_path: Path) -> None:
    d = tmp_path / "a"
    (d / "audit.jsonl").mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(AuditWriteError, match="audit"):
        AuditLog(d)


@needs_dev_full
def test_disk_full_fails_open_with_a_warning_then_records_the_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "a"
    _point_at_dev_full(d)
    log = AuditLog(d, fail_open=True)
    with caplog.at_level(logging.WARNING, logger="tachi.audit"):
        first = log.append(action="session.create", result="allowed", principal="p", source="s")
        log.append(action="session.attach", result="allowed", principal="p", source="s")
    assert first["seq"] == 1 and first["hash"] == _spec_hash(first)
    warnings = [r for r in caplog.records if r.name == "tachi.audit"]
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)
    assert "NOT WRITTEN" in warnings[0].getMessage()
    assert "session.create" in warnings[0].getMessage()

    (d / "audit.jsonl").unlink()  # the disk has room again
    record = log.append(action="session.close", result="allowed", principal="p", source="s")
    log.close()
    records = [json.loads(line) for line in _lines(d)]
    assert [r["action"] for r in records] == ["audit.dropped", "session.close"]
    assert records[0]["details"]["count"] == 2
    assert records[1] == record
    assert verify(d).ok


def test_unopenable_log_fails_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with caplog.at_level(logging.WARNING, logger="tachi.audit"):
        log = AuditLog(not_a_dir, fail_open=True)
        record = log.append(action="x", result="info", principal="p", source="uid:0")
    assert record["seq"] == 1
    assert any("UNAVAILABLE" in r.getMessage() for r in caplog.records)
    assert any("NOT WRITTEN" in r.getMessage() for r in caplog.records)
    assert log.checkpoint() is None
    log.close()


def test_append_after_close_fails_closed(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a")
    log.close()
    with pytest.raises(AuditWriteError, match="closed"):
        log.append(action="x", result="info", principal="p", source="uid:0")


# -- events, modes, reading -----------------------------------------------------------


def test_on_event_gets_each_written_record_and_its_errors_are_swallowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[dict] = []

    def listener(event: dict) -> None:
        seen.append(event)
        event["principal"] = "mutated"  # must not alter the log or the caller's record
        if event["seq"] == 2:
            raise RuntimeError("shipper down")

    with (
        caplog.at_level(logging.ERROR, logger="tachi.audit"),
        AuditLog(tmp_path / "a", on_event=listener) as log,
    ):
        records = [_append(log, i) for i in range(1, 4)]
    assert [e["seq"] for e in seen] == [1, 2, 3]
    assert [e["hash"] for e in seen] == [r["hash"] for r in records]
    assert all(r["principal"] != "mutated" for r in records)
    assert any("shipper down" in (r.exc_text or "") for r in caplog.records)
    assert verify(tmp_path / "a").ok


def test_file_and_directory_modes(tmp_path: Path) -> None:
    d = tmp_path / "a"
    _make_log(d, n=3)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in ("audit.jsonl", "audit.checkpoints.jsonl", "audit.key"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    # Loosened modes are put back on open.
    os.chmod(d, 0o755)
    for name in ("audit.jsonl", "audit.checkpoints.jsonl", "audit.key"):
        os.chmod(d / name, 0o644)
    AuditLog(d).close()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in ("audit.jsonl", "audit.checkpoints.jsonl", "audit.key"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name


def test_read_records_filters_by_session_and_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter(range(1_700_000_000_000_000_000, 1_800_000_000_000_000_000, 1_000_000_000))
    # The writer stamps records (tachi.audit is a package split along its jobs).
    monkeypatch.setattr(audit_mod.writer, "now_ns", lambda: next(clock))
    d = tmp_path / "a"
    with AuditLog(d, checkpoint_every=1000) as log:
        records = [_append(log, i) for i in range(12)]
    path = d / "audit.jsonl"

    assert list(read_records(path)) == records
    s1 = list(read_records(path, session="s1"))
    assert s1 == [r for r in records if r["session"] == "s1"] and len(s1) == 4
    since = 1_700_000_000_000_000_000 + 5 * 1_000_000_000  # the 6th record's time, inclusive
    assert [r["seq"] for r in read_records(path, since_ns=since)] == list(range(6, 13))
    both = list(read_records(path, session="s0", since_ns=since))
    assert [r["seq"] for r in both] == [7, 10]
    assert list(read_records(path, session="nope")) == []
