"""The daemon's open-file limit: raised for itself, kept in reserve, and given
back to the programs it starts.

Every window holds descriptors (its PTY, a pidfd), every client a socket. A
daemon that runs out cannot even accept a connection to say why: clients
would hang. So it raises its soft ``RLIMIT_NOFILE`` to the hard limit at start
(as service managers do), refuses a new window while fewer than
``FD_RESERVE`` descriptors would be left, and puts the original soft limit
back in each child, where large limits break programs that use ``select()``
or close every descriptor up to the limit.
"""

from __future__ import annotations

import contextlib
import os
import resource

from tachi.errors import Conflict

#: Descriptors kept free for connections, the store, the audit log and spawning.
FD_RESERVE = 64
#: Descriptors a new window may take while it starts (PTY pair, pidfd, the
#: pipe ptyprocess reports exec errors through).
FDS_PER_WINDOW = 6
#: The soft limit the daemon started with, for its children.
_inherited: tuple[int, int] | None = None


def raise_limit() -> None:
    """Raise the soft open-file limit to the hard one (once, at daemon start)."""
    global _inherited
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _inherited is None:
        _inherited = (soft, hard)
    # An unlimited hard limit is rare; cap what we ask for at the kernel's default
    # per-process maximum rather than requesting infinity.
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def restore_in_child() -> None:
    """In a child before exec: the open-file limit the daemon was started with."""
    if _inherited is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, _inherited)


def inherited() -> tuple[int, int] | None:
    """The (soft, hard) open-file limit the daemon started with, for a child
    started elsewhere (the session keeper); ``None`` if it was never raised."""
    return _inherited


def check_headroom() -> None:
    """Raise ``Conflict`` if starting one more window would leave fewer than
    ``FD_RESERVE`` descriptors free."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return
    used = len(os.listdir("/proc/self/fd"))
    if used + FDS_PER_WINDOW + FD_RESERVE > limit:
        raise Conflict(
            f"the daemon has {used} of its {limit} open files in use: close sessions,"
            " or start it with a higher limit (ulimit -n)"
        )
