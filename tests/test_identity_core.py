"""The identity layer every transport goes through: peers, the authenticate hook,
the built-in token wrapper, daemon-wide IP rules, and sharing with local users
through a socket that needs no ACL tool."""

from __future__ import annotations

import json
import os
import stat

import pytest

import tachi
from tachi.audit import read_records
from tachi.config import Config, _from_raw
from tachi.core.peer import Peer
from tachi.core.principal import Principal
from tachi.errors import InvalidRequest, PermissionDenied
from tachi.models import SessionRequest
from tachi.testing import DaemonProcess, inprocess_daemon
from users import as_user, ensure_users


def audit_of(daemon) -> list[dict]:
    return list(read_records(daemon.audit_log.path))


class OneUidOnly:
    """A third-party authenticator: vouches for nobody, refuses one uid outright."""

    def __init__(self, refused_uid: int) -> None:
        self.refused_uid = refused_uid
        self.seen: list[Peer] = []

    @tachi.hookimpl(tryfirst=True)
    def tachi_authenticate(self, peer: Peer) -> Principal | None:
        self.seen.append(peer)
        if peer.uid == self.refused_uid:
            raise PermissionDenied("uid refused by the site policy")
        return None


async def test_every_unix_connection_goes_through_the_authenticate_hook(tachi_home):
    plugin = OneUidOnly(refused_uid=os.getuid())
    audit: list[dict] = []

    class Audit:
        @tachi.hookimpl
        def tachi_audit_event(self, event):
            audit.append(event)

    # The daemon's own user is let in all the same (it could kill the daemon
    # anyway, and must be able to stop it), but the refusal is on record.
    async with (
        inprocess_daemon(tachi_home, [plugin, Audit()]) as daemon,
        await tachi.AsyncClient.connect(daemon.config.socket, autostart=False) as client,
    ):
        assert (await client.status())["pid"] == os.getpid()
    assert plugin.seen and plugin.seen[0].transport == "unix"
    assert plugin.seen[0].uid == os.getuid() and plugin.seen[0].pid
    refused = [e for e in audit if e["action"] == "auth" and e["details"].get("plugin")]
    assert refused and "uid refused by the site policy" in refused[0]["reason"]
    assert refused[0]["source"].startswith(f"uid:{os.getuid()}")


async def test_a_plugin_principal_is_what_the_daemon_acts_as(tachi_home):
    class Renamer:
        @tachi.hookimpl(tryfirst=True)
        def tachi_authenticate(self, peer: Peer) -> Principal | None:
            return Principal(user="robot-7", uid=None, source=peer.source, kind="robot")

    class AllowRobots:
        @tachi.hookimpl
        def tachi_authorize(self, principal, action, session):
            return True if principal.kind == "robot" else None

    async with inprocess_daemon(tachi_home, [Renamer(), AllowRobots()]) as daemon:
        client = await tachi.AsyncClient.connect(daemon.config.socket, autostart=False)
        async with client:
            s = await client.create(SessionRequest(command=["sleep", "30"]))
            assert s.userId == "robot-7"
            await client.close(s.id)
        records = [r for r in audit_of(daemon) if r["action"] == "session.create"]
    assert records[-1]["principal"] == "robot-7"


def test_daemon_wide_ip_rules():
    cfg = _from_raw({"security": {"allow_ip": ["127.0.0.0/8", "::1/128"], "deny_ip": "127.0.0.2"}})
    assert cfg.address_refusal("127.0.0.1") is None
    assert cfg.address_refusal("::1") is None
    assert cfg.address_refusal("::ffff:127.0.0.1") is None  # IPv4-mapped counts as IPv4
    assert "denied by deny_ip" in (cfg.address_refusal("127.0.0.2") or "")
    assert "not in allow_ip" in (cfg.address_refusal("192.0.2.1") or "")
    assert "unparsable" in (cfg.address_refusal("not-an-ip") or "")
    assert Config().address_refusal("192.0.2.1") is None  # no rules: everyone
    with pytest.raises(ValueError, match="allow_ip"):
        _from_raw({"security": {"allow_ip": ["300.1.1.1/8"]}})


def test_peer_sources_name_the_address():
    assert Peer("websocket", address="127.0.0.2", port=5000).source == "websocket:127.0.0.2:5000"
    assert Peer("websocket", address="::1", port=1).source == "websocket:[::1]:1"
    assert Peer("unix", uid=0, pid=7).source == "uid:0,pid:7"


