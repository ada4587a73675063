"""Share links a colleague's browser can open."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from tachi_websocket.links import interface_addresses, is_loopback
from ws_support import start_remote


def _link(remote, *extra: str) -> tuple[dict, str]:
    s = remote.daemon.new("sleep", "60")
    made = remote.daemon.run("share", s["id"], "--role", "observer", "--json", *extra, check=True)
    human = remote.daemon.run("share", s["id"], "--role", "observer", check=True)
    return json.loads(made.stdout)["links"][0], human.stderr


def test_a_wildcard_listener_links_to_an_address_others_reach(tachi_home):
    """On a host whose name resolves to loopback (this one: getfqdn() is
    'localhost'), the link names an interface's address, or warns."""
    remote = start_remote(tachi_home, 'listen = "0.0.0.0:0"\ntls = "self-signed"')
    try:
        link, stderr = _link(remote)
    finally:
        remote.daemon.stop()
    host = urlsplit(link["url"]).hostname
    assert host is not None
    if interface_addresses():
        assert not is_loopback(host), link
        assert "warning" not in link and "warning:" not in stderr
    else:
        assert "only works on this host" in link["warning"]
        assert "warning: this link only works on this host" in stderr


def test_a_loopback_listener_warns_that_its_link_is_local(tachi_home):
    remote = start_remote(tachi_home, 'listen = "127.0.0.1:0"\ntls = "self-signed"')
    try:
        link, stderr = _link(remote)
    finally:
        remote.daemon.stop()
    assert urlsplit(link["url"]).hostname == "127.0.0.1"
    assert "only works on this host" in link["warning"]
    assert "warning: this link only works on this host" in stderr


def test_public_url_is_used_as_given_without_a_warning(tachi_home):
    table = 'listen = "0.0.0.0:0"\ntls = "self-signed"\npublic_url = "https://build-7.example:443"'
    remote = start_remote(tachi_home, table)
    try:
        link, stderr = _link(remote)
    finally:
        remote.daemon.stop()
    assert link["url"].startswith("https://build-7.example:443/s/")
    assert "warning" not in link and "warning:" not in stderr


def test_loopback_names_and_addresses():
    assert is_loopback("localhost") and is_loopback("127.0.1.1") and is_loopback("[::1]")
    assert not is_loopback("192.0.2.7") and not is_loopback("2001:db8::1")
