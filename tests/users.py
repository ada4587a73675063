"""Real local users for sharing tests, and running code as them.

Creating users needs root (CI runs as root). A test needing them is skipped
with the reason printed when not root: that is the one thing outside our reach.
"""

from __future__ import annotations

import os
import pickle
import pwd
import subprocess
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

USERS = ("tachi-alice", "tachi-bob")


def ensure_users() -> dict[str, int]:
    if os.getuid() != 0:
        pytest.skip("creating local users for multi-user tests needs root (CI runs as root)")
    uids = {}
    for name in USERS:
        # Parallel test workers may race to create the same user (useradd locks
        # /etc/passwd and fails for the loser): retry, bounded, until it exists.
        for _ in range(50):
            try:
                uids[name] = pwd.getpwnam(name).pw_uid
                break
            except KeyError:
                subprocess.run(
                    ["useradd", "--no-create-home", "--shell", "/bin/sh", name],
                    capture_output=True,
                )
                time.sleep(0.05)
        else:
            raise RuntimeError(f"could not create the test user {name}")
    return uids


def as_user(name: str, fn: Callable[[], Any], timeout: float = 30) -> Any:
    """Run ``fn`` in a forked child that has become ``name``; return its result
    or re-raise its exception. tachi is imported before the fork, so the child
    needs no access to the interpreter's files."""
    entry = pwd.getpwnam(name)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os.environ.pop("TACHI_TOKEN", None)
            payload: Any = ("ok", fn())
        except BaseException as exc:  # report everything to the parent
            payload = ("error", exc, traceback.format_exc())
        try:
            data = pickle.dumps(payload)
        except Exception:
            data = pickle.dumps(("error", RuntimeError(repr(payload)), ""))
        os.write(write_fd, data)
        os._exit(0)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    os.waitpid(pid, 0)
    result = pickle.loads(b"".join(chunks))
    if result[0] == "error":
        raise result[1]
    return result[1]
