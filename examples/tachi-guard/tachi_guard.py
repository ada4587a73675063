"""tachi-guard: nobody may send `rm -rf /` to a session, nor signal one."""

from __future__ import annotations

import re
from typing import Any

import tachi
from tachi.errors import PermissionDenied

REFUSED = re.compile(rb"rm\s+-[a-zA-Z]*r[a-zA-Z]*\s+/(\s|\*|$)")  # rm -rf /, rm -fr /*
KEEP = 64  # bytes of earlier input kept per client and session

_recent: dict[tuple[str, str, str], bytes] = {}


@tachi.hookimpl
def tachi_authorize(principal: Any, action: str, session: Any, data: bytes | None) -> bool | None:
    if action == "session.signal":
        return False  # any deny wins, even over the owner's allow
    if data is None:
        return None  # abstain: the other policies decide
    key = (principal.user, principal.source, session.id)
    seen = _recent.get(key, b"") + data
    if REFUSED.search(seen):
        raise PermissionDenied("tachi-guard: refusing to send 'rm -rf /'")
    if len(_recent) > 10_000:  # clients come and go: keep memory bounded
        _recent.clear()
    _recent[key] = seen[-KEEP:]
    return None
