"""Shell completion of session ids and names, from the running daemon.

Completion runs on every <Tab>, so it never starts a daemon and gives up
quietly (no candidates) when none answers.
"""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem


def complete_session(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Live sessions whose id or name starts with ``incomplete``."""
    from tachi.client.sync import Client
    from tachi.errors import TachiError
    from tachi.models import SessionState

    root = ctx.find_root()
    socket = root.params.get("socket")
    try:
        with Client(socket, autostart=False) as client:
            sessions = client.list()
    except (TachiError, OSError):
        return []
    items = []
    for s in sessions:
        if s.state == SessionState.CLOSED:
            continue
        help_text = " ".join(s.command)[:40]
        for ref in (s.name, s.id):
            if ref and ref.startswith(incomplete):
                items.append(CompletionItem(ref, help=help_text))
    return items
