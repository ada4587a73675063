"""Low-level file work for the audit log: whole writes, exact reads, private
files, cutting a partial last line, reading lines from the end."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from tachi.audit.format import _TAIL_BLOCK


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise OSError(f"unexpected end of file at offset {offset}")
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _file_size(fd: int) -> int:
    st = os.fstat(fd)
    # /dev/full and friends: nothing to read back, nothing to repair.
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _open_private(path: Path) -> int:
    """Open ``path`` for appending (and reading back), created 0600; force 0600 if it exists."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        # Only regular files: a symlink to a device must not change the device's mode.
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _truncate_partial_line(fd: int) -> int:
    """Cut an unterminated last line (a write cut short by a crash); return bytes removed."""
    size = _file_size(fd)
    if size == 0 or _pread_exact(fd, 1, size - 1) == b"\n":
        return 0
    keep = 0
    for start in range(size, 0, -_TAIL_BLOCK):
        lo = max(0, start - _TAIL_BLOCK)
        newline = _pread_exact(fd, start - lo, lo).rfind(b"\n")
        if newline >= 0:
            keep = lo + newline + 1
            break
    os.ftruncate(fd, keep)
    return size - keep


def _lines_backwards(fd: int) -> Iterator[bytes]:
    """The newline-terminated lines of ``fd``, last first, without their newlines.

    Reads the file from the end in blocks, so resuming a large log costs only
    its tail. Expects the file to end with a newline (see ``_truncate_partial_line``).
    """
    pos = _file_size(fd)
    head = b""  # the start of a line that began before the block just read
    while pos > 0:
        n = min(_TAIL_BLOCK, pos)
        pos -= n
        parts = (_pread_exact(fd, n, pos) + head).split(b"\n")
        head = parts[0]
        for part in reversed(parts[1:]):
            if part:
                yield part
    if head:
        yield head
