"""The WebSocket transport end to end: a real daemon, real TLS, the real CLI."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time

import pexpect
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from ws_support import Remote, control, hello, listener, start_remote

from tachi import protocol
from tachi.testing import DaemonProcess

PREFIX = "\x1c"


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tachi: "), stderr
    return lines[0]


def _audit(daemon: DaemonProcess) -> list[dict]:
    return json.loads(daemon.run("audit", "--json", check=True).stdout)


def test_status_lists_the_listener_with_its_fingerprint(remote: Remote):
    info = listener(remote.daemon)
    assert info["url"].startswith("wss://127.0.0.1:")
    der = ssl.PEM_cert_to_DER_cert((remote.daemon.state_dir / "websocket-cert.pem").read_text())
    import base64
    import hashlib

    expected = base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    assert info["fingerprint"] == "SHA256:" + expected


def test_the_scripting_tour_works_remotely_with_the_same_json(remote: Remote):
    made = remote.run("new", "-d", "--json", "--name", "tour", "--", "bash", "--norc")
    assert made.returncode == 0, made.stderr
    session = json.loads(made.stdout)
    local = json.loads(remote.daemon.run("get", "tour", "--json", check=True).stdout)
    assert session["id"] == local["id"] and session.keys() == local.keys()
    assert remote.run("send", "tour", "echo remote-$((6*7))\\n").returncode == 0
    waited = remote.run("wait", "tour", "--match", "remote-42", "--timeout", "30")
    assert waited.returncode == 0, waited.stderr
    assert "remote-42" in remote.run("capture", "tour").stdout
    assert remote.run("send", "tour", "exit 7\\n").returncode == 0
    exited = remote.run("wait", "tour", "--exit", "--timeout", "30")
    assert exited.returncode == 7, (exited.returncode, exited.stderr)
    listed = json.loads(remote.run("ls", "--all", "--json").stdout)
    assert [s["id"] for s in listed] == [session["id"]]
    missing = remote.run("get", "no-such")
    assert missing.returncode == 3
    _one_line(missing.stderr)


def test_attach_over_wss_in_a_real_terminal(remote: Remote):
    session = json.loads(remote.run("new", "-d", "--json", "--", "bash", "--norc").stdout)
    argv = remote.daemon.tachi_argv(*remote.flags(), "attach", session["id"])
    env = {**remote.daemon.env, "TACHI_TOKEN": remote.token}
    child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(30, 90), timeout=15)
    time.sleep(0.3)
    child.send("stty size; echo typed-$((40+2))\r")
    child.expect("30 90")
    child.expect("typed-42")
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "[detached from session" in child.before.decode()


def _sockets(pid: int, table: str, column: int) -> int:
    """How many of ``pid``'s descriptors are sockets listed in /proc/net/TABLE."""
    import os
    from pathlib import Path

    lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
    inodes = {line.split()[column] for line in lines}
    links = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            continue  # closed meanwhile
    return sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)


def _unix_sockets(pid: int) -> int:
    """How many of ``pid``'s descriptors are Unix-domain sockets."""
    return _sockets(pid, "unix", 6)


def _tcp_sockets(pid: int) -> int:
    """How many of ``pid``'s descriptors are TCP (IPv4) sockets."""
    return _sockets(pid, "tcp", 9)


