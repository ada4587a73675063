"""Remote commands reuse their TLS contexts: reading the system's CA store costs
every ``tachi --host wss://…`` command ~20 ms, and OpenSSL's first context of
a process ~1.4 ms, so each is built once per process, and the warm CLI builds
them before it forks its commands."""

from __future__ import annotations

import ssl
import subprocess
import sys


def test_contexts_are_built_once_per_process() -> None:
    from tachi_websocket import client

    pinned = client.client_context("wss://h", {"fingerprint": "SHA256:x"})
    assert pinned is client.client_context("wss://h", {"fingerprint": "SHA256:y"})
    assert pinned.verify_mode == ssl.CERT_NONE and not pinned.check_hostname
    system = client.client_context("wss://h", {})
    assert system is client.client_context("wss://other", {})
    assert system.verify_mode == ssl.CERT_REQUIRED and system.check_hostname


def test_the_warm_cli_builds_them_before_it_forks() -> None:
    # In a fresh interpreter (this one may have built them already): the warm
    # server's preload leaves both contexts made.
    code = (
        "from tachi.cli import warm_server; warm_server.preload();"
        "from tachi_websocket import client;"
        "print(client.pinned_context.cache_info().currsize,"
        " client.verifying_context.cache_info().currsize)"
    )
    env = {"TACHI_LOAD_PLUGINS": "websocket", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]
