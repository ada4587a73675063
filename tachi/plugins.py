"""The plugin manager: built-ins first, then installed ``tachi`` entry points.

``TACHI_LOAD_PLUGINS=a,b`` loads only the named entry points (empty: none);
``TACHI_DISABLE_PLUGINS=a,b`` blocks some; ``TACHI_TRACE_PLUGINS=1`` prints every
hook call to stderr.

The daemon loads everything. A command loads only the plugins that implement
the hooks it will call (``make_plugin_manager(hooks=...)``): ``tachi --host
wss://… ls`` needs ``tachi_connect``, not the Ghostty screen's FFI (~285 ms) or
the SPIFFE library (~100 ms). Which plugin implements which hook is known only
by importing it, so the answer is kept in a *hook index* (a JSON file in the
user's cache directory, one per install), checked on every use against what it
was made from: the mtimes of the site directories and of those the plugins'
distributions live in, and ``sys.path`` itself (installing or removing a
distribution changes one; then the entry points are read again) and, per
plugin, the size and mtime of the module its entry point names (an upgrade or
an edit of it re-imports the plugin once to learn its hooks again; pluggy finds
hooks on that module, so a hook is defined or imported there). A hit costs no
``importlib.metadata`` (~60 ms on its own) and no plugin import; anything
missing, stale or unreadable falls back to importing, so the index can make a
command faster but never change what it loads.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import sys
from collections.abc import Collection, Iterator
from typing import Any

import pluggy

from tachi import hookspecs

# pluggy calls the last registered first: the warm CLI comes before the Unix
# socket here so that the socket is registered, started and listed first.
DEFAULT_PLUGINS = (
    "tachi.builtins.warm_cli",
    "tachi.builtins.unix_socket",
    "tachi.builtins.acl",
    "tachi.builtins.windows",
    "tachi.builtins.avt_screen",
    "tachi.builtins.asciicast",
)


def make_plugin_manager(
    *,
    load_entrypoints: bool = True,
    hooks: Collection[str] | None = None,
    scheme: str | None = None,
) -> pluggy.PluginManager:
    """A fresh manager with the hookspecs, the built-ins and (optionally) installed plugins.

    With ``hooks``, only the plugins (built-in or installed) that implement one
    of those hooks are imported and registered, in the order a full load would
    register them, so calling those hooks gives what it would with everything
    loaded. ``TACHI_LOAD_PLUGINS`` and ``TACHI_DISABLE_PLUGINS`` apply as ever.
    With ``scheme`` too, a plugin wanted only for ``tachi_connect`` is left out
    when it declares the URL schemes it opens (``URL_SCHEMES`` on the plugin)
    and ``scheme`` is not one of them.
    """
    pm = pluggy.PluginManager("tachi")
    pm.add_hookspecs(hookspecs)
    index = HookIndex.open() if hooks is not None else None
    wanted = frozenset(hooks or ())
    for name in DEFAULT_PLUGINS:
        if index is not None and not index.builtin_may_implement(name, wanted):
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        pm.register(module, name)
        if index is not None:
            index.learn_builtin(name, pm, module)
    if load_entrypoints:
        if index is None:
            _load_entrypoints(pm)
        else:
            _load_entrypoints_lazily(pm, index, wanted, scheme)
    if index is not None:
        index.save()
    pm.check_pending()
    if os.environ.get("TACHI_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm


def _selected(names: list[str]) -> list[str]:
    """The entry points ``TACHI_LOAD_PLUGINS`` / ``TACHI_DISABLE_PLUGINS`` leave, in order."""
    only = os.environ.get("TACHI_LOAD_PLUGINS")
    blocked = {n.strip() for n in os.environ.get("TACHI_DISABLE_PLUGINS", "").split(",")}
    if only is not None:
        allowed = {n.strip() for n in only.split(",")}
        names = [n for n in names if n in allowed]
    return [n for n in names if n not in blocked]


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    only = os.environ.get("TACHI_LOAD_PLUGINS")
    for name in filter(None, os.environ.get("TACHI_DISABLE_PLUGINS", "").split(",")):
        pm.set_blocked(name.strip())
    if only is None:
        pm.load_setuptools_entrypoints("tachi")
        return
    for name in filter(None, (n.strip() for n in only.split(","))):
        pm.load_setuptools_entrypoints("tachi", name=name)


def _load_entrypoints_lazily(
    pm: pluggy.PluginManager, index: HookIndex, wanted: frozenset[str], scheme: str | None
) -> None:
    """Import the selected entry points that implement a ``wanted`` hook (or
    whose hooks the index does not know yet: it learns them now)."""
    for entry in index.entry_points():
        name = entry["name"]
        if name not in _selected([name]) or pm.has_plugin(name):
            continue
        known = index.known_hooks(entry)
        if known is not None and not known & wanted:
            continue
        schemes = entry.get("schemes")
        if (
            known is not None
            and known & wanted == {"tachi_connect"}
            and scheme is not None
            and isinstance(schemes, list)
            and scheme.lower() not in schemes
        ):
            continue  # a transport for other URLs
        plugin = _load_value(entry["value"])
        pm.register(plugin, name=name)
        index.learn(entry, pm, plugin)


def _load_value(value: str) -> Any:
    """What an entry point's ``module:attr`` names (as ``EntryPoint.load``)."""
    module, _, attrs = value.partition(":")
    obj: Any = importlib.import_module(module.strip())
    for attr in filter(None, attrs.strip().split(".")):
        obj = getattr(obj, attr)
    return obj


