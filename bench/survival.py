"""Sessions that outlive the daemon (issue 28): ``tachi daemon restart`` under load.

200 sessions (20 of them shells with a ``tachi attach`` client each in a real
PTY), then ``tachi daemon restart``. Checked: every session kept with the same
PIDs, every client reconnected (a line typed in each comes back). Reported:
time without service (as the restart prints it), time to adopt the sessions
(the new daemon's ``keeper.adoptMs``), the keeper's RSS at 1 and at N sessions,
and echo latency and throughput of one more attached session, measured with
all of them in place, before and after (bench/run.py's helpers). Nothing here asserts a timing.

    .venv/bin/python bench/survival.py [--sessions 200] [--clients 20] [--keys 200]
        [--mib 16] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    TACHI,
    Env,
    bench_echo,
    bench_throughput,
    drain_until,
    kill,
    raise_nofile,
    rss_kib,
    spawn,
)


def status(env: Env) -> dict[str, Any]:
    return json.loads(env.tachi("daemon", "status", "--json"))


def window_pids(env: Env) -> dict[str, list[int]]:
    listed = json.loads(env.tachi("ls", "--json"))
    return {s["id"]: [w["pid"] for w in s["windows"]] for s in listed}


def echo_and_throughput(env: Env, tag: str, keys: int) -> dict[str, float]:
    echo = bench_echo(env, "tachi", 0, keys, prefix=f"ec{tag}")
    flood = bench_throughput(env, "tachi", 0 if tag == "b" else 1)
    return {
        "echo_p50_ms": echo["p50_ms"],
        "echo_p99_ms": echo["p99_ms"],
        "server_us_per_key": echo["server_us"],
        "throughput_mib_s": flood["mib_s"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--mib", type=int, default=16, help="throughput payload size")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "survival.json"))
    args = parser.parse_args()
    raise_nofile()
    env = Env()
    results: dict[str, Any] = {"sessions": args.sessions, "clients": args.clients}
    clients = []
    try:
        subprocess.run(
            f"head -c {args.mib * 3 // 4 * 2**20} /dev/urandom | base64 > {env.data}",
            shell=True,
            check=True,
        )
        env.tachi("daemon", "start")

        # Sessions: the first `clients` are shells with a client attached.
        for i in range(args.sessions):
            command = ["bash", "--norc", "--noprofile"] if i < args.clients else ["sleep", "3600"]
            env.tachi("new", "-d", "--name", f"s{i}", "--", *command)
            if i == 0:
                time.sleep(0.5)
                results["keeper_rss_kib_1"] = rss_kib(status(env)["keeper"]["pid"])
        keeper_pid = status(env)["keeper"]["pid"]
        results["keeper_rss_kib_n"] = rss_kib(keeper_pid)
        results["keeper_kib_per_session"] = (
            results["keeper_rss_kib_n"] - results["keeper_rss_kib_1"]
        ) / max(1, args.sessions - 1)
        for i in range(args.clients):
            proc = spawn([*TACHI, "attach", f"s{i}"], env.env)
            clients.append(proc)
        for i, proc in enumerate(clients):
            proc.write(f"echo up{i}-$((1+1))\r".encode())
            drain_until(proc, f"up{i}-2".encode(), 60)
        # Measured with every session and client in place, before and after.
        results["before"] = echo_and_throughput(env, "b", args.keys)
        before = window_pids(env)
        daemon_before = status(env)["pid"]

        began = time.monotonic()
        out = subprocess.run(
            [*TACHI, "daemon", "restart"], env=env.env, capture_output=True, text=True, timeout=300
        )
        results["restart_wall_ms"] = (time.monotonic() - began) * 1000
        if out.returncode:
            raise RuntimeError(f"restart failed: {out.stderr}")
        gap = re.search(r"(\d+) ms without service", out.stderr)
        results["without_service_ms"] = int(gap.group(1)) if gap else None
        after_status = status(env)
        results["adopt_ms"] = after_status["keeper"]["adoptMs"]
        results["adopted"] = after_status["keeper"]["adopted"]
        assert after_status["pid"] != daemon_before and after_status["keeper"]["pid"] == keeper_pid
        after = window_pids(env)
        results["sessions_kept"] = sum(1 for sid, p in before.items() if after.get(sid) == p)

        # Every client: reconnected on its own, and what it types comes back.
        began = time.monotonic()
        reconnected = 0
        for i, proc in enumerate(clients):
            proc.write(f"echo back{i}-$((2+1))\r".encode())
            try:
                drain_until(proc, f"back{i}-3".encode(), 60)
                reconnected += 1
            except TimeoutError:
                pass
        results["clients_reconnected"] = reconnected
        results["all_clients_back_s"] = time.monotonic() - began
        results["after"] = echo_and_throughput(env, "a", args.keys)
    finally:
        for proc in clients:
            kill(proc)
        env.close()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
