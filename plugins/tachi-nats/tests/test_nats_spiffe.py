"""SPIFFE X.509-SVIDs through the NATS relay, end to end: a real nats-server, a
real daemon with ``[fleet]`` and ``[identity.spiffe]`` that only dials out, the
real CLI with ``--host nats://SERVER/HOST --svid-cert …``, certificates made
here. No TLS runs between client and daemon: each side proves its SVID by
signing this connection's handshake."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats_support import NatsServer, fleet_config, wait_until
from spiffe_pki import CA, SERVER_ID

from tachi.testing import DaemonProcess

HOST = "spiffe-1"
BUILDER = "spiffe://example.org/agent/builder"


@dataclass
class Mesh:
    daemon: DaemonProcess
    nats: NatsServer
    ca: CA
    other: CA
    dir: Path
    bundle: Path

    @property
    def url(self) -> str:
        return f"{self.nats.url}/{HOST}"

    def svid(self, name: str, spiffe_id: str, ca: CA | None = None) -> list[str]:
        cert, key = (ca or self.ca).svid(self.dir, name, spiffe_id)
        return ["--svid-cert", str(cert), "--svid-key", str(key)]

    def run(self, *args: str, token: str = "") -> subprocess.CompletedProcess[str]:
        """``tachi --host nats://…/HOST ARGS`` as a real process, no token unless given."""
        return self.daemon.run("--host", self.url, *args, env={"TACHI_TOKEN": token}, timeout=30)

    def server_check(self, server_id: str = SERVER_ID) -> list[str]:
        return ["--trust-bundle", str(self.bundle), "--server-id", server_id]


def _serving(daemon: DaemonProcess) -> bool:
    status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
    return any(x["transport"] == "nats" and x.get("connected") for x in status["listeners"])


def _audit(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return json.loads(daemon.run("audit", "--json", check=True).stdout)


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tachi: "), stderr
    return lines[0]


def _fleet_daemon(home: Path, nats: NatsServer, identity: str, plugins: str) -> DaemonProcess:
    daemon = DaemonProcess(
        home,
        {"TACHI_LOAD_PLUGINS": plugins},
        config=fleet_config(nats.url, HOST, "heartbeat = 1\n\n" + identity),
    )
    daemon.start()
    try:
        wait_until(lambda: _serving(daemon), 10, "the daemon serving through NATS")
    except BaseException:
        daemon.stop()
        raise
    return daemon


@pytest.fixture
def mesh(nats_server: NatsServer) -> Iterator[Mesh]:
    home = Path(tempfile.mkdtemp(prefix="tachi-", dir="/tmp"))
    pki = home / "pki"
    pki.mkdir()
    ca, other = CA("example.org"), CA("other.org")
    bundle = ca.bundle(pki / "bundle.pem")
    cert, key = ca.svid(pki, "tachid", SERVER_ID)
    identity = f"""[identity.spiffe]
trust_domains = ["example.org"]
trust_bundle = "{bundle}"
svid_cert = "{cert}"
svid_key = "{key}"

[[identity.spiffe.roles]]
id = "{BUILDER}"
role = "owner"
"""
    daemon = _fleet_daemon(home, nats_server, identity, "nats,spiffe")
    try:
        yield Mesh(daemon, nats_server, ca, other, pki, bundle)
    finally:
        with contextlib.suppress(Exception):
            daemon.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_an_svid_works_through_nats_with_no_token_and_is_audited_by_its_id(mesh: Mesh):
    builder = mesh.svid("builder", BUILDER)
    made = mesh.run(*builder, *mesh.server_check(), "new", "-d", "--json", "--", "sleep", "60")
    assert made.returncode == 0, made.stderr + mesh.daemon.log.read_text()
    session = json.loads(made.stdout)
    assert session["agentId"] == BUILDER
    listed = mesh.run(*builder, *mesh.server_check(), "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [s["id"] for s in json.loads(listed.stdout)] == [session["id"]]
    create = [r for r in _audit(mesh.daemon) if r["action"] == "session.create"][-1]
    assert create["principal"] == BUILDER
    assert create["source"] == "nats:127.0.0.1"
    # Without the SVID (and no token) the same client is nobody.
    nobody = mesh.run("ls")
    assert nobody.returncode == 4
    assert "no identity accepted" in _one_line(nobody.stderr)


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        # A domain this daemon does not trust at all.
        ("spiffe://other.org/mallory", "untrusted trust domain"),
        # Our domain's name, minted by another domain's CA (SPIFFE federation:
        # an SVID must chain to its own domain's bundle).
        ("spiffe://example.org/agent/builder", "not signed by a CA of example.org"),
    ],
)
def test_an_svid_of_another_trust_domain_is_refused_and_audited(mesh: Mesh, who, reason):
    result = mesh.run(*mesh.svid("mallory", who, mesh.other), "ls")
    assert result.returncode == 4
    assert reason in _one_line(result.stderr)
    refusal = [r for r in _audit(mesh.daemon) if r["action"] == "auth"][-1]
    assert refusal["result"] == "denied" and reason in refusal["reason"]
    assert refusal["source"] == "nats:127.0.0.1"
    assert not [r for r in _audit(mesh.daemon) if r["action"] == "session.create"]


