"""The daemon's core: sessions, windows, PTYs, screens and attached clients.

Nothing here knows about sockets, WebSockets or SSH; transports drive the core
through :mod:`tachi.daemon.connection`.
"""
