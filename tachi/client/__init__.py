"""Clients of the daemon: ``Client`` (blocking) and ``AsyncClient`` (asyncio)."""