def _file_stamp(module: Any) -> list[list[Any]] | None:
    path = getattr(module, "__file__", None)
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [[path, st.st_size, st.st_mtime_ns]]


def _restamp(stamp: Any) -> list[list[Any]] | None:
    """``stamp`` taken again from the same files (``None`` if one is gone)."""
    if not isinstance(stamp, list) or not stamp:
        return None
    out = []
    for item in stamp:
        try:
            st = os.stat(item[0])
        except (OSError, TypeError, IndexError):
            return None
        out.append([item[0], st.st_size, st.st_mtime_ns])
    return out


class HookIndex:
    """Which plugin implements which hooks, remembered between commands (see
    the module's docstring); every answer is checked against the files it
    was learnt from."""

    VERSION = 3

    def __init__(self, path: str | None, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.dirty = False

    @staticmethod
    def location() -> str | None:
        """The index file: ``$TACHI_PLUGIN_INDEX``, else one per install under
        ``$XDG_CACHE_HOME/tachi`` (``~/.cache/tachi``); ``None`` if there is no home."""
        if env := os.environ.get("TACHI_PLUGIN_INDEX"):
            return env
        from tachi.launch import _fnv1a, install_id

        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        if not os.path.isabs(base):
            return None
        name = f"plugin-hooks-{_fnv1a(install_id().encode()):016x}.json"
        return os.path.join(base, "tachi", name)

    @classmethod
    def open(cls) -> HookIndex:
        path = cls.location()
        data: dict[str, Any] = {}
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError):
                data = {}
        if not isinstance(data, dict) or data.get("version") != cls.VERSION:
            data = {}
        return cls(path, data)

    @classmethod
    def installed(cls) -> tuple[int, ...]:
        """What changes when a distribution is installed or removed: the site
        directories' modification times (a few ``stat`` calls)."""
        return tuple(cls._stamp(cls._site_dirs()).values())

    @staticmethod
    def _site_dirs() -> list[str]:
        """The directories distributions are installed into (a new one changes their mtime)."""
        return [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]

    @staticmethod
    def _stamp(dirs: Collection[str]) -> dict[str, int]:
        stamp = {}
        for entry in dirs:
            try:
                stamp[entry] = os.stat(entry).st_mtime_ns
            except OSError:
                stamp[entry] = 0
        return stamp

    @staticmethod
    def _search_path() -> list[str]:
        # sys.path[0] is the script's directory (or the working directory):
        # no distributions are installed there.
        return sys.path if sys.flags.safe_path else sys.path[1:]

    def _paths_unchanged(self) -> bool:
        """Whether ``sys.path`` is the one the entry points were read with, and
        no directory holding distributions changed since."""
        stored = self.data.get("paths")
        if not isinstance(stored, dict) or self.data.get("sys_path") != self._search_path():
            return False
        return self._stamp(stored) == stored

    def entry_points(self) -> Iterator[dict[str, Any]]:
        """The installed ``tachi`` entry points: from the index while the
        directories their distributions live in (and the site directories) are
        unchanged, else read from the installed metadata again."""
        eps = self.data.get("entry_points")
        if not isinstance(eps, list) or not self._paths_unchanged():
            from importlib import metadata

            known = {e["name"]: e for e in eps or [] if isinstance(e, dict) and "name" in e}
            eps = []
            dirs = set(self._site_dirs())
            for ep in metadata.entry_points(group="tachi"):
                entry = {"name": ep.name, "value": ep.value}
                old = known.get(ep.name)
                if old and old.get("value") == ep.value:
                    entry = old
                eps.append(entry)
                if ep.dist is not None:
                    dirs.add(os.fspath(ep.dist.locate_file("")))
            self.data["entry_points"] = eps
            self.data["paths"] = self._stamp(sorted(dirs))
            self.data["sys_path"] = self._search_path()
            self.data["version"] = self.VERSION
            self.dirty = True
        yield from list(eps)

    def known_hooks(self, entry: dict[str, Any]) -> frozenset[str] | None:
        """The hooks ``entry``'s plugin implements, if the index knows them and
        its files have not changed since; else ``None`` (import it to learn)."""
        hooks = entry.get("hooks")
        if not isinstance(hooks, list) or entry.get("stamp") is None:
            return None
        if entry.get("_checked") is not True:
            if entry["stamp"] != _restamp(entry["stamp"]):
                return None
            entry["_checked"] = True  # in this process; not saved
        return frozenset(hooks)

    def learn(self, entry: dict[str, Any], pm: pluggy.PluginManager, plugin: Any) -> None:
        """Remember the hooks ``plugin`` (registered for ``entry``) implements."""
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or [])
        declared = getattr(plugin, "URL_SCHEMES", None)
        schemes = (
            sorted(x.lower() for x in declared)
            if isinstance(declared, (tuple, list)) and all(isinstance(x, str) for x in declared)
            else None
        )
        if (
            entry.get("hooks") == hooks
            and entry.get("schemes") == schemes
            and self.known_hooks(entry) is not None
        ):
            return  # known, and its files unchanged: nothing to write
        entry["hooks"] = hooks
        entry["schemes"] = schemes
        entry["stamp"] = _file_stamp(sys.modules.get(entry["value"].partition(":")[0].strip()))
        self.dirty = True

    def builtin_may_implement(self, name: str, wanted: frozenset[str]) -> bool:
        known = self.data.setdefault("builtins", {}).get(name)
        if not isinstance(known, dict) or known.get("stamp") != _restamp(known.get("stamp")):
            return True
        return bool(set(known.get("hooks", ())) & wanted)

    def learn_builtin(self, name: str, pm: pluggy.PluginManager, module: Any) -> None:
        builtins = self.data.setdefault("builtins", {})
        hooks = sorted(c.name for c in pm.get_hookcallers(module) or [])
        entry = {"hooks": hooks, "stamp": _file_stamp(module)}
        if builtins.get(name) != entry:
            builtins[name] = entry
            self.data["version"] = self.VERSION
            self.dirty = True

    def save(self) -> None:
        """Write the index if it learnt something (atomically; a failure only
        means the next command learns it again)."""
        if not self.dirty or not self.path:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            data = dict(self.data)
            data["entry_points"] = [
                {k: v for k, v in e.items() if not k.startswith("_")}
                for e in self.data.get("entry_points", [])
            ]
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.dirty = False


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """What is loaded and from where: name, hooks, module file, distribution and version."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        try:
            origin = inspect.getfile(plugin if inspect.ismodule(plugin) else type(plugin))
        except TypeError:
            origin = None
        out.append(
            {
                "name": name,
                "hooks": hooks,
                "builtin": name in DEFAULT_PLUGINS or name.startswith("tachi.builtins."),
                "module": origin,
                "distribution": dist.project_name if dist else None,
                "version": dist.version if dist else None,
            }
        )
    return out


def installed_entrypoints() -> list[str]:
    """Names of installed ``tachi`` entry points (for diagnostics)."""
    from importlib import metadata

    return sorted(ep.name for ep in metadata.entry_points(group="tachi"))
