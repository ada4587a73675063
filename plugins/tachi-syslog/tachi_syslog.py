"""Ship tachi audit records to syslog (a third-party-style plugin, packaged apart)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
from functools import cache
from typing import Any

import tachi


def _address(spec: str) -> str | tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if sep and port.isdigit() and not spec.startswith("/"):
        return (host, int(port))
    return spec


class _Handler(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        # logging would print a traceback to stderr for every record and carry on;
        # raise instead, so tachi reports the failure once and backs off.
        raise


@cache
def _handler() -> logging.handlers.SysLogHandler:
    from tachi import config as config_mod

    settings = config_mod.load().plugin("syslog")
    spec = os.environ.get("TACHI_SYSLOG_ADDRESS") or settings.get("address") or "/dev/log"
    facility = settings.get("facility", "authpriv")
    handler = _Handler(
        address=_address(spec),
        facility=logging.handlers.SysLogHandler.facility_names.get(facility, 10),
    )
    handler.ident = "tachi: "
    handler.append_nul = False
    return handler


@tachi.hookimpl
def tachi_audit_event(event: dict[str, Any]) -> None:
    """Send one record; raises ``OSError`` when syslog can't be reached (tachi then
    logs it once and backs off)."""
    level = logging.WARNING if event.get("result") == "denied" else logging.INFO
    record = logging.LogRecord("tachi.audit", level, __file__, 0, "%s", (json.dumps(event),), None)
    handler = _handler()
    try:
        handler.emit(record)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"cannot reach syslog at {handler.address}: {reason}") from None
