"""``[fleet] tls_svid = true``: the daemon's SPIFFE SVID as its TLS client
certificate to NATS, against a real nats-server that verifies client
certificates against the SPIFFE bundle's CA and maps the SVID's SPIFFE ID to a
NATS user (``verify_and_map``). Certificates made here with cryptography."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats_support import NatsServer, fleet, wait_until
from spiffe_pki import CA, SERVER_ID

from tachi.testing import DaemonProcess


@dataclass
class Pki:
    dir: Path
    spiffe: CA
    nats_ca: Path

    def identity(self, spiffe_id: str, name: str) -> str:
        """An ``[identity.spiffe]`` table whose SVID is ``spiffe_id``."""
        bundle = self.spiffe.bundle(self.dir / "bundle.pem")
        cert, key = self.spiffe.svid(self.dir, name, spiffe_id)
        return (
            f'[identity.spiffe]\ntrust_domains = ["example.org"]\ntrust_bundle = "{bundle}"\n'
            f'svid_cert = "{cert}"\nsvid_key = "{key}"\n'
        )


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[tuple[NatsServer, Pki]]:
    """A nats-server that requires a client certificate chaining to example.org's
    CA, and lets in only the NATS user named by the SVID spiffe://example.org/tachid."""
    spiffe, server_ca = CA("example.org"), CA("nats.test")
    cert, key = server_ca.server(tmp_path, "nats-server")
    pki = Pki(tmp_path, spiffe, server_ca.bundle(tmp_path / "nats-ca.pem"))
    directory = Path(tempfile.mkdtemp(prefix="nats-", dir="/tmp"))
    server = NatsServer(
        directory,
        extra=(
            f'tls {{ cert_file: "{cert}", key_file: "{key}",'
            f' ca_file: "{spiffe.bundle(tmp_path / "clients-ca.pem")}",'
            " verify_and_map: true, timeout: 3 }\n"
            f'authorization {{ users: [ {{ user: "{SERVER_ID}" }} ] }}\n'
        ),
    )
    server.start()
    try:
        yield server, pki
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _daemon(home: Path, url: str, fleet_lines: str, identity: str) -> DaemonProcess:
    home.mkdir(exist_ok=True)
    config = f'[fleet]\nurl = "{url}"\nhost = "svid-host"\n{fleet_lines}\n{identity}'
    return DaemonProcess(home, {"TACHI_LOAD_PLUGINS": "nats,spiffe"}, config=config)


def _sessions(daemon: DaemonProcess) -> list[dict] | None:
    """``tachi fleet ls --json`` with the daemon's config, ``None`` while empty or refused."""
    listed = fleet(daemon, "ls", "--json", check=False)
    return listed if isinstance(listed, list) and listed else None


def test_the_daemon_joins_the_fleet_with_its_svid_as_tls_client_certificate(tls_nats):
    server, pki = tls_nats
    url = f"tls://127.0.0.1:{server.port}"
    home = Path(tempfile.mkdtemp(prefix="tachi-", dir="/tmp"))
    tls = f'tls_ca = "{pki.nats_ca}"\ntls_svid = true\n'
    daemon = _daemon(home, url, tls, pki.identity(SERVER_ID, "tachid"))
    try:
        daemon.start()
        made = daemon.new("sleep", "300")
        # The daemon's registry entry, read back by `tachi fleet ls` with the same SVID.
        listed = wait_until(lambda: _sessions(daemon), 15, "the session in the fleet")
        assert [s["id"] for s in listed] == [made["id"]]
        assert listed[0]["host"] == "svid-host"
        for name, lines, identity in (
            # A valid SVID of the bundle, but NATS maps it to a user it does not know.
            ("another SPIFFE ID", tls, pki.identity("spiffe://example.org/stranger", "stranger")),
            # The same SVID configured, but not presented: no client certificate.
            ("no tls_svid", f'tls_ca = "{pki.nats_ca}"\n', pki.identity(SERVER_ID, "tachid2")),
        ):
            other = _daemon(home / name.replace(" ", "-"), url, lines, identity)
            refused = other.run("fleet", "hosts")
            assert refused.returncode == 1 and "cannot reach NATS" in refused.stderr, name
    finally:
        with contextlib.suppress(Exception):
            daemon.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_tls_svid_without_an_svid_to_present_is_a_clear_error(tmp_path: Path):
    for identity, hint in (
        ("", "svid_cert and svid_key, which are not set"),
        (
            '[identity.spiffe]\ntrust_domains = ["example.org"]\nworkload_api = "unix:///x"\n',
            "workload_api is not supported",
        ),
    ):
        home = tmp_path / str(len(hint))
        home.mkdir()
        config = f'[fleet]\nurl = "tls://127.0.0.1:1"\ntls_svid = true\n{identity}'
        (home / "config.toml").write_text(config)
        result = DaemonProcess(home, {"TACHI_LOAD_PLUGINS": "nats"}).run("fleet", "hosts")
        assert result.returncode != 0
        assert "tls_svid = true" in result.stderr and hint in result.stderr


def test_a_rotated_svid_is_presented_when_the_daemon_reconnects(tls_nats):
    """SVIDs are short-lived: the daemon keeps its connection through a rotation
    of the files, and presents the new SVID when it next connects. Here the
    trust domain's CA itself is rotated: once nats-server trusts only the new
    CA, only the new SVID gets in."""
    server, pki = tls_nats
    url = f"tls://127.0.0.1:{server.port}"
    home = Path(tempfile.mkdtemp(prefix="tachi-", dir="/tmp"))
    tls = f'tls_ca = "{pki.nats_ca}"\ntls_svid = true\n'
    daemon = _daemon(home, url, tls, pki.identity(SERVER_ID, "tachid"))
    try:
        daemon.start()
        first = daemon.new("sleep", "300")
        wait_until(lambda: _sessions(daemon), 15, "the first session in the fleet")
        # The SPIRE agent writes the new SVID (from the new CA) over the same files.
        rotated = CA("example.org")
        cert, key = rotated.svid(pki.dir, "rotated", SERVER_ID)
        (pki.dir / "tachid.key").write_bytes(key.read_bytes())
        (pki.dir / "tachid.pem").write_bytes(cert.read_bytes())
        server.stop()
        server.extra = server.extra.replace(
            str(pki.dir / "clients-ca.pem"), str(rotated.bundle(pki.dir / "rotated-ca.pem"))
        )
        server.start()
        second = daemon.new("sleep", "300")
        listed = wait_until(
            lambda: (s := _sessions(daemon)) and len(s) == 2 and s, 30, "both sessions"
        )
        assert {s["id"] for s in listed} == {first["id"], second["id"]}
    finally:
        with contextlib.suppress(Exception):
            daemon.stop()
        shutil.rmtree(home, ignore_errors=True)
