"""The NATS transport end to end: a real nats-server, real daemons that only
dial out to it, the real CLI with ``--host nats://SERVER/HOST``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pexpect
import pytest
from nats_support import NatsServer, wait_until

from tachi import protocol
from tachi.testing import DaemonProcess

PREFIX = "\x1c"


@dataclass
class Relay:
    """A fleet daemon reachable through NATS, a daemon token, and its URL."""

    daemon: DaemonProcess
    nats: NatsServer
    host: str
    token: str

    @property
    def url(self) -> str:
        return f"{self.nats.url}/{self.host}"

    def run(
        self, *args: str, token: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """``tachi --host nats://…/HOST ARGS`` as a real process."""
        env = {"TACHI_TOKEN": self.token if token is None else token}
        return self.daemon.run("--host", self.url, *args, env=env, timeout=timeout)

    def spawn(self, *args: str, token: str | None = None) -> pexpect.spawn:
        argv = self.daemon.tachi_argv("--host", self.url, *args)
        env = {**self.daemon.env, "TACHI_TOKEN": self.token if token is None else token}
        return pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(30, 90), timeout=20)


def _token(daemon: DaemonProcess) -> str:
    return json.loads(daemon.run("token", "create", "--json", check=True).stdout)["token"]


def _serving(daemon: DaemonProcess) -> bool:
    status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
    return any(x["transport"] == "nats" and x.get("connected") for x in status["listeners"])


def _connections(daemon: DaemonProcess) -> int:
    status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
    return next(x["connections"] for x in status["listeners"] if x["transport"] == "nats")


@pytest.fixture
def relay(nats_server: NatsServer, fleet_daemons: Any) -> Iterator[Relay]:
    daemon = fleet_daemons(nats_server.url, "build-1", "heartbeat = 1\n")
    wait_until(lambda: _serving(daemon), 10, "the daemon serving through NATS")
    yield Relay(daemon, nats_server, "build-1", _token(daemon))


