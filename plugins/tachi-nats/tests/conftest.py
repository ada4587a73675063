"""Fixtures for the NATS plugin's tests. The helpers live in ``nats_support``
(a module name of its own: ``conftest`` is also the websocket plugin's, and a
test importing from ``conftest`` got whichever was imported first)."""

from nats_support import fleet_daemons, nats_server  # noqa: F401