def test_a_remote_attach_speaks_websocket_on_its_own_tls_socket(remote: Remote):
    """Keystrokes and echoes go between the attach loop and the TLS socket: no
    socketpair and bridge thread in between (each was a hand-off per message)."""
    session = json.loads(remote.run("new", "-d", "--json", "--", "bash", "--norc").stdout)
    argv = remote.daemon.tachi_argv(*remote.flags(), "attach", session["id"])
    env = {**remote.daemon.env, "TACHI_TOKEN": remote.token, "TACHI_WARM": "0"}
    child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(30, 90), timeout=15)
    try:
        child.send("echo typed-$((40+2))\r")
        child.expect("typed-42")
        assert _unix_sockets(child.pid) == 0
        # Output that arrives in many messages at once is all drawn, none left
        # waiting in the stream where select() cannot see it.
        child.send("seq 1 3000 | tr '\\n' ' '; echo; echo done-$((6*7))\r")
        child.expect("2999 3000")
        child.expect("done-42")
        child.send(PREFIX + "d")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_a_remote_command_speaks_websocket_on_its_own_tls_socket(remote: Remote):
    """A CLI command (here a `wait` that blocks) reads its connection whenever
    it waits: it speaks WebSocket on its TLS socket too, with no socketpair and
    bridge thread (about 5 ms of `tachi --host wss://… ls`), when the
    connection keeper is off (test_ws_keeper.py has it on, the default)."""
    session = json.loads(remote.run("new", "-d", "--json", "--", "bash", "--norc").stdout)
    argv = remote.daemon.tachi_argv(
        *remote.flags(), "wait", session["id"], "--match", "later-1", "--timeout", "20"
    )
    env = {
        **remote.daemon.env,
        "TACHI_TOKEN": remote.token,
        "TACHI_WARM": "0",
        "TACHI_WS_KEEPER": "0",
    }
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not _tcp_sockets(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _tcp_sockets(proc.pid) == 1  # connected, and waiting
        assert _unix_sockets(proc.pid) == 0
        assert remote.run("send", session["id"], "echo later-$((0+1))\\n").returncode == 0
        assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_an_unpinned_self_signed_daemon_and_a_wrong_pin_are_refused(remote: Remote):
    unpinned = remote.daemon.run("--host", remote.url, "ls", env={"TACHI_TOKEN": remote.token})
    assert unpinned.returncode == 4
    assert "pin it with --fingerprint" in _one_line(unpinned.stderr)
    wrong = "SHA256:" + "A" * 43
    pinned = remote.daemon.run(
        "--host", remote.url, "--fingerprint", wrong, "ls", env={"TACHI_TOKEN": remote.token}
    )
    assert pinned.returncode == 4
    assert "not the pinned" in _one_line(pinned.stderr)


def test_a_peer_without_credentials_is_refused_and_audited(remote: Remote):
    result = remote.run("ls", token="")
    assert result.returncode == 4
    assert "present a token" in _one_line(result.stderr)
    refusals = [
        r for r in _audit(remote.daemon) if r["action"] == "auth" and r["result"] == "denied"
    ]
    assert refusals and refusals[-1]["details"]["address"] == "127.0.0.1"


def test_expired_revoked_and_rotated_tokens_over_the_network(remote: Remote):
    # 3 s, and the wait counted from its creation: a remote `tachi ls` (TLS,
    # plugins) took over a second on a loaded CI machine, past a 1 s token.
    created = time.monotonic()
    short = json.loads(remote.daemon.run("token", "create", "--ttl", "3s", "--json").stdout)
    assert remote.run("ls", token=short["token"]).returncode == 0
    time.sleep(max(0.0, created + 3.3 - time.monotonic()))
    expired = remote.run("ls", token=short["token"])
    assert expired.returncode == 4 and "expired" in expired.stderr

    revoked = json.loads(remote.daemon.run("token", "create", "--json").stdout)
    remote.daemon.run("token", "revoke", revoked["id"], check=True)
    refused = remote.run("ls", token=revoked["token"])
    assert refused.returncode == 4 and "revoked" in refused.stderr

    s = remote.daemon.new("sleep", "300")
    grant = json.loads(
        remote.daemon.run("share", s["id"], "--role", "observer", "--json", check=True).stdout
    )
    assert remote.run("get", s["id"], token=grant["token"]).returncode == 0
    remote.daemon.run("token", "rotate", s["id"], "--grace", "0", check=True)
    old = remote.run("get", s["id"], token=grant["token"])
    assert old.returncode == 4
    _one_line(old.stderr)


def test_a_revoked_daemon_token_loses_a_live_connection(remote: Remote):
    made = json.loads(remote.daemon.run("token", "create", "--json").stdout)
    with remote.raw() as ws:
        assert hello(ws, made["token"])["ok"]
        remote.daemon.run("token", "revoke", made["id"], check=True)
        request = {"command": ["true"], "pty": {"rows": 24, "cols": 80}}
        ws.send(
            protocol.encode_control({"id": 2, "op": "session.create", "args": {"request": request}})
        )
        reply = control(ws)
        assert reply["ok"] is False and reply["error"]["code"] == "permission_denied"


def test_a_user_bound_grant_is_refused_to_an_anonymous_peer(remote: Remote):
    import pwd

    other = pwd.getpwuid(65534).pw_name  # nobody
    s = remote.daemon.new("sleep", "300")
    grant = json.loads(
        remote.daemon.run(
            "share", s["id"], "--role", "observer", "--user", other, "--json", check=True
        ).stdout
    )
    result = remote.run("get", s["id"], token=grant["token"])
    assert result.returncode == 4
    assert f"belongs to {other}" in _one_line(result.stderr)


def test_ip_rules_refuse_127_0_0_2_with_a_reason_and_an_audit_record(tachi_home):
    r = start_remote(
        tachi_home,
        'listen = "0.0.0.0:0"\ntls = "self-signed"',
        security='deny_ip = ["127.0.0.2/32"]',
    )
    try:
        port = int(r.url.rsplit(":", 1)[1])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        from websockets.sync.client import connect

        with connect(
            f"wss://127.0.0.1:{port}/ws",
            ssl=ctx,
            proxy=None,
            source_address=("127.0.0.2", 0),
        ) as ws:
            event = control(ws)
            assert event["event"] == "error" and "127.0.0.2" in event["error"]["message"]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        with connect(f"wss://127.0.0.1:{port}/ws", ssl=ctx, proxy=None) as ws:
            assert hello(ws, r.token)["ok"]
        denied = [x for x in _audit(r.daemon) if x["action"] == "connect"]
        assert denied and denied[-1]["details"]["address"] == "127.0.0.2"
    finally:
        r.daemon.stop()


def test_a_foreign_origin_is_refused(remote: Remote):
    with pytest.raises(InvalidStatus) as refused:
        remote.raw(origin="https://evil.example")
    assert refused.value.response.status_code == 403
    port = remote.url.rsplit(":", 1)[1]
    with remote.raw(origin=f"https://127.0.0.1:{port}") as ws:
        assert hello(ws, remote.token)["ok"]


def test_compression_follows_the_config(tachi_home):
    r = start_remote(tachi_home, 'listen = "127.0.0.1:0"\ncompression = false')
    try:
        assert r.url.startswith("ws://")  # loopback without TLS is allowed
        with r.raw() as ws:
            assert "permessage-deflate" not in ws.response.headers.get(
                "Sec-WebSocket-Extensions", ""
            )
            assert hello(ws, r.token)["ok"]
    finally:
        r.daemon.stop()
    r = start_remote(tachi_home, 'listen = "127.0.0.1:0"')
    try:
        with r.raw() as ws:
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
    finally:
        r.daemon.stop()


def test_no_tls_off_loopback_is_refused_at_start(tachi_home):
    daemon = DaemonProcess(
        tachi_home,
        extra_env={"TACHI_LOAD_PLUGINS": "websocket"},
        config='[transports.websocket]\nlisten = "0.0.0.0:0"\n',
    )
    with pytest.raises(RuntimeError, match="without TLS"):
        daemon.start(timeout=10)


def test_a_peer_that_misses_heartbeats_is_dropped_and_audited(tachi_home):
    r = start_remote(tachi_home, 'listen = "127.0.0.1:0"\nheartbeat = "300ms"')
    try:
        port = int(r.url.rsplit(":", 1)[1])
        # A peer that completes the handshake and then never reads or answers pings.
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(x["action"] == "connection.heartbeat" for x in _audit(r.daemon)):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the silent peer was never dropped")
        assert listener(r.daemon)["connections"] == 0
        sock.close()
    finally:
        r.daemon.stop()


def test_attach_reconnects_after_a_network_drop_without_losing_output(remote: Remote):
    from ws_support import Proxy

    session = json.loads(remote.run("new", "-d", "--json", "--", "bash", "--norc").stdout)
    proxy = Proxy(int(remote.url.rsplit(":", 1)[1]))
    try:
        flags = ["--host", f"wss://127.0.0.1:{proxy.port}", "--fingerprint", remote.fingerprint]
        argv = remote.daemon.tachi_argv(*flags, "attach", session["id"])
        env = {**remote.daemon.env, "TACHI_TOKEN": remote.token}
        child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(30, 90), timeout=15)
        time.sleep(0.3)
        child.send("echo before-$((1+1))\r")
        child.expect("before-2")
        assert proxy.cut() >= 1
        # Output produced while the connection is down arrives after the resume.
        remote.daemon.run(
            "send", session["id"], "for i in 1 2 3; do echo during-$i; done\n", check=True
        )
        seen = b""
        for pattern in ("reconnect", "during-3"):
            child.expect(pattern)
            seen += child.before + child.after
        child.send("echo after-$((2+2))\r")
        child.expect("after-4")
        seen += child.before
        assert seen.count(b"during-2") == 1, seen  # neither lost nor repeated
        child.send(PREFIX + "d")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        proxy.close()


