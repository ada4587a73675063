"""Sharing and audit: share, revoke, handoff, token rotate, audit, audit verify."""

from __future__ import annotations

import sys

import click

from tachi.cli.completion import complete_session
from tachi.cli.main import Context, checked_duration, cli, json_option, pass_ctx, token_option
from tachi.cli.output import emit_json, table


class _ShareGroup(click.Group):
    """``tachi share ID ...`` creates a grant; ``tachi share ls ID`` lists them."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


@cli.group("share", cls=_ShareGroup)
def share() -> None:
    """Let someone watch (observer) or work in (collaborator) a session.

    \b
    tachi share SESSION --role observer|collaborator [--user U] [--ttl 1h] [--allow-ip CIDR]
    tachi share ls SESSION
    """


@share.command("create", hidden=True)
@click.argument("session", shell_complete=complete_session)
@click.option(
    "--role",
    type=click.Choice(["observer", "collaborator"]),
    required=True,
    help="What the grant allows.",
)
@click.option("--user", help="A local user to let in with their own identity (no token needed).")
@click.option(
    "--spiffe-id", help="Bind the grant to this SPIFFE ID: only a peer with its SVID may use it."
)
@click.option("--ttl", callback=checked_duration, help="Expire after this long (e.g. 1h, 30m).")
@click.option(
    "--allow-ip",
    "allow_ips",
    multiple=True,
    metavar="CIDR",
    help="Only from these networks (repeatable; network transports).",
)
@json_option
@token_option
@pass_ctx
def share_create(
    ctx: Context,
    session: str,
    role: str,
    user: str | None,
    spiffe_id: str | None,
    ttl: str | None,
    allow_ips: tuple[str, ...],
    as_json: bool,
) -> None:
    """Grant ROLE on SESSION; prints the token once, with an attach command."""
    with ctx.client() as client:
        grant = client.call(
            "share.create",
            session=session,
            role=role,
            user=user,
            spiffeId=spiffe_id,
            ttl=ttl,
            allowIps=list(allow_ips),
        )
    if as_json:
        emit_json(grant)
        return
    expires = grant.get("expiresAt") or "never"
    who = f" for {user}" if user else ""
    click.echo(f"grant {grant['id']}: {role}{who}, expires {expires}", err=True)
    if role == "collaborator":
        click.echo(
            f"warning: a collaborator types into programs that run as {grant['runsAs']}"
            f" (the daemon's user), with that user's rights",
            err=True,
        )
    if user:
        click.echo(f"{user} joins with their own identity (no token), by running:", err=True)
    else:
        click.echo(f"token (shown once): {grant['token']}", err=True)
    for link in grant.get("links", []):
        # Notes for the person, like the token: stdout is the command alone, for
        # `$(tachi share …)`; --json has every link.
        click.echo(f"{link['label']}: {link['url']}", err=True)
        if link.get("warning"):
            click.echo(f"warning: {link['warning']}", err=True)
    click.echo(grant["attach"])


@share.command("ls")
@click.argument("session", shell_complete=complete_session)
@click.option(
    "--all", "show_all", is_flag=True, help="Include expired, revoked and rotated grants."
)
@json_option
@token_option
@pass_ctx
def share_ls(ctx: Context, session: str, show_all: bool, as_json: bool) -> None:
    """List SESSION's grants (never their tokens)."""
    with ctx.client() as client:
        grants = client.call("share.list", session=session, all=show_all)
    if as_json:
        emit_json(grants)
        return
    table(
        ["GRANT", "ROLE", "USER", "EXPIRES", "ALLOW-IP", "STATE"],
        [
            [
                g["id"],
                g["role"],
                g.get("user") or "-",
                g.get("expiresAt") or "never",
                ",".join(g.get("allowIps") or []) or "any",
                _grant_state(g),
            ]
            for g in grants
        ],
    )


def _grant_state(grant: dict) -> str:
    from tachi.gotime import now_ns, parse_rfc3339

    if grant.get("revoked"):
        return "revoked"
    now = now_ns()
    if grant.get("expiresAt") and parse_rfc3339(grant["expiresAt"]) <= now:
        return "expired"
    if grant.get("graceUntil") and parse_rfc3339(grant["graceUntil"]) <= now:
        return "rotated"
    return "rotating" if grant.get("replacedBy") else "active"


@cli.command("revoke")
@click.argument("session", shell_complete=complete_session)
@click.argument("grant")
@token_option
@pass_ctx
def revoke(ctx: Context, session: str, grant: str) -> None:
    """Revoke GRANT on SESSION; its clients are disconnected at once."""
    with ctx.client() as client:
        result = client.call("share.revoke", session=session, grant=grant)
    click.echo(f"revoked {grant} ({result['disconnected']} clients disconnected)", err=True)


