"""A plugin that refuses a token of its own scheme is heard: the peer sees the
plugin's reason and the audit record carries it, for the daemon's own user too
(who still gets in without the token). A token of tachi's form stays tachi's
to judge, and the owner's override of the plugin still applies to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import installed_plugin, share
from tachi.audit import read_records
from tachi.testing import DaemonProcess

#: An identity plugin with tokens of its own ("acme-…"): it refuses suspended ones.
ACME = """
import tachi
from tachi.errors import PermissionDenied

@tachi.hookimpl(tryfirst=True)
def tachi_authenticate(peer):
    if peer.token is not None and peer.token.startswith("acme-suspended"):
        raise PermissionDenied("acme: badge 7 is suspended")
    return None
"""
REASON = "acme: badge 7 is suspended"


@pytest.fixture
def acme_daemon(tachi_home: Path, tmp_path: Path):
    env = installed_plugin(tmp_path / "site", "acme", ACME)
    daemon = DaemonProcess(tachi_home, extra_env={**env, "TACHI_LOAD_PLUGINS": "acme"})
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def auth_records(daemon: DaemonProcess) -> list[dict]:
    return [
        r
        for r in read_records(daemon.state_dir / "audit" / "audit.jsonl")
        if r["action"].startswith("auth")
    ]


def test_the_owner_with_a_refused_plugin_token_sees_the_plugins_reason(acme_daemon):
    refused = acme_daemon.run("ls", env={**acme_daemon.env, "TACHI_TOKEN": "acme-suspended-7"})
    assert refused.returncode == 4
    assert REASON in refused.stderr and "unknown token" not in refused.stderr
    (record,) = auth_records(acme_daemon)
    assert (record["action"], record["result"], record["reason"]) == (
        "auth.token",
        "denied",
        REASON,
    )
    # Without the token the owner gets in, as always.
    listed = acme_daemon.run("ls", "--json")
    assert listed.returncode == 0, listed.stderr


def test_a_grant_token_stays_tachis_to_judge_past_a_refusing_plugin(tachi_home, tmp_path):
    """A plugin that refuses every connection with a token is overridden for the
    daemon's own user presenting a token of tachi's form: a grant's token narrows
    the owner to the grant; an unknown one is tachi's "unknown token"."""
    source = ACME.replace('peer.token.startswith("acme-suspended")', "True")
    env = installed_plugin(tmp_path / "site", "acme", source)
    daemon = DaemonProcess(tachi_home, extra_env={**env, "TACHI_LOAD_PLUGINS": "acme"})
    daemon.start()
    try:
        shared, _other = daemon.new("sleep", "60"), daemon.new("sleep", "60")
        grant = share(daemon, shared["id"], "--role", "observer")
        listed = daemon.run("ls", "--json", env={**daemon.env, "TACHI_TOKEN": grant["token"]})
        assert listed.returncode == 0, listed.stderr
        assert [x["id"] for x in json.loads(listed.stdout)] == [shared["id"]]
        bogus = daemon.run("ls", env={**daemon.env, "TACHI_TOKEN": "tachi_" + "x" * 43})
        assert bogus.returncode == 4 and "unknown token" in bogus.stderr
        overridden = [r for r in auth_records(daemon) if r["result"] == "allowed"]
        assert overridden and REASON in overridden[0]["reason"]
    finally:
        daemon.stop()
