"""SPIFFE identities end to end: a real daemon with a TLS WebSocket listener,
real mutual TLS with certificates made here, the real remote CLI."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pki import CA, SERVER_ID, spiffe_daemon, svid_flags

from tachi.testing import DaemonProcess


@dataclass
class Mesh:
    daemon: DaemonProcess
    url: str
    ca: CA
    other: CA
    dir: Path
    bundle: Path

    def client(self, name: str, uri: str | None = None, **kw) -> list[str]:
        cert, key = self.ca.svid(self.dir, name, [uri or f"spiffe://example.org/{name}"], **kw)
        return self.flags(cert, key)

    def flags(self, cert: Path, key: Path, server_id: str = SERVER_ID) -> list[str]:
        return svid_flags(self.url, cert, key, self.bundle, server_id)

    def run(self, flags: list[str], *args: str) -> object:
        return self.daemon.run(*flags, *args, env={"TACHI_TOKEN": ""})


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tachi: "), stderr
    return lines[0]


def _audit(daemon: DaemonProcess) -> list[dict]:
    return json.loads(daemon.run("audit", "--json", check=True).stdout)


@pytest.fixture
def mesh(tachi_home: Path) -> Iterator[Mesh]:
    pki = tachi_home / "pki"
    pki.mkdir()
    ca, other = CA("example.org"), CA("other.org")
    bundle = ca.bundle(pki / "bundle.pem")
    cert, key = ca.svid(pki, "tachid", [SERVER_ID])
    identity = f"""trust_domains = ["example.org"]
trust_bundle = "{bundle}"
svid_cert = "{cert}"
svid_key = "{key}"
"""
    roles = {
        "spiffe://example.org/ops/*": "observer",
        "spiffe://example.org/agent/builder": "owner",
    }
    daemon, url = spiffe_daemon(tachi_home, identity, roles)
    assert url.startswith("wss://")
    try:
        yield Mesh(daemon, url, ca, other, pki, bundle)
    finally:
        daemon.stop()


def test_an_owner_agent_works_with_no_token_and_fills_agent_id(mesh: Mesh):
    agent = mesh.client("builder", "spiffe://example.org/agent/builder")
    made = mesh.run(agent, "new", "-d", "--json", "--", "sleep", "60")
    assert made.returncode == 0, made.stderr
    session = json.loads(made.stdout)
    assert session["agentId"] == "spiffe://example.org/agent/builder"
    listed = json.loads(mesh.run(agent, "ls", "--json").stdout)
    assert [s["id"] for s in listed] == [session["id"]]
    creates = [r for r in _audit(mesh.daemon) if r["action"] == "session.create"]
    assert creates[-1]["principal"] == "spiffe://example.org/agent/builder"


def test_an_operator_fleet_observes_every_session_and_nothing_more(mesh: Mesh):
    s = mesh.daemon.new("sleep", "60")
    ops = mesh.client("alice", "spiffe://example.org/ops/alice")
    assert mesh.run(ops, "get", s["id"]).returncode == 0
    refused = mesh.run(ops, "send", s["id"], "x")
    assert refused.returncode == 4
    _one_line(refused.stderr)
    denied = mesh.run(ops, "new", "-d", "--", "true")
    assert denied.returncode == 4


@pytest.mark.parametrize(
    ("kind", "uris", "options", "reason"),
    [
        ("two-uris", ["spiffe://example.org/a", "spiffe://example.org/b"], {}, "2 URI SANs"),
        ("not-spiffe", ["https://example.org/a"], {}, "does not start with 'spiffe://'"),
        ("ca-leaf", ["spiffe://example.org/ca"], {"ca": True}, "is a CA"),
        ("no-path", ["spiffe://example.org"], {}, "names a trust domain"),
    ],
)
def test_certificates_that_are_not_svids_are_refused_and_audited(mesh, kind, uris, options, reason):
    cert, key = mesh.ca.svid(mesh.dir, kind, uris, **options)
    result = mesh.run(mesh.flags(cert, key), "ls")
    assert result.returncode == 4
    assert reason in _one_line(result.stderr)
    refusals = [r for r in _audit(mesh.daemon) if r["action"] == "auth"]
    assert refusals and reason in refusals[-1]["reason"]
    assert refusals[-1]["details"]["address"] == "127.0.0.1"


def _tls_refusals(daemon: DaemonProcess) -> list[dict]:
    return [r for r in _audit(daemon) if r["action"] == "tls" and r["result"] == "denied"]


def test_an_svid_of_another_trust_domain_is_refused_and_audited(mesh: Mesh):
    cert, key = mesh.other.svid(mesh.dir, "stranger", ["spiffe://other.org/stranger"])
    result = mesh.run(mesh.flags(cert, key), "ls")
    assert result.returncode in (1, 4)
    _one_line(result.stderr)
    assert _tls_refusals(mesh.daemon)


def test_an_expired_svid_is_refused_and_audited(mesh: Mesh):
    result = mesh.run(mesh.client("old", expired=True), "ls")
    assert result.returncode in (1, 4)
    _one_line(result.stderr)
    (refusal,) = _tls_refusals(mesh.daemon)
    assert "expired" in refusal["reason"]


def test_a_daemon_with_the_wrong_spiffe_id_is_refused(mesh: Mesh):
    cert, key = mesh.ca.svid(mesh.dir, "me", ["spiffe://example.org/agent/builder"])
    flags = mesh.flags(cert, key, server_id="spiffe://example.org/another-daemon")
    result = mesh.run(flags, "ls")
    assert result.returncode == 4
    assert "is spiffe://example.org/tachid, not spiffe://example.org/another-daemon" in (
        _one_line(result.stderr)
    )


def test_a_grant_bound_to_a_spiffe_id_is_refused_to_another_svid(mesh: Mesh):
    s = mesh.daemon.new("sleep", "60")
    grant = json.loads(
        mesh.daemon.run(
            "share", s["id"], "--role", "collaborator", "--spiffe-id",
            "spiffe://example.org/bob", "--json", check=True,
        ).stdout
    )  # fmt: skip
    bob = mesh.client("bob")
    eve = mesh.client("eve")
    ok = mesh.daemon.run(*bob, "send", s["id"], "x", env={"TACHI_TOKEN": grant["token"]})
    assert ok.returncode == 0, ok.stderr
    stolen = mesh.daemon.run(*eve, "send", s["id"], "x", env={"TACHI_TOKEN": grant["token"]})
    assert stolen.returncode == 4
    assert "belongs to spiffe://example.org/bob" in _one_line(stolen.stderr)
    assert any("belongs to" in (r.get("reason") or "") for r in _audit(mesh.daemon))


def test_a_rotated_svid_is_used_without_a_restart(mesh: Mesh, tmp_path: Path):
    import socket
    import ssl

    def served_serial() -> int:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        port = int(mesh.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
        from cryptography import x509

        return x509.load_der_x509_certificate(der).serial_number

    before = served_serial()
    fresh_cert, fresh_key = mesh.ca.svid(tmp_path, "tachid-next", [SERVER_ID])
    # As spiffe-helper does: write the key, then the certificate.
    shutil.copy(fresh_key, mesh.dir / "tachid.key")
    shutil.copy(fresh_cert, mesh.dir / "tachid.pem")
    os.utime(mesh.dir / "tachid.pem")
    deadline = time.monotonic() + 10
    while served_serial() == before:
        assert time.monotonic() < deadline, "the new SVID was never served"
        time.sleep(0.3)
    agent = mesh.client("builder", "spiffe://example.org/agent/builder")
    assert mesh.run(agent, "ls").returncode == 0
