"""Printing for the CLI: JSON documents on stdout, tables for people."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

# Already loaded with tachi.models, which every command that prints an age uses.
from tachi.gotime import parse_rfc3339
from tachi.models import UNSAFE_TEXT, visible


def emit_json(value: Any) -> None:
    """One JSON document on stdout: indented for a person at a terminal, compact
    for a program (json's C encoder cannot indent: 1,000 sessions took 57 ms
    indented against 14 ms compact)."""
    click.echo(json.dumps(value, indent=2) if sys.stdout.isatty() else json.dumps(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [
        ["" if c is None else str(c) for c in row] for row in rows
    ]
    # Names made before they were checked (old state, a plugin's) must not drive
    # the terminal (OSC 52, OSC 0): escape them. One search when there are none.
    if UNSAFE_TEXT.search("".join(map("".join, cells))):
        cells = [[visible(c) for c in row] for row in cells]
    widths = [max(map(len, column)) for column in zip(*cells, strict=True)]
    # One format per row and one write: a listing of 1,000 sessions spent 20 ms
    # in click.echo per row, and 1 ms more padding cell by cell.
    row_format = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo("\n".join(row_format.format(*row).rstrip() for row in cells))


def ago(when: str | int | None) -> str:
    """``2m ago`` style age of an RFC 3339 timestamp or of epoch nanoseconds."""
    if not when:
        return ""
    if isinstance(when, str):
        when = parse_rfc3339(when)
    seconds = max(0, int(time.time() - when / 1e9))
    for unit, size in _AGE_UNITS:
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


_AGE_UNITS = (("d", 86400), ("h", 3600), ("m", 60))


def warn(message: str) -> None:
    click.echo(message, err=True)


def is_tty() -> bool:
    return sys.stdout.isatty()


def plural(n: int, noun: str) -> str:
    """``1 session``, ``2 sessions``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def human(value: Any, key: str = "") -> str:
    """A JSON value as a person reads it: ``-`` for none, ``yes``/``no``, lists
    joined (a command line shell-quoted), nanosecond durations as ``1h2m3s``."""
    import shlex

    from tachi.gotime import format_duration

    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in ("idleTimeout", "maxDuration", "uptime") and isinstance(value, int):
        return format_duration(value) if value else "none"
    if key == "command" and isinstance(value, list):
        return shlex.join(str(v) for v in value)
    if isinstance(value, list):
        return ", ".join(human(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={human(v, k)}" for k, v in value.items())
    return str(value)


def fields(info: dict[str, Any], width: int, skip: Sequence[str] = ()) -> None:
    """``key  value`` lines for a JSON object, values made readable by :func:`human`."""
    for key, value in info.items():
        if key not in skip:
            click.echo(f"{key:{width}} {human(value, key)}")


def audit_line(record: dict[str, Any], *, host: str | None = None) -> str:
    """One audit record as ``tachi audit`` prints it (``host`` first, for the
    fleet's). Principals, reasons and details come from peers (an SSH user
    name, a plugin's reason, a window name): escaped, so they cannot drive the
    terminal."""
    reason = f" ({record['reason']})" if record.get("reason") else ""
    details = json.dumps(record["details"], separators=(",", ":")) if record.get("details") else ""
    where = f" {host}" if host is not None else ""
    return visible(
        f"{record['time']}{where} {record['result']:8} {record['action']:16}"
        f" {record.get('session') or '-':9} {record['principal']}@{record['source']}{reason}"
        f" {details}".rstrip()
    )
