"""The daemon's SSH host key, and who may log in: authorized keys and user CAs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh

log = logging.getLogger("tachi.ssh")
PRINCIPAL_OPTION = "tachi-principal"


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """The host key at ``path``, made once (Ed25519, mode 0600) if missing.

    Raises ``OSError`` if it cannot be written and ``asyncssh.KeyImportError``
    for a file that is not a private key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="tachid host key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        log.info("made SSH host key %s (%s)", path, fingerprint(key))
        return key
    return asyncssh.read_private_key(str(path))


def fingerprint(key: asyncssh.SSHKey) -> str:
    """``SHA256:…`` as ``ssh-keygen -l`` prints it."""
    return key.get_fingerprint("sha256")


@dataclass(frozen=True, slots=True)
class KeyMatch:
    """An accepted key: the tachi principal it names and its public key line."""

    principal: str
    key_line: str
    fingerprint: str


class LoginKeys:
    """The authorized_keys file (re-read when it changes) and the user CA keys.

    An authorized_keys entry counts only with a ``tachi-principal="NAME"``
    option; ``from="…"`` restrictions apply as in OpenSSH.
    """

    def __init__(self, authorized_keys: Path, ca_keys: Path | None) -> None:
        self.authorized_path = authorized_keys
        self.ca_path = ca_keys
        self._stamp: tuple[float, int] | None = None
        self._authorized: asyncssh.SSHAuthorizedKeys | None = None
        self._cas: list[asyncssh.SSHKey] = []
        if ca_keys is not None:
            # Read at start: a missing CA file is a configuration error worth failing on.
            self._cas = list(asyncssh.read_public_key_list(str(ca_keys)))

    def _current(self) -> asyncssh.SSHAuthorizedKeys | None:
        try:
            st = self.authorized_path.stat()
        except FileNotFoundError:
            self._stamp, self._authorized = None, None
            return None
        stamp = (st.st_mtime, st.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._authorized = asyncssh.import_authorized_keys(self.authorized_path.read_text())
            except (ValueError, OSError) as exc:
                log.error("cannot use %s: %s", self.authorized_path, exc)
                self._authorized = None
        return self._authorized

    def match(self, key: asyncssh.SSHKey, host: str, address: str) -> KeyMatch | str:
        """The principal ``key`` logs in as, or why it may not (one line)."""
        authorized = self._current()
        fp = fingerprint(key)
        if authorized is None:
            return f"no authorized keys in {self.authorized_path} (key {fp})"
        options = authorized.validate(key, host, address)
        if options is None:
            return f"unknown key {fp}"
        names = options.get(PRINCIPAL_OPTION)
        if not isinstance(names, list) or len(names) != 1 or not names[0]:
            return f'key {fp} has no {PRINCIPAL_OPTION}="NAME" option'
        line = key.export_public_key().decode().strip()
        return KeyMatch(principal=str(names[0]), key_line=line, fingerprint=fp)

    def is_ca(self, key: asyncssh.SSHKey) -> bool:
        return any(key == ca for ca in self._cas)
