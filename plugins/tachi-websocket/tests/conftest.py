"""Fixtures for the WebSocket plugin's tests."""

from ws_support import remote  # noqa: F401
