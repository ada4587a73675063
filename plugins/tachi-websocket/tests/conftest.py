"""Fixtures for the WebSocket plugin's tests."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator

import pytest
from ws_support import remote  # noqa: F401

from tachi.testing import command_lines

# Remote CLI commands go through the per-user connection keeper by default
# (tachi_websocket.keeper). Each test process gets its own, under a private
# runtime directory, rather than the user's (or another worker's), and stops
# it at the end.
RUNTIME = tempfile.mkdtemp(prefix="tachi-rt-")
os.environ["XDG_RUNTIME_DIR"] = RUNTIME


@pytest.fixture(scope="session", autouse=True)
def _stop_keepers() -> Iterator[None]:
    yield
    for pid, argv in command_lines():
        if b"tachi_websocket.keeper" in argv and any(RUNTIME.encode() in a for a in argv):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
