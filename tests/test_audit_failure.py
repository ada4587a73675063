"""An audit log that cannot be written refuses actions (fail closed), or warns (fail open)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess

import pytest

from helpers import spawn_attach, until, wait_match
from tachi.testing import DaemonProcess


@pytest.fixture
def audit_on_tiny_disk(tachi_home):
    if os.getuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root (CI runs as root)")
    audit_dir = tachi_home / "state" / "audit"
    audit_dir.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(audit_dir)]
    subprocess.run(mount, check=True)
    try:
        yield audit_dir
    finally:
        subprocess.run(["umount", "-l", str(audit_dir)], check=False)


def _fill(directory):
    fill = ["dd", "if=/dev/zero", f"of={directory}/filler", "bs=4k"]
    subprocess.run(fill, capture_output=True, check=False)


@pytest.mark.parametrize("fail_open", [False, True])
def test_full_audit_disk(tachi_home, audit_on_tiny_disk, fail_open):
    config = "[security]\naudit_fail_open = true\n" if fail_open else ""
    daemon = DaemonProcess(tachi_home, config=config)
    daemon.start()
    try:
        before = daemon.new("sleep", "300")
        _fill(audit_on_tiny_disk)
        # The log file's last page may still take a few records; then the disk is full.
        results = [daemon.run("new", "-d", "--json", "--", "sleep", "300") for _ in range(40)]
        refused = [r for r in results if r.returncode != 0]
        created = [json.loads(r.stdout)["id"] for r in results if r.returncode == 0]
        if fail_open:
            assert not refused, refused[0].stderr
            assert "fail_open" in daemon.log.read_text()
        else:
            assert refused, "no action was refused although the audit disk is full"
            assert refused[0].returncode == 1
            assert "audit" in refused[0].stderr.lower() and "space" in refused[0].stderr.lower()
        # The daemon and the sessions it could account for are untouched either way.
        listed = json.loads(daemon.run("ls", "--json", check=True).stdout)
        live = {s["id"] for s in listed if s["state"] != "closed"}
        assert live == {before["id"], *created}
    finally:
        os.unlink(audit_on_tiny_disk / "filler")
        daemon.stop()


def _sessions_typing_into_files(daemon, tmp_path, count):
    """``count`` sessions whose program writes what it is typed into a file of its own."""
    out = []
    for n in range(count):
        path = tmp_path / f"typed-{n}.txt"
        s = daemon.new(
            "bash", "--norc", "--noprofile", "-c", f"stty -echo; echo READY; cat > {path}"
        )
        out.append((s["id"], path))
    for sid, _ in out:
        wait_match(daemon, sid, "READY")
    return out


def _input_records(daemon):
    records = [json.loads(line) for line in (daemon.state_dir / "audit" / "audit.jsonl").open()]
    return {r["session"] for r in records if r["action"] == "session.input"}


def test_input_that_cannot_be_audited_never_reaches_the_program(
    tachi_home, audit_on_tiny_disk, tmp_path
):
    """Fail closed: with the audit disk full, `send` and an attached client's
    keys are refused before they are typed; once there is room, typing works
    and every input that reached a program has its `session.input` record."""
    daemon = DaemonProcess(tachi_home)
    daemon.start()
    try:
        sent = _sessions_typing_into_files(daemon, tmp_path, 30)
        (attached_id, attached_file), sent = sent[0], sent[1:]
        child = spawn_attach(daemon, attached_id)
        child.expect("READY")
        _fill(audit_on_tiny_disk)
        # The log file's last page takes a few more records; then sends are refused.
        refused = []
        for sid, _ in sent:
            r = daemon.run("send", sid, f"typed-{sid}\n")
            if r.returncode != 0:
                assert "audit" in r.stderr.lower(), r.stderr
                refused.append(sid)
                break
        assert refused, "every send was accepted although the audit disk is full"
        # The disk stays full: an attached client's keys are refused as well.
        child.send("secret-keys\r")
        child.expect("audit")

        os.unlink(audit_on_tiny_disk / "filler")
        for sid, _path in [*sent, (attached_id, attached_file)]:
            daemon.run("send", sid, "after\n", check=True)
        for _sid, path in [*sent, (attached_id, attached_file)]:
            until(lambda path=path: path.exists() and b"after\n" in path.read_bytes())
        audited = _input_records(daemon)
        for sid, path in sent:
            typed = path.read_bytes()
            if sid in refused:
                assert typed == b"after\n", "refused input reached the program"
            elif typed != b"after\n":
                assert typed == f"typed-{sid}\nafter\n".encode()
                assert sid in audited, f"input reached {sid} with no audit record"
        assert attached_file.read_bytes() == b"after\n", "unaudited keystrokes were typed"
        assert attached_id in audited
        child.terminate(force=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(audit_on_tiny_disk / "filler")
        daemon.stop()


def test_a_run_that_ran_is_reported_when_its_record_cannot_be_written(
    tachi_home, audit_on_tiny_disk
):
    """A run is audited once it has ended, after its reply: the log failing
    closed refuses input before it is typed, and cannot take back a command
    that ran. So the caller gets the command's result (not an error that
    would make an agent run it again), and the daemon's log says which run
    went unrecorded."""
    from helpers import shell_session

    daemon = DaemonProcess(tachi_home)
    daemon.start()
    try:
        sid = shell_session(daemon, "bash")
        with daemon.client() as client:
            assert client.run(sid, "true", timeout=20).exit_code == 0  # the input burst: audited
            _fill(audit_on_tiny_disk)
            # Within the burst (runs less than 2 s apart): no input record is due.
            results = [client.run(sid, f"echo ran-{i}", timeout=20) for i in range(40)]
        assert [(r.output, r.exit_code) for r in results] == [(f"ran-{i}\n", 0) for i in range(40)]
        assert until(lambda: "could not audit run" in daemon.log.read_text(), 10)
    finally:
        os.unlink(audit_on_tiny_disk / "filler")
        daemon.stop()