async def _open(mesh: Mesh, nc: Any) -> tuple[Any, Any, asyncio.Queue[tuple[int, bytes]]]:
    """A virtual connection opened by hand: (channel, keys, queue of (kind, body))."""
    from tachi_nats.transport import Broken, Channel, client_handshake, client_keys, subjects

    connect, _, _ = subjects("tachi", HOST)
    ephemeral, request = client_handshake()
    reply = json.loads((await nc.request(connect, json.dumps(request).encode(), timeout=5)).data)
    keys, _ = client_keys(ephemeral, reply, None)
    _, up, down = subjects("tachi", HOST, reply["id"])
    received: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()

    async def publish(data: bytes) -> None:
        await nc.publish(up, data)

    channel = Channel(publish, reply["window"], keys)

    async def on_down(msg: Any) -> None:
        try:
            await received.put(channel.receive(msg.data))
        except Broken as exc:
            await received.put((-1, str(exc).encode()))

    await nc.subscribe(down, cb=on_down)
    await nc.flush(5)
    return channel, keys, received


def test_a_proof_replayed_on_another_connection_is_refused(mesh: Mesh):
    """A relay that got hold of a client's signed proof (it sees every
    connection's ciphertext; an active one may end an unpinned client's first
    connection itself) cannot use it on a connection of its own: the signature
    covers the connection's handshake."""
    import nats
    from tachi_nats.identity import CLIENT, prove
    from tachi_nats.transport import PROOF

    cert, key = mesh.ca.svid(mesh.dir, "builder", BUILDER)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        nc = await nats.connect(mesh.nats.url)
        try:
            _, keys_a, _ = await _open(mesh, nc)
            proof_a = prove(cert, key, CLIENT, keys_a.binding)
            # Connection B, with connection A's proof.
            channel_b, _, received_b = await _open(mesh, nc)
            await channel_b.send(PROOF, proof_a)
            kind, body = await asyncio.wait_for(received_b.get(), 10)
            assert kind == PROOF, (kind, body)
            replayed = json.loads(body)
            # Connection C, with its own proof: accepted (the SVID is fine).
            channel_c, keys_c, received_c = await _open(mesh, nc)
            await channel_c.send(PROOF, prove(cert, key, CLIENT, keys_c.binding))
            kind, body = await asyncio.wait_for(received_c.get(), 10)
            assert kind == PROOF, (kind, body)
            return replayed, json.loads(body)
        finally:
            await nc.close()

    replayed, own = asyncio.run(main())
    assert "error" in replayed and "made for another one" in replayed["error"]["message"]
    assert own == {"ok": True, "id": BUILDER}
    refusal = [r for r in _audit(mesh.daemon) if r["action"] == "auth"][-1]
    assert "made for another one" in refusal["reason"]


