"""Listeners are the daemon's owner's to manage (issue 29): another local user
who holds a grant here may not add, remove, list or reload them, and each
refusal is audited. (The listeners themselves: plugins/tachi-websocket/tests/
test_listen_live.py.)"""

from __future__ import annotations

import json

from tachi.errors import PermissionDenied
from users import as_user, ensure_users

OPERATIONS = [
    ("daemon.listen", {"address": "127.0.0.1:1"}),
    ("daemon.unlisten", {"address": "127.0.0.1:1"}),
    ("daemon.listeners", {}),
    ("daemon.reload", {}),
]


def test_another_user_may_not_touch_the_listeners_and_is_audited(tachi_daemon):
    ensure_users()
    s = tachi_daemon.new("cat")
    # A collaborator on a session: admitted to the daemon, owner of nothing on it.
    tachi_daemon.run(
        "share", s["id"], "--role", "collaborator", "--user", "tachi-alice", check=True
    )

    def alice_tries() -> list[str]:
        refused = []
        with tachi_daemon.client(shared=True) as client:
            for op, args in OPERATIONS:
                try:
                    client.call(op, **args)
                except PermissionDenied as exc:
                    refused.append(str(exc))
        return refused

    refused = as_user("tachi-alice", alice_tries)
    assert len(refused) == len(OPERATIONS)
    assert all("only the daemon's user on this host" in r for r in refused), refused
    audit = (tachi_daemon.state_dir / "audit" / "audit.jsonl").read_text().splitlines()
    denied = [
        r
        for r in map(json.loads, audit)
        if r["action"].startswith("daemon.") and r["result"] == "denied"
    ]
    assert [(r["action"], r["principal"], r["reason"]) for r in denied] == [
        (op, "tachi-alice", "local owner only") for op, _ in OPERATIONS
    ]
    # The owner may: nothing listens but the daemon's own transports.
    own = json.loads(tachi_daemon.run("daemon", "listeners", "--json", check=True).stdout)
    assert {x["transport"] for x in own} <= {"unix", "warm-cli"}
    assert {x["source"] for x in own} == {"fixed"}


def test_a_listener_needs_its_plugin(tachi_daemon):
    """Without the WebSocket plugin, asking for a listener is one clear line,
    and the daemon and its sessions go on."""
    s = tachi_daemon.new("cat")
    result = tachi_daemon.run("daemon", "listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "tachi: no loaded plugin serves transport 'websocket' (install tachi-websocket)"
    )
    assert tachi_daemon.run("get", s["id"]).returncode == 0
