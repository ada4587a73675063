"""One SSH connection: who logged in, its channels, and how long it may stay.

Each connection is checked against the daemon's IP rules when it opens, then
authenticated by one of: a key in the authorized_keys file (its
``tachi-principal`` option names the principal), an OpenSSH user certificate
signed by a configured CA (the SSH user name, which the certificate must list,
is the principal), or a share token given as the password. The daemon's
``authenticate`` turns that into a ``Principal``; refusals are audited with the
peer's address. Keepalives (asyncssh), an idle limit, a maximum duration, and
the revocation or expiry of a token's grant end the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import asyncssh

from tachi.core.peer import Peer
from tachi.daemon.refusals import THROTTLED
from tachi.errors import NotFound, TachiError
from tachi.gotime import now_ns
from tachi_ssh.channel import SessionChannel
from tachi_ssh.keys import KeyMatch, LoginKeys, fingerprint

if TYPE_CHECKING:
    from tachi.core.principal import Principal
    from tachi.daemon.server import Daemon
    from tachi_ssh.server import SSHTransport

#: What keyboard-interactive authentication asks for.
TOKEN_PROMPT = "tachi share token: "
#: How often a connection's limits (idle, duration, grant) are checked.
WATCH_SECONDS = 0.5


class SSHLogin(asyncssh.SSHServer):  # type: ignore[misc]
    """One SSH connection: its peer, how it authenticated, its channels and limits."""

    def __init__(self, transport: SSHTransport) -> None:
        assert transport.daemon is not None and transport.keys is not None
        self.transport = transport
        self.daemon: Daemon = transport.daemon
        self.keys: LoginKeys = transport.keys
        self.settings = transport.settings
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = Peer(transport="ssh")
        self.principal: Principal | None = None
        self.channels: set[SessionChannel] = set()
        self._candidate: tuple[str, KeyMatch] | None = None
        #: The principals of the certificate being checked (see _CertificatePrincipals).
        self._cert_principals: tuple[str, ...] = ()
        self._failures: list[str] = []
        self._audited = False
        self._started = time.monotonic()
        self._last_activity = self._started
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._ended = asyncio.Event()
        self._method = ("", "")
        self._end_reason: str | None = None

    # -- connection ------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        host, port = conn.get_extra_info("peername")[:2]
        self.peer = Peer(transport="ssh", address=str(host), port=int(port))
        self.transport.logins.add(self)
        try:
            self.daemon.check_address(self.peer)  # audits a refusal
        except TachiError:
            self._audited = True
            conn.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport.logins.discard(self)
        if self.principal is None and (self._failures or not self._audited):
            # Keys and certificates refused along the way, once per connection
            # (refused tokens and addresses were audited when they were refused).
            reason = "; ".join(dict.fromkeys(self._failures)) or "no accepted authentication"
            with contextlib.suppress(TachiError):
                self.daemon.audit_refusal(self.peer, "auth", reason)
        elif self.principal is not None:
            with contextlib.suppress(TachiError):
                self.daemon.audit_by(
                    self.principal,
                    "ssh.disconnect",
                    self.principal.grant_session,
                    result="info",
                    reason=self._end_reason or (str(exc) if exc else "closed"),
                )
        if self._watcher is not None:
            self._watcher.cancel()
        # The other tasks (channels' runners, hang-ups) end by themselves, bounded.
        self._ended.set()

    async def finished(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), 5.0)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task this connection owns (``finished`` waits for it)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def touch(self) -> None:
        self._last_activity = time.monotonic()

    def end(self, message: str) -> None:
        """Close the connection, telling each channel why first.

        Channels are closed before the connection, so the client prints the
        message before it sees the connection go."""
        for channel in list(self.channels):
            channel.notify(message)
            channel.close()
        if self.conn is not None:
            if self.channels:
                asyncio.get_running_loop().call_later(1.0, self.conn.close)
            else:
                self.conn.close()

    # -- authentication ------------------------------------------------------------
    def begin_auth(self, username: str) -> bool:
        self.peer = Peer(
            transport="ssh", address=self.peer.address, port=self.peer.port, username=username
        )
        if self.conn is not None:
            # Lets us see each offered certificate's principals before asyncssh
            # asks validate_ca_key, which gets only the CA key. Set here, as
            # asyncssh re-reads its options just before begin_auth.
            self.conn.set_authorized_keys(_CertificatePrincipals(self))
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        assert self.peer.address is not None
        found = self.keys.match(key, self.peer.address, self.peer.address)
        if isinstance(found, str):
            self._failures.append(found)
            return False
        self._candidate = ("publickey", found)
        return True

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # asyncssh checks the certificate's signature, validity and that it
        # lists ``username`` as a principal -- but it takes an empty list as
        # "any user". OpenSSH's sshd refuses such a certificate (no principals,
        # no login); so do we, before trusting the CA.
        fp = fingerprint(key)
        if not self.keys.is_ca(key):
            self._failures.append(f"certificate signed by an untrusted CA {fp}")
            return False
        if not self._cert_principals:
            self._failures.append(f"certificate signed by CA {fp} lists no principals")
            return False
        line = key.export_public_key().decode().strip()
        self._candidate = ("certificate", KeyMatch(username, line, fp))
        return True

    def password_auth_supported(self) -> bool:
        return self.settings.passwords

    def kbdint_auth_supported(self) -> bool:
        return self.settings.passwords

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, tuple[tuple[str, bool], ...]]:
        return ("", "", "", ((TOKEN_PROMPT, False),))

    async def validate_kbdint_response(self, username: str, responses: Any) -> bool:
        if len(responses) != 1:
            return False
        return await self.validate_password(username, str(responses[0]))

    async def validate_password(self, username: str, password: str) -> bool:
        """A share token as the password. After wrong ones from this address,
        each attempt waits for its slot, or is refused unchecked when the wait
        would be too long (``tachi.daemon.refusals``): guessing is slow."""
        self._candidate = None
        if not await self.daemon.refusals.before_secret(self.peer.address):
            self._audited = True
            with contextlib.suppress(TachiError):
                self.daemon.audit_refusal(self.peer, "auth.token", THROTTLED)
            return False
        if self.conn is None or self._ended.is_set():
            return False  # the client left while it waited
        peer = Peer(
            transport="ssh",
            address=self.peer.address,
            port=self.peer.port,
            username=username,
            token=password,
        )
        try:
            self.principal = self.daemon.authenticate(peer)  # audits a refusal
        except TachiError:
            self._audited = True
            return False
        self.peer = peer.with_token(None)
        self._method = ("password", "share token")
        return True

    def auth_completed(self) -> None:
        if self.principal is None and self._candidate is not None:
            method, match = self._candidate
            peer = Peer(
                transport="ssh",
                address=self.peer.address,
                port=self.peer.port,
                ssh_key=match.key_line,
                ssh_principals=(match.principal,),
                username=self.peer.username,
            )
            try:
                self.principal = self.daemon.authenticate(peer)  # audits a refusal
            except TachiError:
                self._audited = True
                if self.conn is not None:
                    self.conn.close()
                return
            self.peer = peer
            self._method = (method, match.fingerprint)
        if self.principal is None:
            if self.conn is not None:
                self.conn.close()
            return
        method, detail = self._method
        with contextlib.suppress(TachiError):
            self.daemon.audit_by(
                self.principal,
                "ssh.login",
                self.principal.grant_session,
                details={"method": method, "key": detail, "sshUser": self.peer.username},
            )
        self._watcher = self.spawn(self._watch())

    # -- sessions --------------------------------------------------------------------
    def session_requested(self) -> SessionChannel | bool:
        """A new session channel, unless unauthenticated or at ``max_sessions``
        (each runs a CLI process)."""
        if self.principal is None or len(self.channels) >= self.settings.max_sessions:
            return False
        channel = SessionChannel(self)
        self.channels.add(channel)
        return channel

    # -- limits ------------------------------------------------------------------------
    async def _watch(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            now = time.monotonic()
            reason = None
            if s.max_duration and now - self._started >= s.max_duration:
                reason = "max-duration"
                message = f"connection reached its maximum duration ({s.max_duration:g}s)"
            elif s.idle_timeout and now - self._last_activity >= s.idle_timeout:
                reason = "idle-timeout"
                message = f"connection idle for {s.idle_timeout:g}s"
            elif not self._grant_active():
                reason = "revoked"
                message = "access was revoked or expired"
            if reason is None:
                continue
            self._end_reason = reason
            self.end(message)
            return

    def _grant_active(self) -> bool:
        """Whether a token principal's grant still holds.

        The connection lives as long as the grant it logged in with: a revoked,
        expired or rotated-out grant ends it. A rotation is followed only when
        this connection was attached at the time and so was handed the new
        token in-band (its attached client holds the new grant now); a
        connection that was not attached never learned the new token."""
        p = self.principal
        if p is None or p.grant_id is None or p.grant_session is None:
            return True
        now = now_ns()
        try:
            grant = self.daemon.grants.get(p.grant_session, p.grant_id)
        except NotFound:
            return False
        if grant.active(now):
            return True
        handed = self._handed_grant(p.grant_session, grant.replacedBy)
        if handed is None:
            return False
        self.principal = replace(p, grant_id=handed)
        return True

    def _handed_grant(self, session_id: str, replacement: str | None) -> str | None:
        """The live replacement grant one of this connection's attached clients
        holds (``SharingService.rotate`` handed it the new token), if any."""
        session = self.daemon.manager.sessions.get(session_id)
        if replacement is None or session is None:
            return None
        if not self.daemon.grants.is_active(session_id, replacement):
            return None
        for client in list(session.clients.values()):
            p = client.principal
            if p.source == self.peer.source and p.grant_id == replacement:
                return replacement
        return None


class _CertificatePrincipals:
    """Stands in for asyncssh's ``authorized_client_keys`` on one connection.

    asyncssh calls ``validate(ca_key, host, addr, cert.principals, ca=True)``
    on it right before ``validate_ca_key`` for each offered certificate: we note
    the principals and trust nothing here (``None``), so keys and CAs are still
    decided by ``SSHLogin``'s own checks."""

    def __init__(self, login: SSHLogin) -> None:
        self._login = login

    def validate(
        self,
        key: asyncssh.SSHKey,
        client_host: str,
        client_addr: str,
        cert_principals: Any = None,
        ca: bool = False,
    ) -> None:
        if ca:
            self._login._cert_principals = tuple(cert_principals or ())
        return None

    def validate_x509(self, *args: Any, **kwargs: Any) -> None:
        return None  # X.509 client certificates are not offered