def test_the_client_refuses_a_daemon_that_is_not_its_server_id(mesh: Mesh):
    builder = mesh.svid("builder", BUILDER)
    wrong = mesh.run(*builder, *mesh.server_check("spiffe://example.org/impostor"), "ls")
    assert wrong.returncode == 4
    line = _one_line(wrong.stderr)
    assert f"is {SERVER_ID}, not spiffe://example.org/impostor" in line
    # Refused before anything was sent: the daemon saw no proof and no hello.
    assert not [r for r in _audit(mesh.daemon) if r["action"] in ("auth", "session.create")]
    # A bundle of another domain's CA cannot vouch for the daemon either.
    foreign = mesh.other.bundle(mesh.dir / "foreign.pem")
    args = ["--trust-bundle", str(foreign), "--server-id", SERVER_ID]
    refused = mesh.run(*builder, *args, "ls")
    assert refused.returncode == 4
    assert "not signed by a CA of example.org" in _one_line(refused.stderr)
    right = mesh.run(*builder, *mesh.server_check(), "ls", "--json")
    assert right.returncode == 0, right.stderr


def test_the_client_refuses_a_daemon_without_an_svid_when_it_wants_a_server_id(
    nats_server: NatsServer, tmp_path: Path
):
    ca = CA("example.org")
    bundle = ca.bundle(tmp_path / "bundle.pem")
    home = Path(tempfile.mkdtemp(prefix="tachi-", dir="/tmp"))
    daemon = _fleet_daemon(home, nats_server, "", "nats,spiffe")
    try:
        token = json.loads(daemon.run("token", "create", "--json", check=True).stdout)["token"]
        url = f"{nats_server.url}/{HOST}"
        flags = ["--trust-bundle", str(bundle), "--server-id", SERVER_ID]
        env = {"TACHI_TOKEN": token}
        refused = daemon.run("--host", url, *flags, "ls", env=env, timeout=30)
        assert refused.returncode == 4
        assert "proved no SPIFFE ID" in _one_line(refused.stderr)
        # The token never reached it: no hello was sent, so nothing was audited.
        assert not [r for r in _audit(daemon) if r["action"].startswith("auth")]
        assert daemon.run("--host", url, "ls", env=env, timeout=30).returncode == 0
        # An SVID offered to a daemon that has no [identity.spiffe]: refused, saying why.
        cert, key = ca.svid(tmp_path, "builder", BUILDER)
        svid = ["--svid-cert", str(cert), "--svid-key", str(key)]
        offered = daemon.run("--host", url, *svid, "ls", env={"TACHI_TOKEN": ""}, timeout=30)
        assert offered.returncode == 4
        assert "no [identity.spiffe]" in _one_line(offered.stderr)
    finally:
        with contextlib.suppress(Exception):
            daemon.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_an_svid_offered_to_a_daemon_without_tachi_spiffe_is_refused_saying_why(
    nats_server: NatsServer, tmp_path: Path
):
    ca = CA("example.org")
    cert, key = ca.svid(tmp_path, "builder", BUILDER)
    home = Path(tempfile.mkdtemp(prefix="tachi-", dir="/tmp"))
    daemon = _fleet_daemon(home, nats_server, "", "nats")
    try:
        url = f"{nats_server.url}/{HOST}"
        svid = ["--svid-cert", str(cert), "--svid-key", str(key)]
        offered = daemon.run("--host", url, *svid, "ls", env={"TACHI_TOKEN": ""}, timeout=30)
        assert offered.returncode == 4
        assert "tachi-spiffe plugin is not loaded" in _one_line(offered.stderr)
        refusal = [r for r in _audit(daemon) if r["action"] == "auth"][-1]
        assert "tachi-spiffe plugin is not loaded" in refusal["reason"]
        # Nor is tachi-spiffe imported there to find that out: it would bring its
        # Workload API client (grpc, ~18 MiB) into a daemon that never uses it.
        assert daemon.proc is not None
        maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
        assert "grpc" not in maps
    finally:
        with contextlib.suppress(Exception):
            daemon.stop()
        shutil.rmtree(home, ignore_errors=True)