def _audit(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return json.loads(daemon.run("audit", "--json", check=True).stdout)


# -- the same scenario over unix and nats ---------------------------------------------

_ID = re.compile(r"\b[0-9a-f]{8}\b")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z|\b\d+s ago\b")
_PID = re.compile(r'"pid": \d+')
#: What differs between two daemons, not between transports: the first prompt
#: (each daemon's working directory) and the run ids shell integration types.
_PROMPT = re.compile(r"^\S+@\S+?# ", re.M)
#: (A run id may be wrapped at the screen's edge in a capture.)
_RUN_ID = re.compile(r"(?<=tachi-)(?:\n?[0-9a-f]){12}|(?<=tachi-\n)(?:\n?[0-9a-f]){12}")


def _normal(text: str) -> str:
    text = _PROMPT.sub("PROMPT ", _RUN_ID.sub("RUN", text))
    return _PID.sub('"pid": 0', _TIME.sub("T", _ID.sub("ID", text)))


def _scenario(run: Any) -> list[tuple[str, int, str, str]]:
    """Every command of the scripting tour: (command, exit code, stdout, stderr),
    ids and times normalised."""
    out = []

    def step(*args: str) -> subprocess.CompletedProcess[str]:
        result = run(*args)
        out.append((args[0], result.returncode, _normal(result.stdout), _normal(result.stderr)))
        return result

    made = step("new", "-d", "--json", "--name", "tour", "--", "bash", "--norc")
    assert made.returncode == 0, made.stderr
    step("send", "tour", "PS1='$ '; echo remote-$((6*7))\\n")
    step("wait", "tour", "--match", "remote-42", "--timeout", "30")
    step("run", "tour", "--", "echo ran-$((1+1))")
    step("run", "tour", "--", "false")
    step("capture", "tour")
    step("exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    step("record", "ls", "--json")
    step("ls", "--json")
    step("get", "no-such")
    step("send", "tour", "exit 7\\n")
    step("wait", "tour", "--exit", "--timeout", "30")
    return out


def _events(run_argv: list[str], env: dict[str, str], run: Any) -> list[str]:
    """The event types ``tachi events --json`` prints while a session is made and closed."""
    proc = subprocess.Popen(run_argv, env=env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # subscribed
        made = json.loads(run("new", "-d", "--json", "--", "sleep", "60").stdout)
        run("close", made["id"])
        types: list[str] = []
        deadline = time.monotonic() + 20
        assert proc.stdout is not None
        while time.monotonic() < deadline and "closed" not in types:
            line = proc.stdout.readline()
            if not line:
                break
            types.append(json.loads(line)["type"])
        return types
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_the_same_scenario_over_unix_and_nats_gives_the_same_output(
    relay: Relay, tachi_daemon: DaemonProcess
):
    local = _scenario(lambda *a: tachi_daemon.run(*a))
    remote = _scenario(relay.run)
    assert [s[:2] for s in remote] == [s[:2] for s in local]
    for (cmd, _code, out, err), (_, _, l_out, l_err) in zip(remote, local, strict=True):
        if cmd == "ls":  # the same session list, through either door
            assert json.loads(out) == json.loads(l_out)
        else:
            assert (out, err) == (l_out, l_err), cmd
    codes = dict((s[0], s[1]) for s in remote)
    assert codes["get"] == 3 and codes["exec"] == 3 and remote[-1][1] == 7
    assert "ran-2" in remote[3][2]
    local_events = _events(
        tachi_daemon.tachi_argv("events", "--json"), tachi_daemon.env, tachi_daemon.run
    )
    remote_events = _events(
        relay.daemon.tachi_argv("--host", relay.url, "events", "--json"),
        {**relay.daemon.env, "TACHI_TOKEN": relay.token},
        relay.run,
    )
    assert remote_events == local_events and "created" in remote_events
    # Every command said goodbye: no virtual connection is left to the heartbeat.
    assert wait_until(lambda: _connections(relay.daemon) == 0, 5, "connections closed")


def test_attach_through_nats_in_a_real_terminal(relay: Relay):
    session = relay.daemon.new("bash", "--norc")
    child = relay.spawn("attach", session["id"])
    time.sleep(0.5)
    child.send("stty size; echo typed-$((40+2))\r")
    child.expect("30 90")
    child.expect("typed-42")
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "[detached from session" in child.before.decode()


def test_fleet_attach_is_the_short_form(relay: Relay):
    relay.daemon.new("bash", "--norc", name="short")
    argv = relay.daemon.tachi_argv("fleet", "attach", "build-1/short")
    env = {**relay.daemon.env, "TACHI_TOKEN": relay.token}
    child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(30, 90), timeout=20)
    time.sleep(0.5)
    child.send("echo short-$((2+3))\r")
    child.expect("short-5")
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_the_python_clients_reach_a_fleet_host_through_nats(relay: Relay, monkeypatch):
    import tachi
    from tachi.client.aio import AsyncClient

    monkeypatch.setenv("TACHI_LOAD_PLUGINS", "nats")
    monkeypatch.setenv("TACHI_HOME", str(relay.daemon.home))
    made = relay.daemon.new("sleep", "60", name="py")
    with tachi.Client(url=relay.url, token=relay.token) as client:
        assert client.get("py").id == made["id"]

    async def main() -> list[str]:
        async with await AsyncClient.connect(url=relay.url, token=relay.token) as client:
            return [s.name for s in await client.list()]

    assert "py" in asyncio.run(main())


def test_an_unreachable_nats_or_host_fails_at_once_and_says_which(relay: Relay):
    started = time.monotonic()
    down = relay.daemon.run(
        "--host", "nats://127.0.0.1:1/build-1", "ls", env={"TACHI_TOKEN": relay.token}
    )
    assert down.returncode == 1 and time.monotonic() - started < 5
    assert "cannot reach NATS at nats://127.0.0.1:1" in down.stderr
    nobody = relay.daemon.run(
        "--host", f"{relay.nats.url}/build-9", "ls", env={"TACHI_TOKEN": relay.token}
    )
    assert nobody.returncode == 1
    assert "no tachi daemon answers for host 'build-9'" in nobody.stderr


# -- identity -------------------------------------------------------------------------


def test_an_observer_token_cannot_type_through_nats(relay: Relay):
    session = relay.daemon.new("bash", "--norc")
    grant = json.loads(
        relay.daemon.run("share", session["id"], "--role", "observer", "--json", check=True).stdout
    )
    child = relay.spawn("attach", session["id"], token=grant["token"])
    time.sleep(0.5)
    child.send("echo typed-by-$((6*7))-observer\r")
    time.sleep(1.0)
    relay.daemon.run("send", session["id"], "echo owner-$((1+1))\n", check=True)
    child.expect("owner-2")
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)
    child.close()
    screen = relay.daemon.run("capture", session["id"], check=True).stdout
    assert "typed-by-42" not in screen
    denied = [
        r
        for r in _audit(relay.daemon)
        if r["action"] == "session.write" and r["result"] == "denied"
    ]
    assert denied and denied[-1]["session"] == session["id"]
    assert denied[-1]["source"].startswith("nats:")


async def _raw_connect(relay: Relay) -> tuple[Any, Any, Any, str]:
    """A bare NATS client that opens a virtual connection by hand: (nats
    connection, channel, queue of (kind, body) from the daemon, up subject)."""
    import nats
    from tachi_nats.transport import Broken, Channel, client_handshake, client_keys, subjects

    nc = await nats.connect(relay.nats.url)
    connect, _, _ = subjects("tachi", relay.host)
    ephemeral, request = client_handshake()
    reply = json.loads((await nc.request(connect, json.dumps(request).encode(), timeout=5)).data)
    keys, _ = client_keys(ephemeral, reply, None)
    _, up, down = subjects("tachi", relay.host, reply["id"])
    received: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()

    async def publish(data: bytes) -> None:
        await nc.publish(up, data)

    channel = Channel(publish, reply["window"], keys)

    async def on_down(msg: Any) -> None:
        try:
            kind, body = channel.receive(msg.data)
        except Broken as exc:
            await received.put((-1, str(exc).encode()))
            return
        channel.consumed = channel.received
        await received.put((kind, body))

    await nc.subscribe(down, cb=on_down)
    return nc, channel, received, up


async def _control(received: Any, timeout: float = 10) -> dict[str, Any] | None:
    """The next control message, ``None`` once the daemon closed."""
    from tachi_nats.transport import CLOSE, DATA

    decoder = protocol.FrameDecoder(max_payload=1 << 24)
    while True:
        kind, body = await asyncio.wait_for(received.get(), timeout)
        if kind == CLOSE or kind < 0:
            return None
        if kind == DATA:
            for frame in decoder.feed(body):
                if frame.channel == protocol.CONTROL:
                    return protocol.decode_control(frame.payload)


def test_a_forged_hello_naming_another_principal_is_refused(relay: Relay):
    from tachi_nats.transport import DATA

    async def main() -> tuple[Any, Any]:
        nc, channel, received, _up = await _raw_connect(relay)
        try:
            forged = {
                "id": 1,
                "op": "hello",
                # Whatever a peer says about itself is a claim: no token, no identity.
                "args": {"version": protocol.VERSION, "user": "root", "uid": 0},
                "principal": {"user": "root", "uid": 0, "kind": "unix"},
            }
            await channel.send(DATA, protocol.encode_control(forged))
            answer = await _control(received)
            after = []
            while (message := await _control(received)) is not None:
                after.append(message)
            return answer, after
        finally:
            await nc.close()

    answer, after = asyncio.run(main())
    assert answer is not None and answer["ok"] is False
    assert "no identity accepted" in answer["error"]["message"]
    # Then the connection is over: at most the error event that says why (as
    # over a Unix socket; it may come in its own message), then CLOSE.
    assert [m.get("event") for m in after] in ([], ["error"]), after
    refused = [r for r in _audit(relay.daemon) if r["action"] == "auth" and r["result"] == "denied"]
    assert refused and refused[-1]["source"].startswith("nats:127.0.0.1")
    assert refused[-1]["details"]["transport"] == "nats"


def test_refused_tokens_through_nats_are_throttled_as_one_source(relay: Relay):
    """Issue 26 F5 through the relay: every NATS client is the relay's address,
    so a flood of bad tokens is one full audit record (then one count), not one
    record each, as it would be for a local peer (no address)."""
    attempts = 8
    for _ in range(attempts):
        refused = relay.run("ls", token="tachi_" + "x" * 43)
        assert refused.returncode == 4
    records = [
        r for r in _audit(relay.daemon) if r["action"] == "auth.token" and r["result"] == "denied"
    ]
    assert 1 <= len(records) < attempts
    assert records[0]["details"]["address"] == "127.0.0.1"


def test_a_client_that_sends_past_its_credit_is_cut_off(relay: Relay):
    from tachi_nats.transport import DATA, ENVELOPE

    async def main() -> dict[str, Any] | None:
        nc, channel, received, up = await _raw_connect(relay)
        try:
            hello = {"id": 1, "op": "hello", "args": {"version": 1, "token": relay.token}}
            await channel.send(DATA, protocol.encode_control(hello))
            assert (await _control(received))["ok"]
            # Ignore the credit: a window and a half of requests, never waiting.
            request = protocol.encode_control(
                {"id": 2, "op": "daemon.status", "args": {"pad": "x" * 60_000}}
            )
            offset, seq = channel.sent, channel.out_seq
            for _ in range(channel.window * 3 // 2 // len(request) + 1):
                seq += 1
                header = ENVELOPE.pack(DATA, seq, offset, channel.consumed)
                await nc.publish(up, header + channel.keys.seal(seq, request, header))
                offset += len(request)
            while True:
                message = await _control(received)
                if message is None or message.get("event") == "error":
                    return message
        finally:
            await nc.close()

    asyncio.run(main())
    assert wait_until(lambda: _connections(relay.daemon) == 0, 10, "the connection ended")
    assert relay.run("ls").returncode == 0


def test_a_lost_message_ends_the_connection_cleanly(relay: Relay):
    """NATS core does not redeliver: bytes missing from the stream end the
    virtual connection (with the reason) instead of corrupting it."""
    from tachi_nats.transport import CLOSE, DATA, ENVELOPE

    async def main() -> bytes:
        nc, channel, received, up = await _raw_connect(relay)
        try:
            hello = {"id": 1, "op": "hello", "args": {"version": 1, "token": relay.token}}
            await channel.send(DATA, protocol.encode_control(hello))
            assert (await _control(received))["ok"]
            # A request whose first 100 bytes "were lost": it claims a later offset.
            request = protocol.encode_control({"id": 2, "op": "daemon.status", "args": {}})
            seq = channel.out_seq + 1
            header = ENVELOPE.pack(DATA, seq, channel.sent + 100, channel.consumed)
            await nc.publish(up, header + channel.keys.seal(seq, request, header))
            while True:
                kind, body = await asyncio.wait_for(received.get(), 10)
                if kind == CLOSE:
                    return body
                assert kind == DATA  # no reply to the request after the gap
                assert b'"id":2' not in body and b'"id": 2' not in body
        finally:
            await nc.close()

    reason = asyncio.run(main())
    assert b"100 bytes were lost" in reason
    assert wait_until(lambda: _connections(relay.daemon) == 0, 5, "the connection ended")
    assert relay.run("ls").returncode == 0


def test_a_silent_client_is_dropped_within_three_heartbeats_and_audited(relay: Relay):
    from tachi_nats.transport import DATA

    async def main() -> float:
        nc, channel, received, _up = await _raw_connect(relay)
        try:
            hello = {"id": 1, "op": "hello", "args": {"version": 1, "token": relay.token}}
            await channel.send(DATA, protocol.encode_control(hello))
            assert (await _control(received))["ok"]
            started = time.monotonic()
            # Silent from here on (no PING): the daemon's PINGs go unanswered.
            assert await _control(received, timeout=10) is None
            return time.monotonic() - started
        finally:
            await nc.close()

    silent_for = asyncio.run(main())
    assert silent_for < 3 * 1 + 2  # heartbeat = 1 s in this fleet's config
    records = [r for r in _audit(relay.daemon) if r["action"] == "connection.heartbeat"]
    assert records and records[-1]["details"]["transport"] == "nats"


def test_the_relay_sees_ciphertext_only_and_a_pin_is_checked(relay: Relay):
    """Whoever reads every subject (the NATS server, an account with ``>``) sees
    no keystroke and no output; a client that pins the daemon's transport key
    refuses any other."""
    import threading

    import nats

    seen: list[bytes] = []
    ready, stop = threading.Event(), threading.Event()

    def eavesdrop() -> None:
        async def main() -> None:
            nc = await nats.connect(relay.nats.url)

            async def keep(msg: Any) -> None:
                seen.append(bytes(msg.data))

            await nc.subscribe("tachi.conn.>", cb=keep)
            await nc.flush()
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await nc.close()

        asyncio.run(main())

    spy = threading.Thread(target=eavesdrop, daemon=True)
    spy.start()
    assert ready.wait(10)
    try:
        session = relay.daemon.new("bash", "--norc")
        assert relay.run("send", session["id"], "echo confidential-$((6*7))\\n").returncode == 0
        waited = relay.run("wait", session["id"], "--match", "confidential-42", "--timeout", "20")
        assert waited.returncode == 0, waited.stderr
        assert "confidential-42" in relay.run("capture", session["id"]).stdout
    finally:
        stop.set()
        spy.join(10)
    assert len(seen) > 4
    everything = b"".join(seen)
    assert b"confidential" not in everything and relay.token.encode() not in everything
    fingerprint = next(
        x["fingerprint"]
        for x in json.loads(relay.daemon.run("daemon", "status", "--json").stdout)["listeners"]
        if x["transport"] == "nats"
    )
    pinned = relay.run("--fingerprint", fingerprint, "ls")
    assert pinned.returncode == 0, pinned.stderr
    wrong = relay.run("--fingerprint", "SHA256:" + "A" * 43, "ls")
    assert wrong.returncode == 4
    assert "not the pinned" in wrong.stderr
    # Unpinned: trust on first use. The key the host showed is remembered, and
    # another one later (a relay answering in its place) is refused.
    known = relay.daemon.home / "state" / "fleet" / "known_hosts"
    assert fingerprint in known.read_text()
    known.write_text(known.read_text().replace(fingerprint, "SHA256:" + "B" * 43))
    changed = relay.run("ls")
    assert changed.returncode == 4
    assert "was seen before" in changed.stderr and "SHA256:BBBB" in changed.stderr
    assert relay.run("--fingerprint", fingerprint, "ls").returncode == 0  # a pin decides


def test_a_connection_that_only_pings_is_ended_without_a_hello(relay: Relay):
    """A slot is not held by PINGs alone: no hello within five heartbeats
    (here 5 s) ends the connection, audited."""
    from tachi_nats.transport import CLOSE, PING

    async def main() -> tuple[bytes, float]:
        nc, channel, received, _up = await _raw_connect(relay)
        started = time.monotonic()
        try:
            while time.monotonic() - started < 15:
                await channel.send(PING)
                with contextlib.suppress(TimeoutError):
                    kind, body = await asyncio.wait_for(received.get(), 0.3)
                    if kind == CLOSE:
                        return body, time.monotonic() - started
            return b"", time.monotonic() - started
        finally:
            await nc.close()

    reason, after = asyncio.run(main())
    assert b"no hello within 5 s" in reason and after < 8
    refused = [r for r in _audit(relay.daemon) if r["action"] == "connect"]
    assert refused and "no hello" in refused[-1]["reason"]


# -- outages and bounds -----------------------------------------------------------------


def test_a_nats_restart_during_attach_reconnects_and_loses_no_output(relay: Relay):
    session = relay.daemon.new("bash", "--norc")
    child = relay.spawn("attach", session["id"])
    time.sleep(0.5)
    child.send("echo before-$((1+1))\r")
    child.expect("before-2")
    relay.nats.stop()
    # Output made while NATS is down (typed locally, through the Unix socket).
    relay.daemon.run(
        "send",
        session["id"],
        "for i in $(seq 1 400); do echo line-$i; done; echo done-$((2*3))\n",
        check=True,
    )
    time.sleep(1.0)
    relay.nats.start()
    child.expect("done-6", timeout=40)
    seen = child.before.decode(errors="replace")
    # Output published while a side was away may have been lost: then that
    # virtual connection ends and attach resumes on a new one. Type once it is
    # settled (keys typed into a connection that is ending are lost, as on TCP).
    if child.expect(["reconnecting", pexpect.TIMEOUT], timeout=3) == 0:
        child.expect("reconnected")
    child.send("echo after-$((2+2))\r")
    child.expect("after-4")
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    lines = re.findall(r"line-(\d+)", seen)
    expected = [str(i) for i in range(1, 401)]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    assert digest == hashlib.sha256("\n".join(expected).encode()).hexdigest(), lines[:5]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.timeout(180)
def test_10000_pipelined_requests_never_read_keep_the_daemon_bounded(relay: Relay, monkeypatch):
    """A client through NATS that pipelines captures and never reads its replies
    is held by its credit: the daemon stops acknowledging, the client's bridge
    stops sending, and its own socket fills up."""
    import socket
    import threading

    from tachi_nats.relay_client import open_connection

    daemon = relay.daemon
    assert daemon.proc is not None
    s = daemon.new("sh", "-c", "for i in $(seq 2000); do printf '%078d\\n' $i; done; exec cat")
    assert daemon.run("wait", s["id"], "--match", r"^0+2000$", "--timeout", "30").returncode == 0
    before = _rss_kib(daemon.proc.pid)
    monkeypatch.setenv("TACHI_HOME", str(daemon.home))
    sock = open_connection(relay.url, {})
    sent = 0
    try:
        hello = {"id": 1, "op": "hello", "args": {"version": 1, "token": relay.token}}
        sock.sendall(protocol.encode_control(hello))
        requests = [
            protocol.encode_control(
                {
                    "id": n,
                    "op": "session.capture",
                    "args": {"session": s["id"], "history": -1, "pad": os.urandom(2000).hex()},
                }
            )
            for n in range(2, 10_002)
        ]

        def pipeline() -> None:
            nonlocal sent
            try:
                for r in requests:
                    sock.sendall(r)
                    sent += 1
            except OSError:
                pass

        sender = threading.Thread(target=pipeline, daemon=True)
        sender.start()
        last, seen = time.monotonic(), -1
        while sender.is_alive() and time.monotonic() - last < 3:
            if sent != seen:
                seen, last = sent, time.monotonic()
            time.sleep(0.1)
        assert sent < 10_000, "the daemon read all 10,000 requests"
        started = time.monotonic()
        assert relay.run("ls").returncode == 0  # others are served meanwhile
        assert daemon.run("ls").returncode == 0
        assert time.monotonic() - started < 10
        grown = _rss_kib(daemon.proc.pid) - before
        assert grown < 64 * 1024, f"the daemon grew by {grown // 1024} MiB"
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    assert relay.run("ls").returncode == 0


def test_credentials_in_fleet_url_stay_out_of_status_and_reach_the_client(tmp_path, monkeypatch):
    from tachi_nats.relay_client import target
    from tachi_nats.settings import parse
    from tachi_nats.transport import NatsTransport

    fleet_url = "nats://alice:s3cret@nats-1:4222"
    assert NatsTransport(parse({"url": fleet_url, "host": "b7"})).url == "nats://nats-1:4222/b7"
    (tmp_path / "config.toml").write_text(f'[fleet]\nurl = "{fleet_url}"\nhost = "x"\n')
    monkeypatch.setenv("TACHI_HOME", str(tmp_path))
    assert target("nats://nats-1:4222/b8")[0].servers == [fleet_url]
    assert target("nats://other:4222/b8")[0].servers == ["nats://other:4222"]
    assert target("nats://bob:pw@nats-1:4222/b8")[0].user == "bob"
