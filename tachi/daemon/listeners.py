"""Network listeners on a running daemon: added, removed and reloaded without
touching a session, and restored after a crash.

A *listener* is a transport that a ``[transports.NAME]`` table starts at its
``listen`` address (the WebSocket and SSH plugins). Each comes from the config
(``config.toml``), or was *added*: ``tachid --listen`` or ``tachi daemon
listen``. The other transports (the Unix socket, the warm CLI, the fleet's
NATS link) are fixed for the daemon's life.

- ``daemon listen`` builds the transport through the same hook that builds it
  at start (``tachi_register_transports``, given a config holding only that
  table), starts it, and records it as added.
- ``daemon unlisten`` stops one, whatever its origin; a config listener comes
  back at the next reload or start.
- ``daemon reload`` reads ``config.toml`` again and starts, restarts (its table
  changed) or stops the config listeners to match it. Added listeners are not
  the config's: a reload never stops one. All or nothing: a config that does
  not load, or a listener that does not build or start, changes nothing.

Added listeners are kept in the state database (``kept_listeners``) until the
daemon stops cleanly (``tachi daemon stop``): a daemon started after a crash,
or by ``tachi daemon restart``, starts them again on the address they were
bound to (a port asked as 0 keeps the port it got).

The core imports no transport: it calls the plugins' hook, each plugin's
implementation on its own so that a plugin that runs other transports (the
fleet's) is never asked again and loses nothing it set up at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from tachi.errors import InvalidRequest, NotFound, TachiError

if TYPE_CHECKING:
    from pathlib import Path

    from tachi.config import Config

log = logging.getLogger("tachi.listeners")

#: Where a listener came from (``source`` in ``tachi daemon listeners``).
CONFIG = "config"
ADDED = "added"
#: A transport that is no listener: there for the daemon's life (the Unix socket…).
FIXED = "fixed"
#: The transport ``tachi daemon listen`` and ``tachid --listen`` mean by default.
DEFAULT_TRANSPORT = "websocket"
#: The daemon's own transports: always there, never a listener.
BUILT_IN = frozenset({"unix", "warm-cli"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kept_listeners (
    transport TEXT NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (transport, address)
);
"""


@dataclass(eq=False)
class Listener:
    """One running listener: its transport object and where it came from."""

    transport: str
    #: The address asked for (``listen`` in the config, or ``daemon listen ADDR``).
    address: str
    #: The ``[transports.NAME]`` table it was built from.
    table: dict[str, Any]
    obj: Any
    sources: set[str] = field(default_factory=set)

    @property
    def bound(self) -> str | None:
        """``HOST:PORT`` it is listening on, from the transport's URL."""
        return bound_address(self.describe().get("url"))

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.obj, "describe", None)
        try:
            return dict(describe()) if describe is not None else {}
        except Exception:  # a transport's status must not break the daemon's
            log.exception("transport %s: describe failed", self.transport)
            return {}

    def matches(self, transport: str | None, address: str) -> bool:
        if transport is not None and transport != self.transport:
            return False
        return address in (self.address, self.bound)

    def to_json(self) -> dict[str, Any]:
        return {
            "transport": self.transport,
            **self.describe(),
            "address": self.address,
            "source": "+".join(sorted(self.sources)),
        }


def bound_address(url: Any) -> str | None:
    """``HOST:PORT`` (``[IPv6]:PORT``) of a listener URL, or ``None``."""
    try:
        parts = urlsplit(str(url or ""))
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or not port:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_table(config: Config, transport: str, address: str) -> dict[str, Any]:
    """The table a listener added at ``address`` is built from: the config's
    ``[transports.NAME]`` settings (TLS, origins…) with that ``listen``; for the
    WebSocket transport, TLS with a self-signed certificate unless the config
    sets TLS up (what ``--listen`` has always done)."""
    table = dict(config.transport(transport))
    table["listen"] = address
    if transport == DEFAULT_TRANSPORT and not any(
        k in table for k in ("tls", "tls_cert", "tls_key")
    ):
        table["tls"] = "self-signed"
    return table


