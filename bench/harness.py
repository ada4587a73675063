"""Agent harnesses compared (issue 27): the same 50 commands through

- ``tachi run`` via the Python API (``tachi.Client.run``, one connection),
- ``tachi run`` via the CLI (one ``tachi`` process per command),
- a tmux harness as Terminal-Bench/Harbor drive terminals: ``send-keys`` of the
  command followed by ``; tmux wait-for -S``, then ``capture-pane`` and a
  printed ``$?`` sentinel parsed off the pane,
- a pexpect harness as SWE-ReX does: bash with a fixed ``PS1``, the command,
  then ``echo EXITCODESTART$?EXITCODEEND``.

The harnesses run interleaved, command by command (the order rotated), so the
machine's load and its fast and slow spells hit all alike. Reported per
harness: commands with the exact output, with the right exit code, the median
wall time per command, and the median over commands of its time over the
fastest harness's for that command. Every command is bounded by a timeout (a
hang counts as wrong and costs the timeout). Nothing asserts a time.

    .venv/bin/python bench/harness.py [--rounds 2] [--timeout 10] [--json PATH]
        [--only api,cli,tmux,pexpect] [--pause MS]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tachi.testing import DaemonProcess  # noqa: E402

# (command, output, exit code): what an agent sends, as it would send it.
COMMANDS: list[tuple[str, str, int]] = [
    ("echo hello", "hello\n", 0),
    ("(exit 3)", "", 3),
    ("false", "", 1),
    ("true", "", 0),
    ("pwd", "/tmp\n", 0),
    ("printf 'no newline'", "no newline", 0),
    ("echo 'single' \"double\"", "single double\n", 0),
    ("x=5; echo $((x * 2))", "10\n", 0),
    ("seq 1 5", "1\n2\n3\n4\n5\n", 0),
    ("seq 1 2000 | tail -n 2", "1999\n2000\n", 0),
    ("echo out; echo err >&2", "out\nerr\n", 0),
    (
        "ls /nonexistent-bench-dir",
        "ls: cannot access '/nonexistent-bench-dir': No such file or directory\n",
        2,
    ),
    ("no-such-command-bench", "bash: no-such-command-bench: command not found\n", 127),
    ("echo one\necho two", "one\ntwo\n", 0),
    ("for i in 1 2 3; do\n  echo $i\ndone", "1\n2\n3\n", 0),
    ("if true; then\n  echo yes\nfi", "yes\n", 0),
    ("cat <<'EOF'\nline $HOME\nEOF", "line $HOME\n", 0),
    ("f() { return 9; }; f", "", 9),
    ("printf 'a\\tb\\n'", "a\tb\n", 0),
    ("echo 'ünïcödé ✓'", "ünïcödé ✓\n", 0),
    ("echo $((2**20))", "1048576\n", 0),
    ("printf '%s\\n' '-n' -e", "-n\n-e\n", 0),
    ("echo done; false || echo recovered", "done\nrecovered\n", 0),
    ("sh -c 'exit 42'", "", 42),
    ("printf '\\033[31mred\\033[0m\\n'", "red\n", 0),
    ("echo EXITCODESTART0EXITCODEEND", "EXITCODESTART0EXITCODEEND\n", 0),
    ("echo '__RC=0'", "__RC=0\n", 0),
    ("echo 'SWEPROMPT> '", "SWEPROMPT> \n", 0),
    ("yes | head -n 3", "y\ny\ny\n", 0),
    ("printf 'c\\nb\\na\\n' | sort", "a\nb\nc\n", 0),
    ("echo abc | tr a-c A-C", "ABC\n", 0),
    ("echo {1..4}", "1 2 3 4\n", 0),
    ("true && echo and", "and\n", 0),
    ("! true", "", 1),
    ("true | false", "", 1),
    ("case foo in f*) echo m;; esac", "m\n", 0),
    ("echo $(echo nested)", "nested\n", 0),
    ("printf '%s\\n' 'quote'\\''s'", "quote's\n", 0),
    ("echo \\$HOME", "$HOME\n", 0),
    ("echo 'x' > /tmp/bench-h.txt; cat /tmp/bench-h.txt", "x\n", 0),
    ("wc -l < /tmp/bench-h.txt", "1\n", 0),
    ("rm -f /tmp/bench-h.txt; test -e /tmp/bench-h.txt", "", 1),
    ("sleep 0.1; echo slept", "slept\n", 0),
    ("printf ''", "", 0),
    ("printf '\\n\\n'", "\n\n", 0),
    ("# a comment only", "", 0),
    ("echo a\\\nb", "ab\n", 0),
    ("python3 -c 'print(6*7)'", "42\n", 0),
    ("echo $((7 % 3))", "1\n", 0),
    ("head -c 3000 /dev/zero | tr '\\0' x | wc -c", "3000\n", 0),
]
assert len(COMMANDS) == 50

Runner = Callable[[str, float], tuple[str | None, int | None]]


def _bash_rc(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / ".bashrc").write_text("PS1='$ '\ncd /tmp\n")
    return home


# -- tachi ---------------------------------------------------------------------------
def tachi_api(daemon: DaemonProcess, sid: str) -> Runner:
    client = daemon.client()

    def run(command: str, timeout: float) -> tuple[str | None, int | None]:
        r = client.run(sid, command, timeout=timeout)
        return r.output, r.exit_code

    return run


def tachi_cli(daemon: DaemonProcess, sid: str) -> Runner:
    exe = shutil.which("tachi", path=str(ROOT / ".venv/bin")) or "tachi"

    def run(command: str, timeout: float) -> tuple[str | None, int | None]:
        done = subprocess.run(
            [exe, "run", sid, "--timeout", str(timeout), "--", command],
            env=daemon.env,
            capture_output=True,
            timeout=timeout + 15,
        )
        return done.stdout.decode(errors="replace"), done.returncode

    return run


# -- tmux (Terminal-Bench style) -----------------------------------------------------
class Tmux:
    def __init__(self, home: Path) -> None:
        self.sock = str(home / "tmux.sock")
        self.env = {**os.environ, "HOME": str(home)}
        self.tmux("new-session", "-d", "-s", "h", "-x", "200", "-y", "50", "bash")
        self.tmux("set-option", "-t", "h", "history-limit", "10000")
        time.sleep(0.5)
        self.n = 0

    def tmux(self, *args: str, timeout: float = 10) -> str:
        return subprocess.run(
            ["tmux", "-S", self.sock, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        ).stdout

    def run(self, command: str, timeout: float) -> tuple[str | None, int | None]:
        self.n += 1
        # As Terminal-Bench: the command, then a wait-for signal; the exit
        # code from a sentinel printed after it. Three tmux processes per
        # command: send-keys, wait-for, capture-pane.
        tag = f"wait-for -S d{self.n}"
        line = f"{command}; echo __RC=$?; tmux -S {self.sock} {tag}"
        self.tmux("send-keys", "-t", "h", line, "Enter")
        try:
            subprocess.run(
                ["tmux", "-S", self.sock, "wait-for", f"d{self.n}"],
                env=self.env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.tmux("send-keys", "-t", "h", "C-c", "")
            return None, None
        pane = self.tmux("capture-pane", "-t", "h", "-p", "-J", "-S", "-300")
        lines = pane.split("\n")
        # Output: after the echoed line that carries this command's tag, up
        # to the sentinel.
        start = max((i for i, x in enumerate(lines) if x.endswith(tag)), default=None)
        rc_at = max((i for i, x in enumerate(lines) if x.startswith("__RC=")), default=None)
        if start is None or rc_at is None or rc_at <= start:
            return None, None
        code = int(re.sub(r"\D", "", lines[rc_at]) or -1)
        return "".join(x.rstrip(" ") + "\n" for x in lines[start + 1 : rc_at]), code

    def close(self) -> None:
        self.tmux("kill-server")


# -- pexpect (SWE-ReX style) ---------------------------------------------------------
class Pexpect:
    PS1 = "SWEPROMPT> "

    def __init__(self, home: Path) -> None:
        import pexpect

        self.pexpect = pexpect
        self.child = pexpect.spawn(
            "bash",
            ["--norc", "--noprofile"],
            env={**os.environ, "HOME": str(home), "PS1": self.PS1, "PS2": "", "TERM": "dumb"},
            encoding="utf-8",
            codec_errors="replace",
            echo=False,
            dimensions=(50, 200),
        )
        # pexpect waits 50 ms before each send by default; harnesses turn it off.
        self.child.delaybeforesend = None
        self.child.sendline(
            f"cd /tmp; PS1='{self.PS1}'; PS2=''; bind 'set enable-bracketed-paste off' 2>/dev/null"
        )
        self.child.expect_exact(self.PS1, timeout=10)
        self.child.expect_exact(self.PS1, timeout=10)

    def run(self, command: str, timeout: float) -> tuple[str | None, int | None]:
        try:
            self.child.sendline(command)
            self.child.expect_exact(self.PS1, timeout=timeout)
            output = self.child.before
            self.child.sendline("echo EXITCODESTART$?EXITCODEEND")
            self.child.expect(r"EXITCODESTART(\d+)EXITCODEEND", timeout=timeout)
            code = int(self.child.match.group(1))
            self.child.expect_exact(self.PS1, timeout=timeout)
        except (self.pexpect.TIMEOUT, self.pexpect.EOF):
            self.child.sendintr()
            with contextlib.suppress(self.pexpect.TIMEOUT, self.pexpect.EOF):
                self.child.expect_exact(self.PS1, timeout=2)
            return None, None
        return output.replace("\r\n", "\n"), code

    def close(self) -> None:
        self.child.close(force=True)


def measure(
    runners: dict[str, Runner], rounds: int, timeout: float, pause: float = 0.0
) -> list[dict[str, Any]]:
    """Every command through every harness, interleaved (command by command,
    harness by harness, the order rotated each round) so whatever else the
    machine does, and its fast and slow spells, hit all of them alike.
    ``pause``: seconds of idle before each command (an agent thinks between
    commands: every harness then starts cold)."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    right_output = dict.fromkeys(runners, 0)
    right_code = dict.fromkeys(runners, 0)
    wrong: dict[str, list[str]] = {name: [] for name in runners}
    names = list(runners)
    for round_ in range(rounds):
        for index, (command, output, code) in enumerate(COMMANDS):
            shift = (round_ + index) % len(names)
            for name in names[shift:] + names[:shift]:
                if pause:
                    time.sleep(pause)
                started = time.perf_counter()
                try:
                    got, rc = runners[name](command, timeout)
                except Exception as exc:  # a harness error is a wrong answer, as a hang is
                    got, rc = None, None
                    wrong[name].append(f"{command!r}: {type(exc).__name__}: {exc}")
                times[name].append(time.perf_counter() - started)
                right_output[name] += got == output
                right_code[name] += rc == code
                if got != output or rc != code:
                    wrong[name].append(f"{command!r}: {got!r} ({rc})")
    return [
        {
            "harness": name,
            "commands": len(COMMANDS) * rounds,
            "exactOutput": right_output[name],
            "exitCode": right_code[name],
            "medianMs": round(statistics.median(times[name]) * 1000, 2),
            "maxMs": round(max(times[name]) * 1000, 1),
            # Per command, this harness's time over the fastest harness's.
            "medianRatioToFastest": round(
                statistics.median(
                    t / min(times[other][k] for other in names) for k, t in enumerate(times[name])
                ),
                2,
            ),
            "wrong": wrong[name][:20],
        }
        for name in names
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument(
        "--pause", type=float, default=0.0, help="ms of idle before each command (default 0)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--only",
        default="api,cli,tmux,pexpect",
        help="harnesses to run, of api,cli,tmux,pexpect (the two in-process ones alone:"
        " no process started between their commands)",
    )
    args = parser.parse_args()
    chosen = set(args.only.split(","))
    with contextlib.ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tachi-h-", dir="/tmp")))
        daemon = DaemonProcess(home / "d")
        (home / "d").mkdir()
        daemon.start()
        stack.callback(daemon.stop)
        user = _bash_rc(home / "user")
        sid = daemon.new(shutil.which("bash"), env=f"HOME={user}")["id"]
        tmux = Tmux(_bash_rc(home / "tmux"))
        stack.callback(tmux.close)
        pex = Pexpect(home / "pexpect")
        stack.callback(pex.close)
        every: dict[str, tuple[str, Runner]] = {
            "api": ("tachi run (API)", tachi_api(daemon, sid)),
            "cli": ("tachi run (CLI)", tachi_cli(daemon, sid)),
            "tmux": ("tmux send-keys + wait-for + capture-pane", tmux.run),
            "pexpect": ("pexpect PS1 + echo $?", pex.run),
        }
        runners = dict(every[key] for key in every if key in chosen)
        results = measure(runners, args.rounds, args.timeout, args.pause / 1000)
    pause = f", {args.pause:g} ms idle before each command" if args.pause else ""
    print(f"load average {os.getloadavg()[0]:.2f}; harnesses interleaved command by command{pause}")
    print(
        f"{'harness':44} {'exact output':>13} {'exit code':>10} {'median ms':>10}"
        f" {'x fastest':>10} {'max ms':>9}"
    )
    for r in results:
        n = r["commands"]
        print(
            f"{r['harness']:44} {r['exactOutput']:>6}/{n:<6} {r['exitCode']:>4}/{n:<5}"
            f" {r['medianMs']:>10} {r['medianRatioToFastest']:>10} {r['maxMs']:>9}"
        )
    for r in results:
        for w in r["wrong"][:6]:
            print(f"  {r['harness']}: {w}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
