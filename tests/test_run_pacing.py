"""Who may make a run's window wait for them, and for how long.

A run's caller, and followers who may type into the session, pace the window
as a pipe would: the command waits while they are behind. Each holds the
window on its own: one catching up does not let output pile up in the daemon
for another still behind. A follower who may only watch never makes the
window wait: what it is too far behind for is left out, and said."""

from __future__ import annotations

import base64
import threading
import time

from helpers import shell_session
from tachi import protocol

T = 60
#: About 40 MB of output: far past every per-connection budget (1-2 MiB).
FLOOD = "sleep 1; head -c 30000000 /dev/zero | base64 -w 76; echo flood-end"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _follow(client, run: str) -> int:
    """Ask to follow ``run``'s output (streamed), without reading anything yet."""
    return client._wire.send_request(
        "run.output", {"run": run, "stream": "f", "follow": True, "timeout": T}
    )


def _read_follow(client, request_id: int, deadline: float) -> tuple[int, int, dict]:
    """Read a follow stream to its reply: (data bytes, bytes said omitted, reply)."""
    got = omitted = 0
    while time.monotonic() < deadline:
        frame = client._wire.recv_frame(deadline - time.monotonic())
        if frame is None or frame.channel != protocol.CONTROL:
            continue
        message = protocol.decode_control(frame.payload)
        if message.get("event") == "run.output":
            got += len(base64.b64decode(message.get("data") or ""))
            omitted += int(message.get("omitted") or 0)
        elif message.get("id") == request_id:
            return got, omitted, message
    raise AssertionError("the follow stream did not end")


def test_an_observer_who_never_reads_cannot_stop_the_session(tachi_daemon):
    sid = shell_session(tachi_daemon)
    with tachi_daemon.client() as owner:
        token = owner.share(sid, "observer").token
        run = owner.run(sid, FLOOD, detach=True).run
        with tachi_daemon.client(token=token) as observer:
            request = _follow(observer, run)
            # The observer reads nothing while the whole flood is written.
            done = owner.run_wait(run, timeout=T)
            assert (done.state, done.exit_code) == ("finished", 0)
            assert done.output.endswith("flood-end\n")
            got, omitted, reply = _read_follow(observer, request, time.monotonic() + T)
    assert reply["ok"], reply
    # It was told what it missed, and missed no more than that.
    assert omitted > 0 and got + omitted == reply["result"]["outputBytes"]


def test_a_follower_catching_up_does_not_let_output_pile_up_for_another(tachi_daemon):
    sid = shell_session(tachi_daemon)
    pid = tachi_daemon.proc.pid
    with (
        tachi_daemon.client() as owner,
        tachi_daemon.client() as first,
        tachi_daemon.client() as second,
    ):
        run = owner.run(sid, FLOOD, detach=True).run
        _follow(first, run)
        _follow(second, run)
        time.sleep(3)  # neither reads: the window waits for both
        before = _rss_kib(pid)
        stop = time.monotonic() + 4
        # The first reads all it gets for a while; the second never does.
        reader = threading.Thread(target=_drain, args=(first, stop), daemon=True)
        reader.start()
        reader.join(10)
        grown_mib = (_rss_kib(pid) - before) / 1024
        state = owner.run_list(sid)[0].state
        assert grown_mib < 24, f"the daemon grew {grown_mib:.0f} MiB for a follower not reading"
        assert state == "running", "the flood went on while a follower was behind"


def _drain(client, until: float) -> None:
    while time.monotonic() < until:
        client._wire.recv_frame(max(0.0, until - time.monotonic()))
