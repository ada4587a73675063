"""Bad input gets an error and loses nothing: the daemon and other sessions keep running."""

from __future__ import annotations

import json
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from helpers import SHELL, wait_match
from tachi import protocol


def _raw(daemon) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(daemon.socket))
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return data
        if not chunk:
            return data
        data += chunk


def _errors(data: bytes) -> list[dict]:
    frames = protocol.FrameDecoder(max_payload=1 << 24).feed(data)
    return [json.loads(f.payload) for f in frames if f.channel == protocol.CONTROL]


def _hello() -> bytes:
    return protocol.encode_control({"id": 1, "op": "hello", "args": {"version": 1}})


def test_garbage_gets_an_error_and_only_that_connection_closes(tachi_daemon):
    other = tachi_daemon.new(*SHELL)
    cases = {
        "garbage": b"GET / HTTP/1.1\r\n\r\n",
        "oversized": struct.pack("!BI", protocol.CONTROL, 1 << 31),
        "unknown channel": struct.pack("!BI", 9, 0),
        "not hello first": protocol.encode_control({"id": 1, "op": "session.list", "args": {}}),
        "bad json": _hello() + protocol.encode(protocol.CONTROL, b"{nope"),
        "wrong version": protocol.encode_control({"id": 1, "op": "hello", "args": {"version": 99}}),
        "stdout from client": _hello() + protocol.encode(protocol.STDOUT, b"x" * 20),
    }
    for name, payload in cases.items():
        sock = _raw(tachi_daemon)
        sock.sendall(payload)
        replies = _errors(_read_until_closed(sock))
        sock.close()
        errors = [r for r in replies if r.get("event") == "error" or r.get("ok") is False]
        assert errors, f"{name}: no error reply in {replies}"
        assert errors[-1]["error"]["code"] == "protocol", name
    # Truncated frame, then hang up: nothing to answer, nothing must break.
    sock = _raw(tachi_daemon)
    sock.sendall(_hello() + struct.pack("!BI", protocol.CONTROL, 100) + b"{")
    sock.close()
    tachi_daemon.run("send", other["id"], r"echo still-$((1+1))\n", check=True)
    wait_match(tachi_daemon, other["id"], "still-2")


def test_unknown_operation_and_bad_arguments_get_precise_errors(tachi_daemon):
    with tachi_daemon.client() as client:
        for op, args, code in [
            ("no.such.op", {}, "invalid"),
            ("session.get", {"session": 5}, "invalid"),
            ("session.resize", {"session": "x", "size": {"rows": 0, "cols": 5}}, "not_found"),
            ("session.create", {"request": {"command": "not-a-list"}}, "invalid"),
            ("session.create", {"request": {"pty": {"rows": 70000, "cols": 80}}}, "invalid"),
        ]:
            try:
                client.call(op, **args)
            except Exception as exc:
                assert getattr(exc, "code", None) == code, (op, exc)
            else:
                raise AssertionError(f"{op} {args} did not fail")


frames = st.one_of(
    st.binary(max_size=512),
    st.builds(
        lambda c, p: struct.pack("!BI", c, len(p)) + p, st.integers(0, 255), st.binary(max_size=256)
    ),
    st.builds(
        lambda body: _hello() + protocol.encode_control(body),
        st.dictionaries(
            st.sampled_from(["id", "op", "args", "session"]),
            st.one_of(
                st.none(),
                st.integers(),
                st.text(max_size=20),
                st.sampled_from(
                    ["session.attach", "session.get", "window.new", "session.send", "client.resize"]
                ),
                st.dictionaries(
                    st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4
                ),
            ),
            max_size=4,
        ),
    ),
    st.builds(lambda p: _hello() + protocol.encode(protocol.STDIN, p), st.binary(max_size=128)),
)


@given(payload=frames)
def test_random_frames_never_take_the_daemon_down(tachi_daemon, payload):
    sock = _raw(tachi_daemon)
    sock.settimeout(0.5)
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        _read_until_closed(sock)
    except OSError:
        pass
    finally:
        sock.close()
    with tachi_daemon.client() as client:
        assert isinstance(client.list(), list)
    assert tachi_daemon.proc.poll() is None
