"""Recordings in the fleet's object store: uploaded once finished, checked against
the audit stream, and readable after the host and its state are gone."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from nats_support import fleet, fleet_config, wait_until

from tachi.testing import DaemonProcess


@pytest.fixture
def observer(nats_server):
    """A machine with only the [fleet] settings (no daemon runs there)."""
    home = Path(tempfile.mkdtemp(prefix="tachi-obs-", dir="/tmp"))
    yield DaemonProcess(
        home, {"TACHI_LOAD_PLUGINS": "nats"}, config=fleet_config(nats_server.url, "observer")
    )
    shutil.rmtree(home, ignore_errors=True)


def record_something(daemon: DaemonProcess, text: str) -> dict:
    """Record a `cat` session echoing ``text``; the stopped recording's JSON."""
    sid = daemon.new("cat")["id"]
    daemon.run("record", "start", sid, check=True)
    with daemon.client() as client:
        client.send(sid, f"{text}\n")
    rec = json.loads(daemon.run("record", "ls", "--json", check=True).stdout)[-1]
    path = Path(rec["path"])
    # The recorder process creates the file a moment after record start.
    wait_until(
        lambda: path.exists() and text.encode() in path.read_bytes(),
        10,
        "the output in the recording",
    )
    stopped = json.loads(daemon.run("record", "stop", sid, "--json", check=True).stdout)
    return {**stopped, "bytes": path.read_bytes(), "session": sid}


def in_fleet(observer: DaemonProcess, host: str) -> dict[str, dict]:
    return {r["id"]: r for r in fleet(observer, "record", "ls", "--json", "--host", host)}


def test_a_recording_outlives_its_host_and_plays_from_the_fleet(
    nats_server, fleet_daemons, observer, tmp_path
):
    host = fleet_daemons(nats_server.url, "build-7")
    rec = record_something(host, "made on build-7 last night")
    listed = wait_until(lambda: in_fleet(observer, "build-7").get(rec["id"]), 15, "uploaded")
    assert listed["name"] == f"build-7/{rec['id']}" and listed["size"] == len(rec["bytes"])
    assert listed["session"] == rec["session"]
    assert Path(rec["path"]).exists()  # keep_local_recordings defaults to true

    host.stop()
    shutil.rmtree(host.state_dir)  # the host is gone, with everything it kept
    assert not Path(rec["path"]).exists()

    out = tmp_path / "night.cast"
    fleet(observer, "record", "export", f"build-7/{rec['id']}", "-o", str(out), check=True)
    assert out.read_bytes() == rec["bytes"]
    to_stdout = observer.run("fleet", "record", "export", f"build-7/{rec['id']}", "-o", "-")
    assert to_stdout.returncode == 0 and to_stdout.stdout == rec["bytes"].decode()
    cat = subprocess.run(
        [shutil.which("asciinema") or str(Path(__import__("sys").executable).parent / "asciinema"),
         "cat", str(out)],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert b"made on build-7 last night" in cat.stdout
    played = observer.run("fleet", "record", "play", f"build-7/{rec['id']}", "--idle-limit", "0")
    assert played.returncode == 0, played.stderr
    assert "made on build-7 last night" in played.stdout
    assert "[playback finished]" in played.stderr
    assert [(h["host"], h["status"]) for h in fleet(observer, "hosts", "--json")] == [
        ("build-7", "gone")
    ]
    missing = observer.run("fleet", "record", "export", "build-7/nosuch", "-o", str(tmp_path / "x"))
    assert missing.returncode == 1 and "no recording build-7/nosuch" in missing.stderr
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == [out]


def test_a_recording_finished_during_an_outage_is_uploaded_after_a_restart(
    nats_server, fleet_daemons, observer
):
    host = fleet_daemons(nats_server.url, "ci-3", "keep_local_recordings = false\n")
    wait_until(lambda: fleet(observer, "hosts", "--json"), 10, "the host in the fleet")
    nats_server.stop()
    rec = record_something(host, "finished while NATS was down")
    host.stop()  # the queue, not memory, carries the upload over
    queue = json.loads((host.state_dir / "fleet" / "uploads.json").read_text())["queue"]
    assert [q["id"] for q in queue] == [rec["id"]]
    nats_server.start()
    host.start()
    wait_until(lambda: in_fleet(observer, "ci-3").get(rec["id"]), 20, "uploaded after the outage")
    # Uploaded, so the local copy goes (keep_local_recordings = false).
    wait_until(lambda: not Path(rec["path"]).exists(), 5, "the local copy removed")
    got = observer.run("fleet", "record", "export", f"ci-3/{rec['id']}", "-o", "-")
    assert got.returncode == 0 and got.stdout == rec["bytes"].decode()
    queue = json.loads((host.state_dir / "fleet" / "uploads.json").read_text())["queue"]
    assert queue == []


def test_a_recording_replaced_in_the_object_store_is_refused(nats_server, fleet_daemons, observer):
    host = fleet_daemons(nats_server.url, "victim")
    rec = record_something(host, "the real session")
    wait_until(lambda: in_fleet(observer, "victim").get(rec["id"]), 15, "uploaded")

    async def replace() -> None:
        import nats

        nc = await nats.connect(nats_server.url)
        obs = await nc.jetstream().object_store("tachi-recordings")
        forged = rec["bytes"].replace(b"the real session", b"something else!")
        await obs.put(f"victim/{rec['id']}", forged)
        await nc.close()

    asyncio.run(replace())
    refused = observer.run("fleet", "record", "export", f"victim/{rec['id']}", "-o", "-")
    assert refused.returncode == 1
    assert "does not match the SHA-256 in host victim's record.stop" in refused.stderr
    assert "something else" not in refused.stdout
