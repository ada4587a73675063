"""Remote commands through the warm CLI act with their own token, every time (issue 32).

The warm CLI forks one process per command, and each opens its own
connection and says hello with its own token: nothing authenticated is kept
between commands. These are the properties any reuse of connections must keep.
"""

from __future__ import annotations

import json
import subprocess

from ws_support import Remote


def _run_warm(remote: Remote, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    """``tachi --host URL ARGS`` with ``token``, required to run in the warm CLI."""
    return subprocess.run(
        remote.daemon.tachi_argv(*remote.flags(), *args),
        env={**remote.daemon.env, "TACHI_TOKEN": token, "TACHI_WARM": "require"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _share(remote: Remote, sid: str, role: str) -> dict[str, str]:
    out = remote.daemon.run("share", sid, "--role", role, "--json", check=True).stdout
    return json.loads(out)


def test_two_tokens_interleaved_keep_their_own_roles_and_a_revoked_one_is_refused_at_once(
    remote: Remote,
) -> None:
    s = remote.daemon.new("cat", name="shared")
    writer = _share(remote, s["id"], "collaborator")
    reader = _share(remote, s["id"], "observer")
    for _ in range(3):  # interleaved, through the warm CLI (required)
        wrote = _run_warm(remote, "send", s["id"], "from-writer\\n", token=writer["token"])
        assert wrote.returncode == 0, wrote.stderr
        refused = _run_warm(remote, "send", s["id"], "from-reader\\n", token=reader["token"])
        assert refused.returncode == 4, refused.stderr
    screen = remote.daemon.run("capture", s["id"], check=True).stdout
    assert screen.count("from-writer") == 3 * 2  # cat's echo of the line, and cat's output
    assert "from-reader" not in screen
    remote.daemon.run("token", "rotate", s["id"], "--grace", "0", check=True)
    after = _run_warm(remote, "send", s["id"], "late\\n", token=writer["token"])
    assert after.returncode == 4
    assert "late" not in remote.daemon.run("capture", s["id"], check=True).stdout