def test_ca_file_verification_and_the_python_client(remote: Remote, monkeypatch):
    cert = remote.daemon.state_dir / "websocket-cert.pem"
    # The self-signed certificate is its own CA; it names 127.0.0.1.
    by_ca = remote.daemon.run(
        "--host", remote.url, "--ca-file", str(cert), "ls", env={"TACHI_TOKEN": remote.token}
    )
    assert by_ca.returncode == 0, by_ca.stderr
    import tachi

    # In this process too, the client finds the transport through its entry point.
    monkeypatch.setenv("TACHI_LOAD_PLUGINS", "websocket")
    s = remote.daemon.new("sleep", "60", name="py")
    with tachi.Client(
        url=remote.url, token=remote.token, options={"fingerprint": remote.fingerprint}
    ) as client:
        assert client.get("py").id == s["id"]
        assert "py" in [x.name for x in client.list()]


def test_limits_and_rotation_reach_a_remote_attached_client(remote: Remote):
    s = remote.daemon.new("cat", idle_timeout="2s")
    grant = json.loads(
        remote.daemon.run("share", s["id"], "--role", "collaborator", "--json", check=True).stdout
    )
    with remote.raw() as ws:
        assert hello(ws, grant["token"])["ok"]
        ws.send(
            protocol.encode_control({"id": 2, "op": "session.attach", "args": {"session": s["id"]}})
        )
        assert control(ws)["ok"]
        remote.daemon.run("token", "rotate", s["id"], "--grace", "5s", check=True)
        events = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "detached" not in [e.get("event") for e in events]:
            events.append(control(ws, timeout=15))
        names = [e.get("event") for e in events]
        # The rotated token arrives in-band; the idle timeout then ends the session.
        token = next(e for e in events if e.get("event") == "token")
        assert token["token"].startswith("tachi_") and token["token"] != grant["token"]
        closed = next(e for e in events if e.get("event") == "closed")
        assert closed["reason"] == "idle-timeout" and names[-1] == "detached"


