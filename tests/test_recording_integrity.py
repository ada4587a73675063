"""Recordings are bound to the audit log: each finished recording's SHA-256 is in
its `record.stop` record, and `tachi record verify` / `tachi audit verify
--recordings` find a file edited afterwards, naming it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from helpers import wait_match
from tachi.testing import DaemonProcess

ASCIINEMA = str(Path(sys.executable).parent / "asciinema")


def _recorded(daemon, text: str) -> dict:
    """A finished recording of a program that printed ``text``."""
    s = daemon.new("bash", "--norc", "-c", f"echo {text}; read x", record=True)
    wait_match(daemon, s["id"], text)
    return json.loads(daemon.run("record", "stop", s["id"], "--json", check=True).stdout)


def _stop_record(daemon, rec_id: str) -> dict:
    records = [json.loads(line) for line in (daemon.state_dir / "audit" / "audit.jsonl").open()]
    (stop,) = [
        r
        for r in records
        if r["action"] == "record.stop" and r["details"].get("recording") == rec_id
    ]
    return stop


def _flip_a_byte(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) >= 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new, 1))


def test_the_digest_of_a_finished_recording_is_audited(tachi_daemon):
    rec = _recorded(tachi_daemon, "audited-output")
    stop = _stop_record(tachi_daemon, rec["id"])
    data = Path(rec["path"]).read_bytes()
    assert stop["details"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert stop["details"]["size"] == len(data) == rec["size"]


def test_an_edited_recording_fails_verification_and_an_untouched_one_passes(tachi_daemon):
    edited = _recorded(tachi_daemon, "original-text")
    untouched = _recorded(tachi_daemon, "kept-text")
    ok = tachi_daemon.run("record", "verify")
    assert ok.returncode == 0, ok.stderr
    assert f"ok        {edited['id']}" in ok.stdout and "2 verified" in ok.stderr

    # One byte, and the file is still a valid recording that asciinema plays.
    path = Path(edited["path"])
    _flip_a_byte(path, b"original-text", b"original-tExt")
    played = subprocess.run([ASCIINEMA, "cat", str(path)], capture_output=True, timeout=30)
    assert played.returncode == 0 and b"original-tExt" in played.stdout

    for argv in (
        ["record", "verify"],
        ["record", "verify", edited["id"]],
        ["record", "verify", str(path)],
    ):
        bad = tachi_daemon.run(*argv)
        assert bad.returncode == 1, (argv, bad.stdout, bad.stderr)
        assert "recording verification failed" in bad.stderr and str(path) in bad.stderr
        assert "edited?" in bad.stderr
    assert f"modified  {edited['id']}" in tachi_daemon.run("record", "verify").stdout

    # The audit log itself is intact; with --recordings the edit is found.
    assert tachi_daemon.run("audit", "verify").returncode == 0
    with_recordings = tachi_daemon.run("audit", "verify", "--recordings")
    assert with_recordings.returncode == 1 and str(path) in with_recordings.stderr

    alone = tachi_daemon.run("record", "verify", untouched["id"])
    assert alone.returncode == 0, alone.stderr
    assert tachi_daemon.run("record", "verify", "nope").returncode == 3


def test_a_deleted_recording_is_missing_unless_removed_with_record_rm(tachi_daemon):
    gone = _recorded(tachi_daemon, "to-be-deleted")
    removed = _recorded(tachi_daemon, "properly-removed")
    tachi_daemon.run("record", "rm", removed["id"], check=True)
    assert tachi_daemon.run("record", "verify").returncode == 0
    Path(gone["path"]).unlink()
    result = tachi_daemon.run("record", "verify")
    assert result.returncode == 1 and gone["path"] in result.stderr
    assert f"missing   {gone['id']}" in result.stdout
    assert f"removed   {removed['id']}" in result.stdout


def test_a_recording_repaired_after_a_crash_is_audited_with_its_digest(tachi_home):
    # Without the session keeper (with it, the recording goes on: tests/test_survival.py).
    daemon = DaemonProcess(tachi_home, extra_env={"TACHI_KEEPER": "off"})
    daemon.start()
    s = daemon.new("bash", "--norc", "-c", "echo before-crash; sleep 300", record=True)
    wait_match(daemon, s["id"], "before-crash")
    (rec,) = json.loads(daemon.run("record", "ls", "--json", check=True).stdout)
    daemon.kill()
    again = DaemonProcess(tachi_home, extra_env={"TACHI_KEEPER": "off"})
    again.start()
    try:
        stop = _stop_record(again, rec["id"])
        assert stop["result"] == "error" and "unexpectedly" in stop["reason"]
        data = Path(rec["path"]).read_bytes()
        assert stop["details"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert again.run("record", "verify", rec["id"]).returncode == 0
    finally:
        again.stop()
