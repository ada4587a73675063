"""Third-party recorders, installed as a user installs them: one that fails
ends only its recording (marked failed with the reason, one log line naming the
plugin, the session runs on), and a recording in a format the daemon does not
know is never touched by the repair after a crash."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from helpers import capture, installed_plugin, until, wait_match
from tachi.testing import DaemonProcess

# What every sink below does besides output (docs/plugins.md names the five
# methods), and how each plugin registers its recorder.
SINK_REST = """
    def input(self, data, t): pass
    def resize(self, cols, rows, t): pass
    def marker(self, label, t): pass
    def close(self):
        self.file.close()
"""
REGISTER = """
@hookimpl
def tachi_recorders(register):
    register(Recorder())
"""

# A recorder whose sink raises: at once (``FAIL_AT = 0``, the screen written at
# start) or on the first output after it. With ``IN_WORKER`` it runs in the
# daemon's recorder process, as the built-in asciicast recorder does.
BROKEN = (
    """
from pathlib import Path
from tachi.hookspecs import hookimpl

FAIL_AT = {fail_at}

class Sink:
    def __init__(self, path):
        self.calls = 0
        self.file = open(path, "wb")
    def output(self, data, t):
        self.calls += 1
        if self.calls > FAIL_AT:
            raise RuntimeError("brokencast cannot encode this")
        self.file.write(data)
        self.file.flush()
"""
    + SINK_REST
    + """
class Recorder:
    format = "brokencast"
    extension = ".broken"
    {worker}
    def open(self, path, **options):
        return Sink(path)
"""
    + REGISTER
)

# A gzip recorder written from docs/plugins.md (asciicast v2 lines, gzipped),
# with or without a repair() and an export() (its reader).
GZCAST = (
    """
import gzip, json, shutil, zlib
from tachi.hookspecs import hookimpl

class Sink:
    def __init__(self, path, width, height):
        self.file = gzip.open(path, "wb")
        self.write({{"version": 2, "width": width, "height": height}})
    def write(self, value):
        self.file.write(json.dumps(value).encode() + b"\\n")
        self.file.flush(zlib.Z_SYNC_FLUSH)
    def output(self, data, t):
        self.write([t, "o", data.decode("utf-8", "replace")])
"""
    + SINK_REST
    + """
class Recorder:
    format = "gzcast"
    extension = ".cast.gz"
    def open(self, path, *, width, height, **options):
        return Sink(path, width, height)
    {repair}
    {reader}
"""
    + REGISTER
)

EXPORT = """def export(self, path, out):
        with gzip.open(path, "rb") as f:
            shutil.copyfileobj(f, out)
"""

REPAIR = """def repair(self, path):
        (path.parent / "repaired-by-plugin").write_text(path.name)
        return 1.5
