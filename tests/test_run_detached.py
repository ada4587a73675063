"""Detached runs: ``tachi run --detach`` returns a run id at once; ``run wait``,
``run output [--follow]`` and ``run ls`` collect it later. A run that timed
out is one of these: its output and exit code are not lost."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from helpers import shell_session
from tachi.client.aio import AsyncClient
from tachi.daemon.run_ops import RUNS_PER_WINDOW
from tachi.errors import NotFound, TimedOut

T = 20


def test_a_detached_run_returns_at_once_and_is_collected_later(tachi_daemon):
    sid = shell_session(tachi_daemon)
    with tachi_daemon.client() as client:
        started = time.monotonic()
        r = client.run(sid, "sleep 1; echo slept; (exit 7)", detach=True)
        assert time.monotonic() - started < 1, "detach waited for the command"
        assert r.state == "running" and r.run and r.run.startswith("tachi-")
        listed = client.run_list(sid)
        assert [x.run for x in listed] == [r.run] and listed[0].state == "running"
        done = client.run_wait(r.run, timeout=T)
        assert (done.output, done.exit_code, done.state) == ("slept\n", 7, "finished")
        # Collected again, it says the same.
        assert client.run_output(r.run).output == "slept\n"
        assert client.run_list(sid)[0].exit_code == 7


def test_a_timed_out_run_is_still_collected_with_its_output_and_exit_code(tachi_daemon):
    sid = shell_session(tachi_daemon)
    with tachi_daemon.client() as client:
        with pytest.raises(TimedOut) as caught:
            client.run(sid, "echo before; sleep 1.5; echo after; (exit 3)", timeout=0.5)
        run = caught.value.run
        assert run and run.startswith("tachi-")
        assert caught.value.output == "before\n"
        done = client.run_wait(run, timeout=T)
        assert (done.output, done.exit_code) == ("before\nafter\n", 3)
        # And the next run waits its turn: it is not typed into the sleep.
        assert client.run(sid, "echo next", timeout=T).output == "next\n"


def test_a_run_started_while_a_detached_one_runs_waits_for_it(tachi_daemon):
    sid = shell_session(tachi_daemon)
    with tachi_daemon.client() as client:
        first = client.run(sid, "read line; echo got $line", detach=True)
        # `read` keeps the shell in front: a run typed now would be its input.
        client.send(sid, "typed\n")
        second = client.run(sid, "echo second", timeout=T)
        assert second.output == "second\n"
        # (The terminal echoes what `read` reads: that is the run's output too.)
        assert client.run_wait(first.run, timeout=T).output.endswith("got typed\n")


def test_output_follow_streams_until_the_run_ends(tachi_daemon):
    sid = shell_session(tachi_daemon)
    with tachi_daemon.client() as client:
        r = client.run(sid, "for i in 1 2 3; do echo $i; sleep 0.3; done; false", detach=True)
        pieces: list[bytes] = []
        followed = client.run_output(
            r.run, follow=True, timeout=T, on_output=lambda d, o: pieces.append(d)
        )
    assert b"".join(pieces) == b"1\n2\n3\n"
    assert (followed.state, followed.exit_code) == ("finished", 1)


def test_the_cli_detaches_waits_follows_and_lists(tachi_daemon):
    sid = shell_session(tachi_daemon)
    run = tachi_daemon.run("run", sid, "--detach", "--", "sleep 0.5; echo hi; (exit 4)")
    assert run.returncode == 0, run.stderr
    ident = run.stdout.strip()
    assert ident.startswith("tachi-")
    follow = tachi_daemon.run("run", "output", ident, "--follow", "--timeout", str(T), check=False)
    assert (follow.stdout, follow.returncode) == ("hi\n", 4)
    waited = tachi_daemon.run("run", "wait", ident, check=False)
    assert (waited.stdout, waited.returncode) == ("hi\n", 4)
    listed = json.loads(tachi_daemon.run("run", "ls", sid, "--json").stdout)
    assert [(x["run"], x["exitCode"], x["state"]) for x in listed] == [(ident, 4, "finished")]
    timed = tachi_daemon.run(
        "run", sid, "--timeout", "0.3", "--", "sleep 1; echo late", check=False
    )
    assert timed.returncode == 124 and "tachi run wait" in timed.stderr
    late = timed.stderr.split("tachi run wait ")[1].split()[0].rstrip(")")
    collected = tachi_daemon.run("run", "wait", late, "--timeout", str(T), check=False)
    assert (collected.stdout, collected.returncode) == ("late\n", 0)
    missing = tachi_daemon.run("run", "wait", "tachi-000000000000", check=False)
    assert missing.returncode == 3 and "no run" in missing.stderr


def test_a_window_keeps_a_bounded_number_of_runs_oldest_finished_first(tachi_daemon):
    sid = shell_session(tachi_daemon)
    with tachi_daemon.client() as client:
        ids = [client.run(sid, f"echo {i}", timeout=T).run for i in range(RUNS_PER_WINDOW + 3)]
        kept = [r.run for r in client.run_list(sid)]
        assert kept == ids[3:]
        with pytest.raises(NotFound):
            client.run_wait(ids[0], timeout=1)


def test_the_async_client_has_the_same_detached_runs(tachi_daemon):
    sid = shell_session(tachi_daemon)

    async def scenario() -> tuple[str, int, list[str]]:
        client = await AsyncClient.connect(str(tachi_daemon.socket))
        try:
            try:
                await client.run(sid, "sleep 0.8; echo a", timeout=0.2)
            except TimedOut as exc:
                run = exc.run
            assert run is not None
            done = await client.run_wait(run, timeout=T)
            listed = [r.run for r in await client.run_list(sid)]
            return done.output, done.exit_code, listed
        finally:
            await client.disconnect()

    output, code, listed = asyncio.run(scenario())
    assert (output, code) == ("a\n", 0) and len(listed) == 1
