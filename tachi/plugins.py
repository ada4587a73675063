"""The plugin manager: built-ins first, then installed ``tachi`` entry points.

``TACHI_LOAD_PLUGINS=a,b`` loads only the named entry points (empty: none);
``TACHI_DISABLE_PLUGINS=a,b`` blocks some; ``TACHI_TRACE_PLUGINS=1`` prints every
hook call to stderr.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from importlib import metadata
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


def make_plugin_manager(*, load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A fresh manager with the hookspecs, the built-ins and (optionally) installed plugins."""
    pm = pluggy.PluginManager("tachi")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        try:
            pm.register(importlib.import_module(name), name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    if load_entrypoints:
        _load_entrypoints(pm)
    pm.check_pending()
    if os.environ.get("TACHI_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    only = os.environ.get("TACHI_LOAD_PLUGINS")
    for name in filter(None, os.environ.get("TACHI_DISABLE_PLUGINS", "").split(",")):
        pm.set_blocked(name.strip())
    if only is None:
        pm.load_setuptools_entrypoints("tachi")
        return
    for name in filter(None, (n.strip() for n in only.split(","))):
        pm.load_setuptools_entrypoints("tachi", name=name)


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
    return sorted(ep.name for ep in metadata.entry_points(group="tachi"))
