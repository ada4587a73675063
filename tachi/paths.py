"""Where tachi keeps its socket, state and config (XDG, overridable for tests)."""

from __future__ import annotations

import os
from pathlib import Path

from tachi.launch import default_socket


def socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The daemon socket: ``--socket``, ``$TACHI_SOCKET``, ``$TACHI_HOME/tachi.sock``,
    ``$XDG_RUNTIME_DIR/tachi/default.sock``, else ``/tmp/tachi-$UID/default.sock``
    (see :func:`tachi.launch.default_socket`)."""
    return Path(explicit or default_socket())


def state_dir() -> Path:
    """SQLite metadata, recordings, audit log, daemon log: ``$TACHI_HOME/state`` or XDG state."""
    if home := os.environ.get("TACHI_HOME"):
        return Path(home) / "state"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tachi"


def config_path() -> Path:
    """``config.toml``: ``$TACHI_CONFIG``, ``$TACHI_HOME/config.toml`` or XDG config."""
    if explicit := os.environ.get("TACHI_CONFIG"):
        return Path(explicit)
    if home := os.environ.get("TACHI_HOME"):
        return Path(home) / "config.toml"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tachi" / "config.toml"


def ensure_private_dir(path: Path, *, owned: bool = True) -> Path:
    """Create ``path`` (and parents) with mode 0700; return it.

    ``owned=True`` is for tachi's own directories (state, audit): an existing one
    is forced back to 0700. ``owned=False`` is for a directory the user chose to
    put the socket in: if it exists it keeps its mode (``--socket /tmp/x.sock``
    must never lock everyone out of /tmp) and the socket, 0600, protects itself.
    Raises ``PermissionError`` if it belongs to another user, since a directory
    someone else controls could hide an impostor daemon.
    """
    try:
        path.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        st = path.stat()
        if st.st_uid != os.getuid():
            raise PermissionError(
                f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
            ) from None
        if not owned:
            return path
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    return path


def shared_socket_path(primary: Path, uid: int | None = None, directory: str | None = None) -> Path:
    """Where the daemon of ``primary`` lets granted local users in.

    The primary socket sits in a 0700 directory nobody else can enter. Once a
    session is shared with a local user, the daemon also listens here, in
    ``/tmp/tachi-shared-$UID`` (mode 0711: others may reach a socket whose name
    they know, not list the directory), so no ACL tool is needed. Who may use
    it is decided by peer credentials and grants, as on the primary socket.
    ``uid`` is the daemon's user (default: this process's); ``directory``
    (default ``$TACHI_SHARED_DIR``) replaces ``/tmp/tachi-shared-$UID``.
    """
    import hashlib

    # Named after the primary socket's path, so several daemons of one user never clash.
    name = hashlib.sha256(str(primary.absolute()).encode()).hexdigest()[:12]
    owner = os.getuid() if uid is None else uid
    base = directory or os.environ.get("TACHI_SHARED_DIR") or f"/tmp/tachi-shared-{owner}"
    return Path(base) / f"{name}.sock"


def ensure_shared_dir(path: Path) -> Path:
    """Create ``path`` with mode 0711, or check an existing one is really ours.

    Raises ``PermissionError`` if it is a symlink, not a directory, or belongs
    to another user (someone squatting the name in /tmp).
    """
    import stat

    try:
        path.mkdir(mode=0o711)
    except FileExistsError:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise PermissionError(
                f"{path} exists and is not a directory of yours: refusing to share through it"
            ) from None
    os.chmod(path, 0o711)
    return path
