"""Trust domains stay apart, and leaves stay leaves (issue 26: F11, F12).

A real daemon with the TLS WebSocket listener and the SPIFFE plugin, two trust
domains (example.org, partner.org) and certificates made here with
cryptography; the real remote CLI presents them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pki import CA, SERVER_ID, spiffe_daemon, svid_flags

from tachi.testing import DaemonProcess

BUILDER = "spiffe://example.org/ci/builder"


@dataclass
class Federation:
    daemon: DaemonProcess
    url: str
    example: CA
    partner: CA
    dir: Path
    bundle: Path

    def run(self, ca: CA, name: str, uri: str, *args: str, **svid_options) -> object:
        cert, key = ca.svid(self.dir, name, [uri], **svid_options)
        flags = svid_flags(self.url, cert, key, self.bundle)
        return self.daemon.run(*flags, *args, env={"TACHI_TOKEN": ""})

    def audit(self) -> list[dict]:
        return json.loads(self.daemon.run("audit", "--json", check=True).stdout)


def _start(home: Path, bundles: str, example: CA, partner: CA, pki: Path) -> Federation:
    cert, key = example.svid(pki, "tachid", [SERVER_ID])
    identity = f"""trust_domains = ["example.org", "partner.org"]
{bundles}
svid_cert = "{cert}"
svid_key = "{key}"
"""
    roles = {BUILDER: "owner", "spiffe://partner.org/*": "observer"}
    daemon, url = spiffe_daemon(home, identity, roles)
    # The clients verify the daemon (an example.org SVID) with this file.
    return Federation(daemon, url, example, partner, pki, example.bundle(pki / "client.pem"))


def _one_file(home: Path, example: CA, other: CA) -> Federation:
    """The daemon trusting both CAs from one bundle file (told apart by their
    spiffe://DOMAIN URI SAN)."""
    pki = home / "pki"
    pki.mkdir()
    bundles = f'trust_bundle = "{example.bundle(pki / "both.pem", other)}"'
    return _start(home, bundles, example, other, pki)


@pytest.fixture(params=["one-file", "per-domain"])
def federation(request, tachi_home: Path) -> Iterator[Federation]:
    """Both domains trusted: in one bundle file (:func:`_one_file`) or one
    file per domain (``trust_bundles``)."""
    example, partner = CA("example.org"), CA("partner.org")
    if request.param == "one-file":
        fed = _one_file(tachi_home, example, partner)
    else:
        pki = tachi_home / "pki"
        pki.mkdir()
        bundles = (
            f'trust_bundles = {{ "example.org" = "{example.bundle(pki / "e.pem")}",'
            f' "partner.org" = "{partner.bundle(pki / "p.pem")}" }}'
        )
        fed = _start(tachi_home, bundles, example, partner, pki)
    try:
        yield fed
    finally:
        fed.daemon.stop()


def test_a_partner_ca_cannot_mint_an_svid_of_our_trust_domain(federation: Federation):
    """F11: partner.org's CA is trusted for partner.org only; its certificate
    for spiffe://example.org/ci/builder (an owner) is refused and audited."""
    fed = federation
    forged = fed.run(fed.partner, "forged", BUILDER, "new", "-d", "--json", "--", "true")
    assert forged.returncode == 4, forged.stdout
    assert "not signed by a CA of example.org's trust bundle" in forged.stderr
    assert json.loads(fed.daemon.run("ls", "--json", check=True).stdout) == []
    refusals = [r for r in fed.audit() if r["action"] == "auth" and r["result"] == "denied"]
    assert any("partner.org CA" in r["reason"] for r in refusals), refusals
    # Each CA still vouches for its own domain.
    made = fed.run(fed.example, "builder", BUILDER, "new", "-d", "--json", "--", "sleep", "30")
    assert made.returncode == 0, made.stderr
    session = json.loads(made.stdout)
    seen = fed.run(fed.partner, "pat", "spiffe://partner.org/pat", "get", session["id"])
    assert seen.returncode == 0, seen.stderr
    # ...and our CA cannot mint partner.org IDs either.
    assert fed.run(fed.example, "fake-pat", "spiffe://partner.org/pat", "ls").returncode == 4


def test_an_svid_through_an_intermediate_of_its_own_domain_is_accepted(tachi_home: Path):
    """The per-domain check follows the chain the handshake verified: an
    intermediate CA of example.org (SPIRE with an upstream authority) works,
    one of partner.org does not."""
    example, partner = CA("example.org"), CA("partner.org")
    fed = _one_file(tachi_home, example, partner)
    try:
        ours = CA("example.org", parent=example)
        made = fed.run(ours, "via-intermediate", BUILDER, "ls")
        assert made.returncode == 0, made.stderr
        theirs = CA("partner.org", parent=partner)
        forged = fed.run(theirs, "forged-via-intermediate", BUILDER, "ls")
        assert forged.returncode == 4
        assert "not signed by a CA of example.org's trust bundle" in forged.stderr
    finally:
        fed.daemon.stop()


def test_a_shared_bundle_with_a_ca_of_no_known_domain_is_a_config_error(tachi_home: Path):
    """With several domains in one file, a CA that names no domain cannot be
    placed: the daemon says so at start instead of trusting it for all."""
    example, nameless = CA("example.org"), CA("partner.org", uri_san=False)
    with pytest.raises(RuntimeError) as failed:
        _one_file(tachi_home, example, nameless)
    assert "names no trust domain" in str(failed.value)
    assert "trust_bundles" in str(failed.value)


@pytest.mark.parametrize(
    ("name", "options", "reason"),
    [
        (
            "no-constraints",
            {"basic_constraints": False, "key_cert_sign": True},
            "no BasicConstraints",
        ),
        ("cert-signer", {"key_cert_sign": True}, "may sign certificates"),
    ],
)
def test_a_leaf_that_may_sign_certificates_is_refused(tachi_home, name, options, reason):
    """F12: the X.509-SVID leaf rules, as the spiffe library applies them."""
    example, partner = CA("example.org"), CA("partner.org")
    fed = _one_file(tachi_home, example, partner)
    try:
        result = fed.run(example, name, BUILDER, "ls", **options)
        assert result.returncode == 4, result.stdout
        assert reason in result.stderr
        refusals = [r for r in fed.audit() if r["action"] == "auth" and r["result"] == "denied"]
        assert any(reason in r["reason"] for r in refusals), refusals
    finally:
        fed.daemon.stop()


def test_an_owner_svid_may_not_mint_daemon_tokens_or_exec(federation: Federation):
    """F10: the owner role acts as the daemon's user for sessions; a daemon
    token it minted would outlive the SVID, and exec is the local owner's."""
    fed = federation
    minted = fed.run(fed.example, "builder", BUILDER, "token", "create", "--json")
    assert minted.returncode == 4, minted.stdout
    assert "tachi_" not in minted.stdout
    ran = fed.run(fed.example, "builder", BUILDER, "exec", "--", "id")
    assert ran.returncode == 4 and "uid=" not in ran.stdout
    refused = [r for r in fed.audit() if r.get("reason") == "local owner only"]
    assert {r["action"] for r in refused} >= {"token.create", "exec.start"}
    assert {r["principal"] for r in refused} == {BUILDER}
