"""The example plugins under examples/, written from docs/plugins.md alone, each
installed as pip would install it (a .dist-info with the entry point its
pyproject.toml declares) and doing what the issue asked a plugin author to be
able to do: an input policy, a recorder with playback, an audit sink that loses
nothing at stop, a token scheme of its own, and a TCP transport."""

from __future__ import annotations

import gzip
import json
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import tcp_relay, wait_match
from tachi.audit import read_records
from tachi.testing import DaemonProcess

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PLUGINS = ("guard", "gzcast", "auditfile", "acme", "tcpfwd")


def install(example: Path, site: Path) -> tuple[str, str]:
    """Install ``example`` into ``site`` without pip: its module stays where it
    is (on PYTHONPATH) and ``site`` gets the distribution's metadata with the
    entry points of its pyproject.toml. Returns (entry point name, directory)."""
    project = tomllib.loads((example / "pyproject.toml").read_text())["project"]
    ((name, target),) = project["entry-points"]["tachi"].items()
    dist = project["name"].replace("-", "_")
    info = site / f"{dist}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    (info / "entry_points.txt").write_text(f"[tachi]\n{name} = {target}\n")
    return name, str(example)


@pytest.fixture
def daemon(tachi_home: Path, tmp_path: Path) -> Iterator[DaemonProcess]:
    site = tmp_path / "site"
    installed = [install(EXAMPLES / f"tachi-{p}", site) for p in PLUGINS]
    assert [name for name, _ in installed] == list(PLUGINS)
    path = [str(site), *(d for _, d in installed)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    config = (
        '[recording]\nformat = "gzcast"\n'
        f'[plugins.auditfile]\npath = "{tmp_path / "shipped.jsonl"}"\n'
    )
    env = {"PYTHONPATH": os.pathsep.join(path), "TACHI_LOAD_PLUGINS": ",".join(PLUGINS)}
    d = DaemonProcess(tachi_home, extra_env=env, config=config)
    d.start()
    yield d
    d.stop()


def test_the_five_example_plugins_installed_together(daemon, tmp_path):
    loaded = {p["name"] for p in json.loads(daemon.run("plugins", "--json", check=True).stdout)}
    assert set(PLUGINS) <= loaded

    # guard: an input policy. `rm -rf /` never reaches the session.
    cat = daemon.new("cat")
    refused = daemon.run("send", cat["id"], "rm -rf /\n")
    assert refused.returncode == 4 and "tachi-guard" in refused.stderr
    assert daemon.run("send", cat["id"], "echo fine\n").returncode == 0

    # gzcast: a recorder, and its reader behind `record export` and `play`.
    s = daemon.new("bash", "--norc", "-c", "echo gz-example-$((6*7)); sleep 300", record=True)
    wait_match(daemon, s["id"], "gz-example-42")
    daemon.run("record", "stop", s["id"], check=True)
    (rec,) = json.loads(daemon.run("record", "ls", "--json", check=True).stdout)
    assert rec["format"] == "gzcast"
    assert b"gz-example-42" in gzip.decompress(Path(rec["path"]).read_bytes())
    out = tmp_path / "exported.cast"
    daemon.run("record", "export", rec["id"], "-o", str(out), check=True)
    assert json.loads(out.read_text().splitlines()[0])["version"] == 2
    played = daemon.run("play", rec["id"], "--speed", "100", check=True)
    assert "gz-example-42" in played.stdout

    # acme: its own token scheme; the session is alice's, and the log says acme.
    made = daemon.run(
        "new", "-d", "--json", "--", "sleep", "60", env={"TACHI_TOKEN": "acme-7f3a9c"}
    )
    assert made.returncode == 0, made.stderr
    wrong = daemon.run("ls", env={"TACHI_TOKEN": "acme-000000"})
    assert wrong.returncode == 4, wrong.stderr  # the client is told little; the log says why

    # tcpfwd: a transport. The CLI reaches the daemon over TCP.
    with tcp_relay(daemon.socket) as port:
        env = {"TACHI_SOCKET": str(tmp_path / "nothing-here.sock")}
        listed = daemon.run("--host", f"tcpfwd://127.0.0.1:{port}", "ls", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(made.stdout)["id"] in {x["id"] for x in json.loads(listed.stdout)}

    # auditfile: every record written before `tachi daemon stop` is shipped.
    daemon.run("daemon", "stop", check=True)
    assert daemon.proc is not None
    daemon.proc.wait(20)
    written = list(read_records(daemon.state_dir / "audit" / "audit.jsonl"))
    shipped = [json.loads(x) for x in (tmp_path / "shipped.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in shipped] == [r["seq"] for r in written]
    assert written[-1]["action"] == "daemon.stop"
    acme = [r for r in written if r["action"] == "session.create" and r["principal"] == "alice"]
    assert acme and acme[0]["details"]["principalKind"] == "acme"
    denied = [r["action"] for r in written if r["result"] == "denied"]
    assert denied == ["session.write", "auth.token"]  # rm -rf /, and the wrong acme token
