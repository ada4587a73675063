"""A transport plugin written from docs/plugins.md alone: ``tachi_connect``
may hand back any connected stream socket, a TCP one included."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import installed_plugin
from helpers import tcp_relay as relay_to_unix
from tachi.client.aio import AsyncClient
from tachi.client.sync import Client

# A third party's transport: tcpfwd://HOST:PORT is a plain TCP connection.
PLUGIN = """
import socket
from urllib.parse import urlsplit

import pluggy

hookimpl = pluggy.HookimplMarker("tachi")


@hookimpl
def tachi_connect(url, options):
    if not url.startswith("tcpfwd://"):
        return None
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)
"""


@pytest.fixture
def tcp_relay(tachi_daemon) -> Iterator[int]:
    """A TCP port on 127.0.0.1 whose connections go to the daemon's Unix socket."""
    with relay_to_unix(tachi_daemon.socket) as port:
        yield port


@pytest.fixture
def tcp_plugin(tmp_path, monkeypatch) -> None:
    env = installed_plugin(tmp_path / "site", "tcpfwd", PLUGIN)
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    monkeypatch.setenv("TACHI_LOAD_PLUGINS", "tcpfwd")


async def test_the_async_client_takes_a_tcp_socket_from_a_plugin(
    tachi_daemon, tcp_relay, tcp_plugin
):
    s = tachi_daemon.new("sleep", "60", name="over-tcp")
    client = await AsyncClient.connect(url=f"tcpfwd://127.0.0.1:{tcp_relay}")
    try:
        names = [x.name for x in await client.list()]
    finally:
        await client.disconnect()
    assert names == ["over-tcp"] and s["name"] == "over-tcp"


def test_the_sync_client_takes_a_tcp_socket_from_a_plugin(tachi_daemon, tcp_relay, tcp_plugin):
    tachi_daemon.new("sleep", "60", name="over-tcp")
    with Client(url=f"tcpfwd://127.0.0.1:{tcp_relay}") as client:
        assert [x.name for x in client.list()] == ["over-tcp"]
