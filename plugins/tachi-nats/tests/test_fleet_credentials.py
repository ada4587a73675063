"""Credentials: an nkey seed signs the server's nonce (with `cryptography`)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from nats_support import NatsServer
from tachi_nats.settings import new_user_seed, public_nkey

from tachi.testing import DaemonProcess


def test_an_nkey_user_gets_in_and_a_stranger_does_not(tachi_home):
    seed, stranger = new_user_seed(), new_user_seed()
    directory = Path(tempfile.mkdtemp(prefix="nats-", dir="/tmp"))
    server = NatsServer(
        directory, extra=f'authorization {{ users = [ {{ nkey: "{public_nkey(seed)}" }} ] }}\n'
    )
    server.start()
    try:
        results = {}
        for name, key in (("member", seed), ("stranger", stranger)):
            (tachi_home / f"{name}.nk").write_bytes(key + b"\n")
            config = (
                f'[fleet]\nurl = "{server.url}"\nhost = "h"\n'
                f'nkey_seed = "{tachi_home / f"{name}.nk"}"\n'
            )
            admin = DaemonProcess(tachi_home, {"TACHI_LOAD_PLUGINS": "nats"}, config=config)
            results[name] = admin.run("fleet", "hosts")
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    assert results["member"].returncode == 0, results["member"].stderr
    assert "no hosts in the fleet yet" in results["member"].stderr
    assert results["stranger"].returncode == 1
    assert "cannot reach NATS" in results["stranger"].stderr