def test_the_listener_sends_no_tls_session_tickets(remote: Remote):
    # TLS 1.3 session tickets, sent after the handshake, stalled one connection
    # in a few hundred under load (the client waited 30 s for the HTTP answer);
    # no tachi client resumes sessions, so the listener sends none.
    host, port = remote.url.removeprefix("wss://").rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((host, int(port)), timeout=10)
    with ctx.wrap_socket(raw) as tls:
        tls.sendall(f"GET /no-such-page HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += tls.recv(4096)
        assert answer.startswith(b"HTTP/1.1 404")
        assert tls.version() == "TLSv1.3"
        assert tls.session is not None and not tls.session.has_ticket


def test_token_guessing_over_websocket_is_slowed_like_over_ssh(remote: Remote):
    """After wrong tokens from an address, its connections wait for their turn;
    a burst of guesses is mostly refused unchecked (F5)."""
    import concurrent.futures

    from tachi.daemon.refusals import THROTTLED

    def guess(i: int) -> str:
        try:
            with remote.raw() as ws:
                reply = hello(ws, token=f"tachi_{i:043d}")
                return str(reply.get("error", {}).get("message", reply))
        except Exception as exc:  # refused before the hello: the close reason says why
            return str(exc)

    assert "unknown token" in guess(0)
    # Each failure doubles the wait between attempts (up to 2 s): a first burst
    # is checked, slowly; of a second one, what would wait over 5 s is refused.
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        first = list(pool.map(guess, range(1, 21)))
        second = list(pool.map(guess, range(21, 41)))
    assert all("unknown token" in a for a in first), first
    throttled = [a for a in second if THROTTLED[:40] in a]
    assert len(throttled) >= 10, second
    records = _audit(remote.daemon)
    # Audited: in full, or counted in the interval's aggregate record.
    assert THROTTLED in json.dumps([r for r in records if r["action"] == "auth.token"])
