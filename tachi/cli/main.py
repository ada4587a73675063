"""The ``tachi`` command group, its shared options, and error handling.

Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 permission denied,
124 timed out. Errors are one line on stderr; ``--json`` output is one JSON
document on stdout.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from tachi import __version__
from tachi.errors import TachiError


class Context:
    """What every command needs: where the daemon is and which token to present."""

    def __init__(
        self,
        socket: str | None,
        host: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.socket = socket
        self.host = host
        self.options = options or {}
        self.token: str | None = os.environ.get("TACHI_TOKEN") or None

    def client(self, *, autostart: bool = True) -> Any:
        from tachi.client.sync import Client

        # A command reads its connection whenever it waits (it is never idle
        # holding one), so a transport that can speaks its protocol on this
        # thread, without a socketpair and a bridge thread (tachi-websocket).
        options = {**self.options, "inline": True} if self.host else self.options
        return Client(
            self.socket, url=self.host, token=self.token, autostart=autostart, options=options
        )

    @property
    def endpoint(self) -> Any:
        """Where the daemon is: ``--host`` / ``TACHI_HOST``, else the local socket."""
        from tachi.client.endpoint import resolve

        return resolve(self.socket, self.host, self.options)

    @property
    def socket_path(self) -> Any:
        from tachi.paths import socket_path

        return socket_path(self.socket)


#: Which module defines each built-in command: imported only when that command
#: runs (or for --help), so `tachi ls` does not pay for recording or sharing code.
COMMAND_MODULES = {
    **dict.fromkeys(
        [
            "new",
            "ls",
            "get",
            "attach",
            "detach",
            "close",
            "resize",
            "signal",
            "send",
            "capture",
            "wait",
            "clients",
            "rename",
            "prune",
        ],
        "session_cmds",
    ),
    "window": "window_cmds",
    **dict.fromkeys(["run", "exec", "events"], "run_cmds"),
    "daemon": "daemon_cmds",
    "plugins": "daemon_cmds",
    "record": "record_cmds",
    "play": "record_cmds",
    **dict.fromkeys(["share", "revoke", "handoff", "token", "audit"], "share_cmds"),
}


class TachiGroup(click.Group):
    """Loads command modules on demand, and turns ``TachiError`` into one line on
    stderr and its exit status."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"tachi.cli.{COMMAND_MODULES[cmd_name]}")
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TachiError as exc:
            _fail(str(exc), exc.exit_status)
        except OSError as exc:
            # A file the user named (export -o, play FILE): say which, and why.
            where = f": {exc.filename}" if exc.filename else ""
            _fail(f"{exc.strerror or exc}{where}", 1)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Run the CLI with every error as one ``tachi: ...`` line on stderr:
        usage errors exit 2, like the daemon's ``InvalidRequest``."""
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("tachi: interrupted", err=True)
            sys.exit(130)
        except click.exceptions.NoArgsIsHelpError as exc:
            # `tachi` or `tachi window` alone: the help a person asked for, whole.
            assert exc.ctx is not None
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.UsageError as exc:
            ctx = exc.ctx
            while ctx is not None and ctx.command.hidden and ctx.parent is not None:
                ctx = ctx.parent  # `tachi share ID` runs a hidden `create`
            hint = f" (see '{ctx.command_path} --help')" if ctx else ""
            _fail(_one_line(exc.format_message()) + hint, exc.exit_code)
        except click.ClickException as exc:
            _fail(_one_line(exc.format_message()), exc.exit_code)
        except KeyboardInterrupt:
            click.echo("tachi: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if os.environ.get("TACHI_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (TACHI_DEBUG=1 shows where)", 1)
        if isinstance(rv, int):
            sys.exit(rv)
        sys.exit(0)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _fail(message: str, status: int) -> None:
    click.echo(f"tachi: {_one_line(message)}", err=True)
    sys.exit(status)


pass_ctx = click.make_pass_decorator(Context)


def token_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--token T``: act with a share token instead of your own identity."""

    @click.option(
        "--token",
        envvar="TACHI_TOKEN",
        default=None,
        help="Share token to act with (or TACHI_TOKEN).",
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, token: str | None, **kwargs: Any) -> Any:
        if token:
            click.get_current_context().find_object(Context).token = token  # type: ignore[union-attr]
        return fn(*args, **kwargs)

    return wrapper


def checked_duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A click callback: reject a malformed duration (``90s``, ``30m``, ``1h30m``)
    as a usage error, worded the same for every option; pass the text on."""
    if value is not None:
        from tachi.gotime import parse_duration

        try:
            parse_duration(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def env_pairs(items: tuple[str, ...]) -> dict[str, str]:
    """``-e K=V`` options as a dict. Raises a usage error for an item without ``=``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not K=V", param_hint="--env")
        out[key] = value
    return out


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("as_json", "--json", is_flag=True, help="Output one JSON document.")(fn)


@click.group(cls=TachiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket", envvar="TACHI_SOCKET", metavar="PATH", help="Daemon socket (or TACHI_SOCKET)."
)
@click.option(
    "--host",
    envvar="TACHI_HOST",
    metavar="URL",
    help="A remote daemon, e.g. wss://host:7681 (or TACHI_HOST); needs its transport plugin.",
)
@click.option(
    "--fingerprint",
    envvar="TACHI_FINGERPRINT",
    metavar="SHA256:…",
    help="Pin the remote daemon's TLS certificate (or TACHI_FINGERPRINT).",
)
@click.option(
    "--ca-file",
    envvar="TACHI_CA_FILE",
    metavar="PATH",
    help="CA certificates to verify the remote daemon with (or TACHI_CA_FILE).",
)
@click.option("--svid-cert", metavar="PEM", help="Present this X.509-SVID (or TACHI_SVID_CERT).")
@click.option("--svid-key", metavar="PEM", help="The SVID's key (or TACHI_SVID_KEY).")
@click.option(
    "--trust-bundle", metavar="PEM", help="CAs for the daemon's SVID (or TACHI_TRUST_BUNDLE)."
)
@click.option(
    "--server-id", metavar="SPIFFE-ID", help="The daemon's expected SPIFFE ID (or TACHI_SERVER_ID)."
)
@click.version_option(__version__, prog_name="tachi")
@click.pass_context
def cli(
    ctx: click.Context,
    socket: str | None,
    host: str | None,
    fingerprint: str | None,
    ca_file: str | None,
    svid_cert: str | None,
    svid_key: str | None,
    trust_bundle: str | None,
    server_id: str | None,
) -> None:
    """Remote terminal sessions: create, attach, share, record.

    A per-user daemon (tachid) owns the sessions; it starts on first use.
    """
    options = {
        "fingerprint": fingerprint,
        "ca_file": ca_file,
        "svid_cert": svid_cert,
        "svid_key": svid_key,
        "trust_bundle": trust_bundle,
        "server_id": server_id,
    }
    ctx.obj = Context(socket, host or None, options)


def _plugin_commands() -> None:
    # Plugin commands only load for a command that is not a built-in (or for
    # the list in --help), so `tachi ls` and `tachi --socket S ls` never pay
    # for importing every plugin.
    from tachi.launch import global_options

    options, command = global_options(sys.argv[1:])
    if command in COMMAND_MODULES or (command is None and "--version" in options):
        return
    from tachi.plugins import make_plugin_manager

    # Only the plugins that add commands: not the screens, transports or identities.
    make_plugin_manager(hooks={"tachi_register_commands"}).hook.tachi_register_commands(cli=cli)


def main() -> None:
    from tachi.library_warnings import hide_unless_asked

    hide_unless_asked()  # before the plugins: their imports are where warnings come from
    _plugin_commands()
    cli(prog_name="tachi")