@cli.command("handoff")
@click.argument("session", shell_complete=complete_session)
@click.option("--to", "to", required=True, help="Local user who becomes the owner.")
@click.option(
    "--keep",
    type=click.Choice(["observer", "collaborator", "none"]),
    default="observer",
    show_default=True,
    help="What you keep.",
)
@json_option
@token_option
@pass_ctx
def handoff(ctx: Context, session: str, to: str, keep: str, as_json: bool) -> None:
    """Make USER the owner of SESSION now; your attached clients are demoted live."""
    with ctx.client() as client:
        result = client.call("session.handoff", session=session, to=to, keep=keep)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"session {result['id']} now belongs to {to}; you keep: {keep}", err=True)
        click.echo(
            f"warning: its programs still run as {result['runsAs']} (the daemon's user):"
            f" {to} now controls a shell with {result['runsAs']}'s rights",
            err=True,
        )
        if result.get("socket"):
            click.echo(
                f"{to} attaches with: tachi --socket {result['socket']} attach {result['id']}"
            )


@cli.group("token")
def token() -> None:
    """Share tokens, and daemon tokens for remote use."""


@token.command("create")
@click.option("--ttl", callback=checked_duration, help="Expire after this long (default: never).")
@click.option(
    "--allow-ip", "allow_ips", multiple=True, metavar="CIDR", help="Only from these addresses."
)
@json_option
@pass_ctx
def token_create(ctx: Context, ttl: str | None, allow_ips: tuple[str, ...], as_json: bool) -> None:
    """Make a daemon token: it acts as you, from anywhere that reaches a network
    listener (tachi --host URL with TACHI_TOKEN). Printed once; stored as a hash."""
    with ctx.client() as client:
        made = client.call("token.create", ttl=ttl, allowIps=list(allow_ips))
    if as_json:
        emit_json(made)
        return
    click.echo(
        f"daemon token {made['id']}: acts as you; expires {made.get('expiresAt') or 'never'}"
    )
    click.echo(f"token (shown once): {made['token']}")
    click.echo(f"use: TACHI_TOKEN={made['token']} tachi --host URL ls")


@token.command("ls")
@click.option("--all", "show_all", is_flag=True, help="Expired and revoked ones too.")
@json_option
@pass_ctx
def token_ls(ctx: Context, show_all: bool, as_json: bool) -> None:
    """List daemon tokens (never their secrets)."""
    with ctx.client() as client:
        tokens = client.call("token.list", all=show_all)
    if as_json:
        emit_json(tokens)
        return
    if not tokens:
        click.echo("no daemon tokens", err=True)
        return
    table(
        ["TOKEN", "CREATED", "EXPIRES", "ALLOW-IP", "STATE"],
        [
            [
                t["id"],
                t["createdAt"],
                t.get("expiresAt") or "never",
                ",".join(t.get("allowIps") or []) or "any",
                _grant_state(t),
            ]
            for t in tokens
        ],
    )


@token.command("revoke")
@click.argument("grant")
@pass_ctx
def token_revoke(ctx: Context, grant: str) -> None:
    """Revoke a daemon token: its connections lose their rights at once."""
    with ctx.client() as client:
        client.call("token.revoke", grant=grant)
    click.echo(f"revoked {grant}", err=True)


@token.command("rotate")
@click.argument("session", shell_complete=complete_session)
@click.argument("grant", required=False)
@click.option(
    "--grace",
    callback=checked_duration,
    help="How long old tokens keep working (default: config, 60s; 0 = at once).",
)
@json_option
@token_option
@pass_ctx
def rotate(ctx: Context, session: str, grant: str | None, grace: str | None, as_json: bool) -> None:
    """Issue new tokens for GRANT (or all of SESSION's); clients get them in-band."""
    with ctx.client() as client:
        rotated = client.call("token.rotate", session=session, grant=grant, grace=grace)
    if as_json:
        emit_json(rotated)
        return
    for r in rotated:
        click.echo(f"{r['replaces']} -> {r['id']}: {r['token']}")


@cli.group("audit", invoke_without_command=True)
@click.option(
    "--session", help="Only records about this session (id or name; a reused name matches all)."
)
@click.option(
    "--since", help="Only records at or after this RFC 3339 time or this long ago (e.g. 1h)."
)
@json_option
@click.pass_context
def audit(click_ctx: click.Context, session: str | None, since: str | None, as_json: bool) -> None:
    """Read the audit log (this host's, from the state directory)."""
    if click_ctx.invoked_subcommand is not None:
        return
    from tachi.client.shared import audit_records
    from tachi.paths import state_dir

    path = state_dir() / "audit" / "audit.jsonl"
    if not path.exists():
        raise click.ClickException(f"no audit log at {path}")
    records = audit_records(session, since)
    if as_json:
        emit_json(records)
        return
    from tachi.cli.output import audit_line

    for r in records:
        click.echo(audit_line(r))


@audit.command("verify")
@click.option(
    "--recordings", is_flag=True, help="Also check every recording against its audited SHA-256."
)
@pass_ctx
def verify(ctx: Context, recordings: bool) -> None:
    """Check the hash chain and signed checkpoints; exit 1 naming the first bad record
    (with --recordings, or a recording file that was changed)."""
    from tachi.audit import verify as verify_log
    from tachi.paths import state_dir

    result = verify_log(state_dir() / "audit")
    if not result.ok:
        click.echo(f"tachi: audit log verification failed: {result.problem}", err=True)
        sys.exit(1)
    click.echo(f"audit log ok: {result.records} records, {result.checkpoints} checkpoints")
    if recordings:
        from tachi.cli.record_cmds import check_recordings

        check_recordings(None)
