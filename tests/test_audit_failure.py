"""An audit log that cannot be written refuses actions (fail closed), or warns (fail open)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

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
