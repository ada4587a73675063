"""Who an SSH peer is, and what that name may *not* borrow: certificates with no
principals, names that look like other kinds of identity, "local owner only"
operations, token logins that outlive their grant, and closed sessions owned
by a name (issue 26: F7, F9, F10, F15, F17). Real daemon, real OpenSSH client,
CA and certificates made by ``ssh-keygen``."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pexpect
from ssh_support import (
    OWNER,
    SSHDaemon,
    authorized_line,
    make_key,
    ssh_daemon,
    start_ssh_daemon,
    until,
)

__all__ = ["ssh_daemon"]
#: Refused: permission denied, or (issue 26 F19) the same answer as "no such session".
REFUSED = (3, 4)


def _sign(ca: Path, key: Path, *principals: str) -> None:
    """``ssh-keygen -s CA`` a user certificate for ``key`` (no ``-n``: no principals)."""
    names = ["-n", ",".join(principals)] if principals else []
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", f"{key.name}@test", *names, "-V", "+1h",
         f"{key}.pub"],
        check=True,
    )  # fmt: skip


def _remote(
    s: SSHDaemon, *args: str, key: str = "owner", token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The local CLI over the raw protocol (``tachi --host ssh://``, the ``tachi``
    subsystem), authenticated by ``key`` (narrowed to ``token``'s grant if given)."""
    argv = s.ssh_argv(key=key)
    argv = argv[: argv.index("-T")]
    port_at = argv.index("-p")
    del argv[port_at : port_at + 2]
    env = {**s.daemon.env, "TACHI_SSH_COMMAND": shlex.join(argv)}
    env.pop("TACHI_SOCKET")
    env.pop("TACHI_TOKEN", None)
    if token is not None:
        env["TACHI_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "tachi", "--host", f"ssh://127.0.0.1:{s.port}", *args],
        env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _audit(s: SSHDaemon, action: str, result: str | None = None) -> list[dict]:
    return [r for r in s.audit() if r["action"] == action and result in (None, r["result"])]


def test_a_certificate_with_no_principals_logs_in_as_nobody(tachi_home):
    """F7: OpenSSH's sshd refuses a user certificate that lists no principals;
    asyncssh took it as valid for *any* user name, the owner's included."""
    keydir = tachi_home / "ca"
    keydir.mkdir()
    ca = make_key(keydir, "user_ca")
    s = start_ssh_daemon(tachi_home, extra_ssh=f'ca_keys = "{ca}.pub"')
    try:
        s.keys["blank"] = make_key(s.home / "keys", "blank")
        _sign(ca, s.keys["blank"])  # no -n
        s.keys["named"] = make_key(s.home / "keys", "named")
        _sign(ca, s.keys["named"], OWNER)
        s.daemon.new("bash", "--norc")
        # The same CA with the principal listed logs in: the CA is trusted.
        assert s.ssh("ls", key="named", user=OWNER).returncode == 0
        refused = s.ssh("ls", "--json", key="blank", user=OWNER)
        assert refused.returncode == 255, refused.stdout
        assert "Permission denied" in refused.stderr
        assert s.ssh("ls", key="blank", user="anybody").returncode == 255
        reasons = until(lambda: [r["reason"] for r in _audit(s, "auth", "denied")])
        assert any("lists no principals" in r for r in reasons), reasons
        logins = [r["details"]["key"] for r in _audit(s, "ssh.login")]
        assert len(logins) == 1  # only the certificate that names its principal
    finally:
        s.daemon.stop()


def test_an_ssh_principal_named_like_a_spiffe_id_does_not_get_its_grant(tachi_home):
    """F9: a grant bound with --spiffe-id is for an SVID, not for an SSH key whose
    principal happens to be spelled like the SPIFFE ID."""
    s = start_ssh_daemon(tachi_home)
    try:
        spoof = "spiffe://example.org/bob"
        s.keys["spoof"] = make_key(s.home / "keys", "spoof")
        with (s.home / "authorized_keys").open("a") as f:
            f.write(authorized_line(s.keys["spoof"], spoof) + "\n")
        session = s.daemon.new("bash", "--norc", env="PS1=kind> ")
        s.daemon.run("send", session["id"], "echo secret-$((6*7))\\n", check=True)
        grant = json.loads(
            s.daemon.run(
                "share", session["id"], "--role", "collaborator", "--spiffe-id", spoof, "--json",
                check=True,
            ).stdout
        )  # fmt: skip
        listed = s.ssh("ls", "--json", key="spoof")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        captured = s.ssh("capture", session["id"], key="spoof")
        assert captured.returncode in REFUSED, captured.stdout
        assert "secret-42" not in captured.stdout
        sent = s.ssh("send", session["id"], "'touch /tmp/pwned\\n'", key="spoof")
        assert sent.returncode in REFUSED
        denied = _audit(s, "session.get", "denied") + _audit(s, "session.read", "denied")
        assert any(r["principal"] == spoof for r in denied)
        # Nor may it use the grant's token: it is bound to the SVID, not the name.
        borrowed = _remote(s, "capture", session["id"], key="spoof", token=grant["token"])
        assert borrowed.returncode == 4, borrowed.stdout
        assert f"belongs to {spoof}" in borrowed.stderr
    finally:
        s.daemon.stop()


def test_daemon_tokens_and_exec_stay_with_the_local_owner(ssh_daemon):
    """F10: the SSH owner principal acts as the daemon's user for sessions, but
    a daemon token it mints would outlive its key, and exec is documented for
    the local owner (or a daemon token) only: refused over the raw protocol."""
    s = ssh_daemon
    session = s.daemon.new("bash", "--norc")
    # The owner principal still drives sessions over the raw protocol.
    assert _remote(s, "capture", session["id"]).returncode == 0
    minted = _remote(s, "token", "create", "--json")
    assert minted.returncode == 4, minted.stdout
    assert "tachi_" not in minted.stdout
    assert "Unix socket" in minted.stderr
    assert _remote(s, "token", "ls", "--json").returncode == 4
    ran = _remote(s, "exec", "--", "id")
    assert ran.returncode == 4, ran.stdout
    assert "uid=" not in ran.stdout
    refused = {r["action"] for r in s.audit() if r.get("reason") == "local owner only"}
    assert {"token.create", "token.list", "exec.start"} <= refused
    # The local owner (peer credentials) still may.
    local = json.loads(s.daemon.run("token", "create", "--json", check=True).stdout)
    assert local["token"].startswith("tachi_")
    assert _remote(s, "token", "revoke", local["id"]).returncode == 4
    assert s.daemon.run("token", "revoke", local["id"]).returncode == 0


def _with_password(s: SSHDaemon, password: str, *command: str) -> pexpect.spawn:
    options = ("-o", "PreferredAuthentications=keyboard-interactive",
               "-o", "NumberOfPasswordPrompts=1")  # fmt: skip
    argv = s.ssh_argv(*command, key=None, tty=True, batch=False, options=options)
    term = pexpect.spawn(argv[0], argv[1:], dimensions=(24, 80), timeout=15)
    term.expect("tachi share token: ")
    term.sendline(password)
    return term


def _share(s: SSHDaemon, session: str) -> dict:
    out = s.daemon.run("share", session, "--role", "observer", "--json", check=True).stdout
    return json.loads(out)


def test_a_token_login_ends_when_its_grant_is_rotated_out_or_revoked(ssh_daemon):
    """F15: a connection that logged in with a share token and is not attached
    was never handed the new token of a rotation: it ends with its grant."""
    s = ssh_daemon
    session = s.daemon.new("bash", "--norc")
    rotated = _share(s, session["id"])
    term = _with_password(s, rotated["token"])  # the menu: connected, not attached
    try:
        term.expect("attach to")
        s.daemon.run("token", "rotate", session["id"], rotated["id"], "--grace", "0", check=True)
        term.expect(pexpect.EOF, timeout=10)
        assert "access was revoked or expired" in term.before.decode()
    finally:
        term.close(force=True)
    # Rotated with a grace period, then the old grant revoked: the new token
    # exists, but this connection never got it.
    kept = _share(s, session["id"])
    term = _with_password(s, kept["token"])
    try:
        term.expect("attach to")
        s.daemon.run("token", "rotate", session["id"], kept["id"], "--grace", "1h", check=True)
        s.daemon.run("revoke", session["id"], kept["id"], check=True)
        term.expect(pexpect.EOF, timeout=10)
    finally:
        term.close(force=True)
    ended = until(
        lambda: [r for r in _audit(s, "ssh.disconnect") if r["reason"] == "revoked"]
    )  # fmt: skip
    assert {r["principal"] for r in ended} >= {f"token:{rotated['id']}", f"token:{kept['id']}"}


def test_a_principal_named_like_the_daemons_user_owns_no_closed_session(tachi_home):
    """F17: with owner_principals naming someone else, an SSH principal spelled
    like the daemon's user is a network identity: it must not list closed
    sessions nor read or delete their recordings, as with live sessions."""
    s = start_ssh_daemon(tachi_home, extra_ssh='owner_principals = ["tachi-ops"]')
    try:
        session = s.daemon.new("bash", "--norc", record=True)
        s.daemon.run("send", session["id"], "echo recorded-$((7*6))\\n", check=True)
        s.daemon.run("wait", session["id"], "--match", "recorded-42", "--timeout", "10", check=True)
        s.daemon.run("close", session["id"], check=True)
        (rec,) = json.loads(s.daemon.run("record", "ls", "--json", check=True).stdout)
        listed = _remote(s, "ls", "--all", "--json")  # key "owner" is principal OWNER
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        assert _remote(s, "get", session["id"], "--json").returncode in REFUSED
        assert json.loads(_remote(s, "record", "ls", "--json").stdout) == []
        out = s.home / "stolen.cast"
        stolen = _remote(s, "record", "export", rec["id"], "-o", str(out))
        assert stolen.returncode in REFUSED, stolen.stderr
        assert not out.exists() or "recorded-42" not in out.read_text()
        assert _remote(s, "record", "rm", rec["id"]).returncode in REFUSED
        still = json.loads(s.daemon.run("record", "ls", "--json", check=True).stdout)
        assert [r["id"] for r in still] == [rec["id"]]
    finally:
        s.daemon.stop()