def config_listeners(config: Config) -> dict[tuple[str, str], dict[str, Any]]:
    """(transport, address) -> table, for each ``[transports.NAME]`` with ``listen``."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for name, table in (config.raw.get("transports") or {}).items():
        if isinstance(table, dict) and table.get("listen"):
            out[(str(name), str(table["listen"]))] = dict(table)
    return out


class Host(Protocol):
    """What listeners use of the daemon (``tachi.daemon.server.Daemon``), which
    is also what a transport's ``start`` is given."""

    config: Config
    pm: Any
    db: Any
    transports: list[Any]

    def audit(self, **record: Any) -> dict[str, Any]: ...


class Listeners:
    """The daemon's transports: the fixed ones and the listeners, started,
    stopped and reloaded. Every change is serialised and audited."""

    def __init__(self, daemon: Host, listen: list[tuple[str, str]] | None = None) -> None:
        self.daemon = daemon
        #: ``tachid --listen``: (transport, address), added at start.
        self.listen = list(listen or ())
        #: Transports that are no listener (the Unix socket…), in start order.
        self.fixed: list[Any] = []
        self.running: list[Listener] = []
        #: plugin name -> the transport names it registered at start.
        self._owners: dict[str, set[str]] = {}
        self._lock = asyncio.Lock()

    # -- start and stop -----------------------------------------------------------
    async def start(self) -> None:
        """Start every transport the config and the plugins give, the
        ``--listen`` ones, then those a previous daemon had added (a crash or a
        restart). Raises for a transport that does not start, except a kept
        listener: that one is logged and forgotten, and the daemon serves on."""
        db = self.daemon.db
        db.executescript(_SCHEMA)
        configured = config_listeners(self.daemon.config)
        for plugin, transport in self._register_each(self.daemon.config):
            self._owners.setdefault(plugin, set()).add(transport.name)
            await self._start(transport)
            name = transport.name
            table = self.daemon.config.transport(name)
            if (name, str(table.get("listen", ""))) in configured:
                self.running.append(
                    Listener(name, str(table["listen"]), table, transport, {CONFIG})
                )
            else:
                self.fixed.append(transport)
        for transport, address in self.listen:
            await self._add(transport, address)
        for transport, address in db.execute(
            "SELECT transport, address FROM kept_listeners"
        ).fetchall():
            if self._find(transport, address) is not None:
                continue
            try:
                await self._add(transport, address)
            except (TachiError, OSError) as exc:
                log.warning("listener %s %s not restored: %s", transport, address, exc)
                self._audit("daemon.listen", transport, address, result="error", reason=str(exc))
        self._save()

    async def stop(self, *, keep: bool) -> None:
        """Stop every transport, last started first. ``keep`` (a restart): the
        added listeners stay recorded for the next daemon; otherwise they are
        forgotten with the sessions."""
        for transport in reversed([*self.fixed, *(x.obj for x in self.running)]):
            try:
                await transport.stop()
            except Exception:
                log.exception("transport %s did not stop cleanly", transport.name)
        self.fixed.clear()
        self.running.clear()
        self.daemon.transports.clear()
        if not keep:
            with contextlib.suppress(Exception):
                self.daemon.db.execute("DELETE FROM kept_listeners")

    # -- operations ---------------------------------------------------------------
    async def add(self, transport: str, address: str) -> Listener:
        """Start a listener at ``address`` (``daemon listen``). One already
        there becomes added too (it stays through reloads)."""
        async with self._lock:
            listener = await self._add(transport, address)
            self._save()
            return listener

    async def remove(self, transport: str | None, address: str) -> Listener:
        """Stop the listener at ``address`` (its asked or bound address); raises
        ``NotFound`` naming the running ones if none is there."""
        async with self._lock:
            listener = self._find(transport, address)
            if listener is None:
                running = ", ".join(f"{x.transport} {x.bound or x.address}" for x in self.running)
                raise NotFound(
                    f"no listener on {address}"
                    + (f" (listening: {running})" if running else " (none is running)")
                )
            await self._stop(listener)
            self._save()
            return listener

    async def reload(self, config_path: Path | None) -> dict[str, Any]:
        """Make the config listeners those of ``config.toml`` as it is now:
        start the new ones, restart those whose table changed, stop those gone
        (unless added). Raises ``TachiError`` (nothing changed) for a config
        that does not load or a listener that does not build or start."""
        from tachi import config as config_mod

        async with self._lock:
            wanted = config_listeners(config_mod.load(config_path))
            new: list[Listener] = []
            changed: list[tuple[Listener, Listener]] = []
            try:
                for (name, address), table in wanted.items():
                    current = self._find(name, address)
                    if current is None:
                        listener = Listener(name, address, table, self._build(name, table))
                        await self._start(listener.obj)
                        new.append(listener)
                    elif CONFIG in current.sources and current.table != table:
                        # Built before anything stops: a bad table changes nothing.
                        changed.append(
                            (current, Listener(name, address, table, self._build(name, table)))
                        )
            except BaseException:
                for listener in new:
                    await self._stop_quietly(listener.obj)
                raise
            restarted = []
            for old, fresh in changed:
                # The same address: the old one must let go of it first.
                await self._stop(old)
                try:
                    await self._start(fresh.obj)
                except BaseException as exc:
                    with contextlib.suppress(Exception):
                        again = Listener(
                            old.transport,
                            old.address,
                            old.table,
                            self._build(old.transport, old.table),
                        )
                        await self._start(again.obj)
                        again.sources = old.sources
                        self.running.append(again)
                    for listener in new:
                        await self._stop_quietly(listener.obj)
                    if isinstance(exc, TachiError | OSError):
                        raise TachiError(
                            f"{old.transport} {old.address}: {exc}; it keeps its old settings"
                        ) from None
                    raise
                fresh.sources = old.sources
                self.running.append(fresh)
                restarted.append(fresh)
            for listener in new:
                listener.sources.add(CONFIG)
                self.running.append(listener)
            stopped = []
            for listener in list(self.running):
                if (
                    CONFIG in listener.sources
                    and (listener.transport, listener.address) not in wanted
                ):
                    listener.sources.discard(CONFIG)
                    if not listener.sources:
                        await self._stop(listener)
                        stopped.append(listener)
            for name, address in wanted:
                found = self._find(name, address)
                if found is not None:
                    found.sources.add(CONFIG)
            self._save()
            result = {
                "started": [x.to_json() for x in new],
                "restarted": [x.to_json() for x in restarted],
                "stopped": [
                    {"transport": x.transport, "address": x.address, "url": x.describe().get("url")}
                    for x in stopped
                ],
                "listeners": self.describe(),
            }
            return result

    def describe(self) -> list[dict[str, Any]]:
        """Every transport that describes itself, with its ``source``: ``fixed``
        (the Unix socket, the warm CLI…), or for a listener ``config``, ``added``
        or ``added+config``, and its ``address`` as asked."""
        out = []
        for transport in self.fixed:
            if hasattr(transport, "describe"):
                with contextlib.suppress(Exception):
                    out.append(
                        {"transport": transport.name, **transport.describe(), "source": FIXED}
                    )
        out += [x.to_json() for x in self.running]
        return out

    # -- the parts ----------------------------------------------------------------
    async def _add(self, transport: str, address: str) -> Listener:
        found = self._find(transport, address)
        if found is not None:
            found.sources.add(ADDED)
            return found
        table = listen_table(self.daemon.config, transport, address)
        listener = Listener(transport, address, table, self._build(transport, table), {ADDED})
        await self._start(listener.obj)
        self.running.append(listener)
        return listener

    async def _start(self, transport: Any) -> None:
        try:
            await transport.start(self.daemon)
        except OSError as exc:
            await self._stop_quietly(transport)
            raise TachiError(f"{transport.name}: cannot listen: {exc.strerror or exc}") from None
        except BaseException:
            await self._stop_quietly(transport)
            raise
        self.daemon.transports.append(transport)
        log.info("transport %s started", transport.name)

    async def _stop(self, listener: Listener) -> None:
        self.running.remove(listener)
        with contextlib.suppress(ValueError):
            self.daemon.transports.remove(listener.obj)
        try:
            await listener.obj.stop()
        except Exception:
            log.exception("transport %s did not stop cleanly", listener.transport)
        log.info("transport %s on %s stopped", listener.transport, listener.address)

    @staticmethod
    async def _stop_quietly(transport: Any) -> None:
        with contextlib.suppress(Exception):
            await transport.stop()

    def _find(self, transport: str | None, address: str) -> Listener | None:
        return next((x for x in self.running if x.matches(transport, address)), None)

    def _save(self) -> None:
        """Record the added listeners, each at the address it is bound to."""
        db = self.daemon.db
        db.execute("DELETE FROM kept_listeners")
        for x in self.running:
            if ADDED in x.sources:
                db.execute(
                    "INSERT OR IGNORE INTO kept_listeners(transport, address) VALUES (?, ?)",
                    (x.transport, x.bound or x.address),
                )

    def _audit(
        self,
        action: str,
        transport: str | None,
        address: str | None,
        *,
        result: str = "info",
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        what = {"transport": transport, "address": address} if transport else {}
        self.daemon.audit(
            action=action,
            result=result,
            principal="tachid",
            source="daemon",
            reason=reason,
            details={**what, **(details or {})},
        )

    # -- the hook ---------------------------------------------------------------
    def _impls(self) -> list[Any]:
        """``tachi_register_transports`` implementations, in the order pluggy calls them."""
        caller = self.daemon.pm.hook.tachi_register_transports
        return [
            impl
            for impl in reversed(caller.get_hookimpls())
            if not (impl.hookwrapper or impl.wrapper)
        ]

    def _register_each(self, config: Config) -> list[tuple[str, Any]]:
        """Every transport the plugins register for ``config``, with the plugin
        that registered it."""
        out: list[tuple[str, Any]] = []
        for impl in self._impls():
            found: list[Any] = []
            _call(impl, register=found.append, config=config)
            out += [(impl.plugin_name, t) for t in found]
        return out

    def _build(self, name: str, table: dict[str, Any]) -> Any:
        """A transport ``name`` for ``table`` from the plugin that makes it (not
        started). Raises ``InvalidRequest`` if no plugin does, or the plugin's
        error for a bad setting."""
        if not name or name in BUILT_IN:
            raise InvalidRequest(f"transport {name!r} is not a listener that can be added")
        probe = dataclasses.replace(self.daemon.config, raw={"transports": {name: dict(table)}})
        for impl in self._impls():
            plugin = impl.plugin_name
            if plugin.startswith("tachi.builtins."):
                continue
            if self._owners.get(plugin, set()) - {name}:
                continue  # runs other transports: asking it again could disturb them
            found: list[Any] = []
            try:
                _call(impl, register=found.append, config=probe)
            except TachiError:
                raise
            except Exception as exc:
                raise InvalidRequest(f"{name}: plugin {plugin} failed: {exc}") from None
            for transport in found:
                if getattr(transport, "name", None) == name:
                    self._owners.setdefault(plugin, set()).add(name)
                    return transport
        raise InvalidRequest(
            f"no loaded plugin serves transport {name!r}"
            + (" (install tachi-websocket)" if name == DEFAULT_TRANSPORT else "")
        )


def _call(impl: Any, **kwargs: Any) -> Any:
    """Call one hook implementation as pluggy would (with the arguments it names)."""
    return impl.function(*(kwargs[name] for name in impl.argnames))
