"""What runs behind one SSH session channel: the tachi CLI, as that SSH principal.

The daemon starts ``python -m tachi_ssh.runner ARGS`` with ``TACHI_SOCKET``
pointing at a private socket that the daemon serves as the SSH principal (see
``tachi_ssh.channel``), with the channel's PTY (or pipes) as its terminal. So
``ssh host ls --json`` prints what ``tachi ls --json`` prints and exits with
its status, and ``ssh -t host attach ID`` is ``tachi attach`` (prefix key,
resize, detach) on the SSH client's terminal.

Only commands that act through the daemon are offered: nothing that reads or
writes files on the daemon's host or starts a daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import termios

#: CLI commands available over SSH.
COMMANDS = (
    "ls",
    "get",
    "new",
    "attach",
    "detach",
    "close",
    "resize",
    "signal",
    "send",
    "capture",
    "wait",
    "window",
)
USAGE = (
    "usage: ssh [-t] HOST [COMMAND [ARGS...]]\n"
    "  no command: a menu of the sessions you may join\n"
    f"  commands: {' '.join(COMMANDS)} (as in the tachi CLI; COMMAND --help for details)\n"
)


def _never_start_a_daemon() -> None:
    # The private socket is the only way in: if it were gone, autostarting a
    # daemon there would hand this SSH user the daemon owner's identity.
    from tachi.client import autostart
    from tachi.errors import DaemonUnavailable

    def refuse(path: object, **_kwargs: object) -> int:
        raise DaemonUnavailable("the tachi daemon is not reachable")

    autostart.start_daemon = refuse  # type: ignore[assignment]


def _run_cli(args: list[str]) -> int:
    from tachi.cli.main import cli

    try:
        cli.main(args=args, prog_name="tachi")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def menu() -> int:
    """List the live sessions this principal may join; attach to the chosen one."""
    from tachi.client.sync import Client
    from tachi.errors import TachiError
    from tachi.models import SessionState

    try:
        with Client(autostart=False) as client:
            sessions = [s for s in client.list() if s.state != SessionState.CLOSED]
    except TachiError as exc:
        print(f"tachi: {exc}", file=sys.stderr)
        return exc.exit_status
    if not sys.stdin.isatty():
        return _run_cli(["ls", "--state", "live"])
    print("tachi sessions you may join:")
    for n, s in enumerate(sessions, 1):
        command = " ".join(s.command)[:40]
        print(f"  {n:2}) {s.id}  {s.name or '-':12} {s.state!s:9} {s.userId:10} {command}")
    if not sessions:
        print("  (none)")
    choices = f"1-{len(sessions)}, " if sessions else ""
    try:
        answer = input(f"attach to [{choices}n = new shell, q = quit]: ").strip()
    except (EOFError, KeyboardInterrupt):
        return 0
    if answer.isdigit() and 1 <= int(answer) <= len(sessions):
        return _run_cli(["attach", sessions[int(answer) - 1].id])
    if answer == "n":
        return _run_cli(["new"])
    if answer in ("", "q"):
        return 0
    print(f"tachi: no such choice: {answer!r}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    if os.isatty(0):
        # The channel's PTY becomes our controlling terminal, so a window-change
        # on the SSH channel reaches `tachi attach` as SIGWINCH.
        with contextlib.suppress(OSError):
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    _never_start_a_daemon()
    if not argv:
        return menu()
    if argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    if argv[0] not in COMMANDS:
        print(
            f"tachi: {argv[0]!r} is not available over SSH (commands: {' '.join(COMMANDS)})",
            file=sys.stderr,
        )
        return 2
    return _run_cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
