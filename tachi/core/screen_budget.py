"""A daemon-wide cap on the memory that emulated screens may take.

Every window keeps a terminal emulator whose size is rows x columns cells (twice,
with the alternate screen) plus its history. The emulator allocates in native
code, where running out of memory aborts the whole process: every session
would be lost. So the daemon reserves each window's worst case here before it
creates or grows one, and refuses that one window (with a clear error) when the
budget is spent, instead of letting the kernel or the allocator kill them all.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Hashable, Iterable

from tachi.errors import Conflict

#: Measured here: an avt window of 1000 x 500 cells flooded with text holds about
#: 25 MB, i.e. ~25 bytes per cell of each of its two screens; 28 leaves headroom.
BYTES_PER_CELL = 28
#: Python-side memory of a window that does not scale with its size (output
#: backlog, buffers, the PTY's bookkeeping).
WINDOW_OVERHEAD = 1 << 20
#: Without a configured budget, at most this share of physical memory.
DEFAULT_SHARE_OF_RAM = 0.25
#: Under an address-space limit (``prlimit --as``), at most this share of what is
#: left of it when the daemon starts: Python, SQLite and the buffers need the rest.
SHARE_OF_ADDRESS_SPACE = 0.5


def window_cost(cols: int, rows: int, history: int) -> int:
    """The most memory a window of that size and history may take, in bytes."""
    return WINDOW_OVERHEAD + BYTES_PER_CELL * cols * (2 * rows + history)


class ScreenBudget:
    """Reservations of screen memory, by window."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[Hashable, int] = {}

    @property
    def used(self) -> int:
        return sum(self._held.values())

    def reserve(self, owners: Iterable[Hashable], cols: int, rows: int, history: int) -> None:
        """Reserve (or re-size the reservations of) the windows ``owners``, all at
        ``cols`` x ``rows`` with ``history`` lines, or none of them.

        Raises ``Conflict`` naming the budget when it would be exceeded; the
        previous reservations are then kept.
        """
        owners = list(owners)
        cost = window_cost(cols, rows, history)
        others = self.used - sum(self._held.get(o, 0) for o in owners)
        needed = cost * len(owners)
        if others + needed > self.limit:
            what = "a window" if len(owners) == 1 else f"{len(owners)} windows"
            raise Conflict(
                f"not enough memory for {what} of {cols}x{rows}: screens hold"
                f" {_mib(others)} of the daemon's {_mib(self.limit)} budget and this"
                f" needs {_mib(needed)} (limits.screen_memory)"
            )
        for owner in owners:
            self._held[owner] = cost

    def release(self, owner: Hashable) -> None:
        self._held.pop(owner, None)


def default_limit(configured: int | None) -> int:
    """The budget: ``configured`` if set, else a share of physical memory; never more
    than half of what an address-space limit on this process leaves free."""
    limit = configured or int(_physical_memory() * DEFAULT_SHARE_OF_RAM)
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        free = max(0, soft - _address_space_in_use())
        limit = min(limit, int(free * SHARE_OF_ADDRESS_SPACE))
    return limit


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 4 << 30


def _address_space_in_use() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"