"""


def _daemon(tachi_home, tmp_path, name, source, fmt) -> DaemonProcess:
    env = installed_plugin(tmp_path / "site", name, source)
    config = f'[recording]\nformat = "{fmt}"\n'
    daemon = DaemonProcess(tachi_home, extra_env={**env, "TACHI_LOAD_PLUGINS": name}, config=config)
    daemon.start()
    return daemon


def _recordings(daemon) -> list[dict]:
    return json.loads(daemon.run("record", "ls", "--json", check=True).stdout)


def _assert_failed_once(daemon, rec: dict) -> None:
    """The recording is failed with the reason, and daemon.log says so once,
    naming the plugin, with no traceback."""
    assert not rec["active"]
    assert "brokencast cannot encode this" in rec["error"]
    assert "tachi_test_brokencast" in rec["error"], "the reason does not name the plugin"
    log = daemon.log.read_text()
    lines = [line for line in log.splitlines() if "brokencast cannot encode this" in line]
    assert len(lines) == 1, lines
    assert "tachi_test_brokencast" in lines[0]
    assert "Traceback" not in log
    listed = daemon.run("record", "ls").stdout
    assert "failed: " in listed
    records = [json.loads(line) for line in (daemon.state_dir / "audit" / "audit.jsonl").open()]
    errors = [r for r in records if r["action"] == "record.error"]
    assert errors and "brokencast cannot encode this" in errors[0]["reason"]


def _session_runs_on(daemon, sid: str) -> None:
    daemon.run("send", sid, "echo still-running-$((40+2))\n", check=True)
    wait_match(daemon, sid, "still-running-42")


@pytest.mark.parametrize("worker", [False, True], ids=["in-daemon", "in-worker"])
def test_a_recorder_failing_at_start_leaves_the_session_running_and_says_so(
    tachi_home, tmp_path, worker
):
    factory = 'worker_factory = "tachi_test_brokencast:Recorder"' if worker else ""
    source = BROKEN.format(fail_at=0, worker=factory)
    daemon = _daemon(tachi_home, tmp_path, "brokencast", source, "brokencast")
    try:
        result = daemon.run("new", "-d", "--record", "--", "bash", "--norc")
        # The session exists and runs: `new` succeeds and warns that it is unrecorded.
        assert result.returncode == 0, result.stderr
        sid = result.stdout.strip()
        if not worker:
            assert "runs unrecorded" in result.stderr and "brokencast cannot" in result.stderr
        (rec,) = until(lambda: [r for r in _recordings(daemon) if not r["active"]])
        _assert_failed_once(daemon, rec)
        _session_runs_on(daemon, sid)
    finally:
        daemon.stop()


@pytest.mark.parametrize("worker", [False, True], ids=["in-daemon", "in-worker"])
def test_a_recorder_failing_mid_session_marks_the_recording_failed(tachi_home, tmp_path, worker):
    factory = 'worker_factory = "tachi_test_brokencast:Recorder"' if worker else ""
    source = BROKEN.format(fail_at=1, worker=factory)
    daemon = _daemon(tachi_home, tmp_path, "brokencast", source, "brokencast")
    try:
        # Silent until told to go, so the recording starts well; then output
        # chunk after chunk: one failure, not one per chunk.
        script = (
            "stty -echo; read go;"
            " for i in $(seq 0 19); do echo chunk-$i; sleep 0.05; done; exec bash --norc"
        )
        result = daemon.run("new", "-d", "--record", "--", "bash", "--norc", "-c", script)
        assert result.returncode == 0 and not result.stderr, result.stderr
        sid = result.stdout.strip()
        daemon.run("send", sid, "\n", check=True)
        wait_match(daemon, sid, "chunk-19")
        (rec,) = until(lambda: [r for r in _recordings(daemon) if not r["active"]])
        _assert_failed_once(daemon, rec)
        _session_runs_on(daemon, sid)
        assert "chunk-19" in capture(daemon, sid)
    finally:
        daemon.stop()


@pytest.mark.parametrize("restart", ["same-plugin", "plugin-gone", "plugin-repairs"])
def test_repair_after_a_crash_never_destroys_a_plugins_recording(tachi_home, tmp_path, restart):
    """kill -9 with a gzip recording open; the next daemon must not empty it
    (it once cut it to 0 bytes as if it were asciicast text)."""
    daemon = _daemon(tachi_home, tmp_path, "gzcast", GZCAST.format(repair="", reader=""), "gzcast")
    s = daemon.new("bash", "--norc", "-c", "echo compressed-output; sleep 300", record=True)
    wait_match(daemon, s["id"], "compressed-output")
    (rec,) = _recordings(daemon)
    path = Path(rec["path"])
    until(lambda: path.exists() and b"compressed-output" in _gunzip_partial(path.read_bytes()))
    daemon.kill()
    before = path.read_bytes()

    env = {"TACHI_LOAD_PLUGINS": "gzcast"}
    if restart == "plugin-gone":
        env = {"TACHI_LOAD_PLUGINS": ""}
    elif restart == "plugin-repairs":
        env = {
            **installed_plugin(
                tmp_path / "site", "gzcast", GZCAST.format(repair=REPAIR, reader="")
            ),
            **env,
        }
    again = DaemonProcess(tachi_home, extra_env={**daemon.env, **env})
    again.start()
    try:
        (repaired,) = _recordings(again)
        assert path.read_bytes() == before, "the repair changed a file it cannot read"
        assert not repaired["active"] and repaired["size"] == len(before) > 0
        assert "daemon stopped unexpectedly" in repaired["error"]
        if restart == "plugin-repairs":
            assert (path.parent / "repaired-by-plugin").read_text() == path.name
            assert repaired["duration"] == 1_500_000_000
        else:
            assert "not repaired" in repaired["error"]
        assert again.run("record", "verify", rec["id"]).returncode == 0
    finally:
        again.stop()


def _gunzip_partial(data: bytes) -> bytes:
    """What a gzip stream cut short (no trailer yet) decompresses to so far."""
    import zlib

    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    except zlib.error:
        return b""


def test_the_builtin_repair_leaves_a_file_that_is_not_asciicast_alone(tmp_path):
    from tachi.builtins.asciicast import repair_asciicast

    path = tmp_path / "x.cast"
    path.write_bytes(gzip.compress(b"not text at all\n" * 50)[:-5])
    before = path.read_bytes()
    with pytest.raises(ValueError, match="left as it is"):
        repair_asciicast(path)
    assert path.read_bytes() == before
    path.write_bytes(b'{"version": 2, "width": 80, "height": 24}\n[0.5, "o", "hi"]\n[0.7, "o", "cu')
    assert repair_asciicast(path) == 0.5
    assert path.read_bytes().endswith(b'[0.5, "o", "hi"]\n')


def _recorded_gzcast(tachi_home, tmp_path, reader: str) -> tuple[DaemonProcess, str]:
    """A daemon with the gzip recorder installed (with ``reader`` as its export, or
    none) and one finished recording of a session that printed a known line."""
    daemon = _daemon(
        tachi_home, tmp_path, "gzcast", GZCAST.format(repair="", reader=reader), "gzcast"
    )
    s = daemon.new("bash", "--norc", "-c", "echo gz-played-$((6*7)); sleep 300", record=True)
    wait_match(daemon, s["id"], "gz-played-42")
    daemon.run("record", "stop", s["id"], check=True)
    (rec,) = _recordings(daemon)
    assert rec["format"] == "gzcast" and Path(rec["path"]).name.endswith(".cast.gz")
    return daemon, rec["id"]


def test_a_plugins_recording_is_exported_and_played_through_its_recorders_reader(
    tachi_home, tmp_path
):
    import shutil
    import subprocess

    daemon, rec_id = _recorded_gzcast(tachi_home, tmp_path, EXPORT)
    try:
        out = tmp_path / "exported.cast"
        result = daemon.run("record", "export", rec_id, "-o", str(out))
        assert result.returncode == 0, result.stderr
        header = json.loads(out.read_text().split("\n", 1)[0])
        assert header["version"] == 2
        # asciinema itself reads what was exported.
        asciinema = shutil.which("asciinema") or str(Path(sys.executable).parent / "asciinema")
        cat = subprocess.run(
            [asciinema, "cat", str(out)], capture_output=True, text=True, timeout=30
        )
        assert cat.returncode == 0, cat.stderr
        assert "gz-played-42" in cat.stdout

        played = daemon.run("play", rec_id, "--speed", "100")
        assert played.returncode == 0, played.stderr
        assert "gz-played-42" in played.stdout

        # The file itself, played by name, goes through the same reader.
        (rec,) = _recordings(daemon)
        by_file = daemon.run("play", rec["path"], "--speed", "100")
        assert by_file.returncode == 0, by_file.stderr
        assert "gz-played-42" in by_file.stdout
    finally:
        daemon.stop()


def test_a_recording_whose_recorder_has_no_reader_is_refused_leaving_no_file(tachi_home, tmp_path):
    daemon, rec_id = _recorded_gzcast(tachi_home, tmp_path, "")
    try:
        outdir = tmp_path / "out"
        outdir.mkdir()
        result = daemon.run("record", "export", rec_id, "-o", str(outdir / "x.cast"))
        assert result.returncode == 2
        assert "'gzcast'" in result.stderr and "no export(path, out)" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert list(outdir.iterdir()) == [], "export left a file behind"

        played = daemon.run("play", rec_id)
        assert played.returncode == 2 and "no export(path, out)" in played.stderr
        assert played.stdout == ""
    finally:
        daemon.stop()