async def test_a_network_peer_is_refused_by_the_ip_rules_before_any_hook(tachi_home):
    plugin = OneUidOnly(refused_uid=-1)
    async with inprocess_daemon(tachi_home, [plugin]) as daemon:
        daemon.config.deny_ip = _from_raw({"security": {"deny_ip": ["127.0.0.2"]}}).deny_ip
        peer = Peer("websocket", address="127.0.0.2", port=4242)
        with pytest.raises(PermissionDenied, match=r"127\.0\.0\.2"):
            daemon.authenticate(peer)
        assert plugin.seen == []
        # Nobody vouches for a network peer without a token: refused, audited.
        with pytest.raises(PermissionDenied, match="no identity"):
            daemon.authenticate(Peer("websocket", address="127.0.0.1", port=4243))
        records = [r for r in audit_of(daemon) if r["result"] == "denied"]
    assert [r["source"] for r in records] == [
        "websocket:127.0.0.2:4242",
        "websocket:127.0.0.1:4243",
    ]


async def test_a_user_bound_token_is_refused_to_an_anonymous_network_peer(tachi_home):
    async with inprocess_daemon(tachi_home) as daemon:
        client = await tachi.AsyncClient.connect(daemon.config.socket, autostart=False)
        async with client:
            s = await client.create(SessionRequest(command=["sleep", "30"]))
            bound = await client.call("share.create", session=s.id, role="observer", user="root")
            anyone = await client.call("share.create", session=s.id, role="observer")
            peer = Peer("websocket", address="127.0.0.1", port=1)
            with pytest.raises(PermissionDenied, match="belongs to root"):
                daemon.authenticate(peer.with_token(bound["token"]))
            p = daemon.authenticate(peer.with_token(anyone["token"]))
            assert (p.kind, p.grant_role, p.uid) == ("token", "observer", None)
            assert p.peer_ip == "127.0.0.1"
            with pytest.raises(PermissionDenied):
                daemon.authenticate(peer.with_token("t_" + "0" * 43))
            await client.close(s.id)


def test_share_with_a_local_user_needs_no_acl_tool(tachi_daemon):
    users = ensure_users()
    s = tachi_daemon.new("bash", "--norc")
    out = tachi_daemon.run("share", s["id"], "--role", "observer", "--user", "tachi-alice")
    assert out.returncode == 0, out.stderr
    shared = tachi_daemon.shared_socket
    # The printed command is the one alice runs: the shared socket, no token.
    assert out.stdout.strip() == f"tachi --socket {shared} attach {s['id']}"
    assert "token (shown once)" not in out.stderr and "t_" not in out.stdout + out.stderr
    assert stat.S_IMODE(os.stat(tachi_daemon.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o666
    assert stat.S_IMODE(os.stat(shared.parent).st_mode) == 0o711
    status = json.loads(tachi_daemon.run("daemon", "status", "--json", check=True).stdout)
    assert status["listeners"][0]["shared"] == f"unix:{shared}"

    def alice_gets_the_session():
        from tachi.client.sync import Client

        with Client(shared, autostart=False) as c:
            return c.get(s["id"]).id

    assert as_user("tachi-alice", alice_gets_the_session) == s["id"]

    def bob_is_refused():
        try:
            tachi_daemon.client(shared=True).disconnect()
        except PermissionDenied as exc:
            return str(exc)
        return "admitted"

    assert "holds no grant" in as_user("tachi-bob", bob_is_refused)
    assert users["tachi-bob"]


def test_a_squatted_shared_directory_is_refused(tachi_home):
    users = ensure_users()
    # Someone else made the shared directory first (a squatter in /tmp).
    shared_dir = tachi_home / "shared"
    shared_dir.mkdir()
    os.chown(shared_dir, users["tachi-bob"], -1)
    os.chmod(tachi_home, 0o755)
    daemon = DaemonProcess(tachi_home, extra_env={"TACHI_SHARED_DIR": str(shared_dir)})
    daemon.start()
    try:
        s = daemon.new("bash", "--norc")
        out = daemon.run("share", s["id"], "--role", "observer", "--user", "tachi-alice")
        assert out.returncode != 0
        assert "not a directory of yours" in out.stderr
        assert out.stderr.count("\n") == 1
        # Nothing half-made, and the daemon and its session are unharmed.
        grants = daemon.run("share", "ls", s["id"], "--all", "--json", check=True)
        assert json.loads(grants.stdout) == []
        assert daemon.run("get", s["id"]).returncode == 0
    finally:
        daemon.stop()


def test_invalid_ip_config_is_one_clear_error(tachi_home):
    (tachi_home / "config.toml").write_text('[security]\ndeny_ip = ["nope"]\n')
    from tachi import config

    with pytest.raises(InvalidRequest, match="deny_ip"):
        config.load(tachi_home / "config.toml")
