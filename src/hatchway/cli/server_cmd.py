"""``hatchway server``: run the control plane."""

from __future__ import annotations

import grp
import pwd
from pathlib import Path

import click

from hatchway.logs import setup_logging


@click.group(invoke_without_command=True)
@click.option("--listen", default="127.0.0.1:7080", show_default=True, help="HOST:PORT to listen on.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="State directory [env HATCHWAY_DATA_DIR, default ~/.local/share/hatchway].")
@click.option("--db", "db_url", envvar="HATCHWAY_DB", help="Database URL (sqlite:///… or postgresql://…) [default: SQLite in the data dir].")
@click.option("--access-url", envvar="HATCHWAY_ACCESS_URL", default="", help="The URL clients and agents use to reach this server.")
@click.option("--internal-url", envvar="HATCHWAY_INTERNAL_URL", default="",
              help="The URL other replicas use to reach this one (stream hand-over) [default: the --listen address].")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, envvar="HATCHWAY_TRUSTED_PROXIES",
              help="Address of a load balancer in front of this server (repeatable): its X-Forwarded-For is "
                   "believed and its connections are not capped per address [env HATCHWAY_TRUSTED_PROXIES, space-separated].")
@click.option("--handshake-timeout", envvar="HATCHWAY_HANDSHAKE_TIMEOUT", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Seconds a client gets to send its request headers (and a WebSocket to be accepted).")
@click.option("--max-handshaking-per-ip", envvar="HATCHWAY_MAX_HANDSHAKING_PER_IP", type=click.IntRange(1), default=64, show_default=True,
              help="Connections one client address may have still sending headers; 16 times as many more "
                   "wait their turn, and beyond that they are dropped.")
@click.option("--max-pending-streams", envvar="HATCHWAY_MAX_PENDING_STREAMS", type=click.IntRange(1), default=32, show_default=True,
              help="SSH connections being set up (waiting for the agent) at once, per user and per workspace.")
@click.option("--max-queued-streams", envvar="HATCHWAY_MAX_QUEUED_STREAMS", type=click.IntRange(0), default=1024, show_default=True,
              help="SSH connections waiting for their turn to be set up, per user and per workspace; more are refused.")
@click.option("--dial-timeout", envvar="HATCHWAY_DIAL_TIMEOUT", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Seconds an SSH connection waits for the workspace's agent to answer.")
@click.option("--metrics-listen", envvar="HATCHWAY_METRICS_LISTEN", default="",
              help="HOST:PORT to serve Prometheus metrics on (GET /metrics only) [default: off]. Anyone who reaches "
                   "it reads them without credentials: keep it on a private address, never a public one.")
@click.option("--keep-connections", metavar="DAYS", envvar="HATCHWAY_KEEP_CONNECTIONS",
              help="Delete the records of SSH connections that ended (or were refused) more than DAYS days ago, "
                   "1 to 36500; connections still open are kept. Pruned hourly [env HATCHWAY_KEEP_CONNECTIONS; default: keep every record].")
@click.option("--keep-audit", metavar="DAYS", envvar="HATCHWAY_KEEP_AUDIT",
              help="Delete audit events (admin actions) recorded more than DAYS days ago, 1 to 36500. "
                   "Pruned hourly [env HATCHWAY_KEEP_AUDIT; default: keep every record].")
@click.option("-v", "--verbose", is_flag=True, help="Log the whole story of every connection.")
@click.pass_context
def server(ctx: click.Context, listen: str, data_dir: Path | None, db_url: str | None, access_url: str, internal_url: str, trusted_proxies: tuple[str, ...], handshake_timeout: float,
           max_handshaking_per_ip: int, max_pending_streams: int, max_queued_streams: int, dial_timeout: float,
           metrics_listen: str, keep_connections: str | None, keep_audit: str | None, verbose: bool) -> None:
    """Run the Hatchway control plane (API, web UI, relay)."""
    if ctx.invoked_subcommand is not None:
        return
    from hatchway.db.engine import sqlite_url_for
    from hatchway.server.retention import parse_keep_days
    from hatchway.server.run import serve
    from hatchway.server.settings import Settings, default_data_dir, parse_listen

    setup_logging(verbose)
    try:
        host, port = parse_listen(listen)
        metrics = parse_listen(metrics_listen, "--metrics-listen", "127.0.0.1:2112") if metrics_listen else None
        keep_connections_days = parse_keep_days(keep_connections, "--keep-connections", "HATCHWAY_KEEP_CONNECTIONS")
        keep_audit_days = parse_keep_days(keep_audit, "--keep-audit", "HATCHWAY_KEEP_AUDIT")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    data = (data_dir or default_data_dir()).expanduser().resolve()
    settings = Settings(
        data_dir=data,
        db_url=db_url or sqlite_url_for(data),
        listen_host=host,
        listen_port=port,
        access_url=access_url,
        internal_url=internal_url,
        trusted_proxies=tuple(trusted_proxies),
        dial_timeout_s=dial_timeout,
        handshake_timeout_s=handshake_timeout,
        max_handshaking_per_ip=max_handshaking_per_ip,
        max_pending_streams_per_user=max_pending_streams,
        max_pending_streams_per_workspace=max_pending_streams,
        max_queued_streams=max_queued_streams,
        metrics_listen=metrics,
        keep_connections_days=keep_connections_days,
        keep_audit_days=keep_audit_days,
    )
    raise SystemExit(serve(settings))


@server.command("rotate-secret")
@click.option("--data-dir", type=click.Path(path_type=Path), help="State directory [env HATCHWAY_DATA_DIR, default ~/.local/share/hatchway].")
@click.option("--db", "db_url", envvar="HATCHWAY_DB", help="Database URL [default: SQLite in the data dir].")
@click.option("--old-secret-lost", is_flag=True,
              help="Last resort when no data dir, replica or backup holds the secret this database was set up "
                   "with: make a new one and give every user a new SSH key pair (their old keys cannot be opened).")
@click.option("--replace-every-users-key", "confirmed", is_flag=True,
              help="Confirm --old-secret-lost: every user's key is replaced and each must run hatchway config-ssh again.")
def rotate_secret_cmd(data_dir: Path | None, db_url: str | None, old_secret_lost: bool, confirmed: bool) -> None:
    """Replace the deployment secret, re-sealing every user's private key (server stopped).

    The old secret stays in deployment.secret.old until the new one is in place; if this is
    interrupted, run it again to finish.

    With --old-secret-lost (every server stopped, and only when the secret this database was set
    up with is gone for good), every user gets a new key pair sealed with the new secret instead.
    """
    import asyncio

    from hatchway.db.engine import sqlite_url_for
    from hatchway.server import datadir
    from hatchway.server.rotate import CONFIRM_FLAG, RotationError, replace_lost_secret, rotate_secret
    from hatchway.server.settings import default_data_dir

    if confirmed and not old_secret_lost:
        raise click.UsageError(f"{CONFIRM_FLAG} confirms --old-secret-lost; without it, nothing is replaced but the secret")
    data = (data_dir or default_data_dir()).expanduser().resolve()
    try:  # the server must be stopped: it holds the data dir while it runs
        datadir.take(data)
    except (datadir.DataDirInUse, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    url = db_url or sqlite_url_for(data)
    try:
        if old_secret_lost:
            result = asyncio.run(replace_lost_secret(data, url, confirmed))
        else:
            result = asyncio.run(rotate_secret(data, url))
    except RotationError as exc:
        raise click.ClickException(str(exc)) from None
    if result.finished_earlier_run:
        click.echo("Finished the interrupted rotation: the new deployment secret is in place.")
    elif old_secret_lost:
        click.echo(
            f"Made a new deployment secret and gave {result.keys_replaced} user(s) a new SSH key pair "
            "(their old private keys cannot be opened any more).\n"
            "Next:\n"
            f"  1. With several replicas, copy {data / 'deployment.secret'} into each one's data dir; then start "
            "the server(s).\n"
            "  2. Every user runs hatchway config-ssh again to download their new key (or hatchway keys download).\n"
            "  3. Running workspaces' agents keep retrying the stopped server and, once it is back, rewrite "
            "authorized_keys with the new public key as they reconnect (within seconds): until then the old "
            "key is the one they accept. Stopped workspaces get the new key when they start."
        )
    else:
        click.echo(f"Rotated the deployment secret; re-sealed {result.keys_resealed} private key(s). Start the server again.")


@server.command("backup")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--data-dir", type=click.Path(path_type=Path), help="State directory [env HATCHWAY_DATA_DIR, default ~/.local/share/hatchway].")
@click.option("--db", "db_url", envvar="HATCHWAY_DB", help="Database URL [default: SQLite in the data dir].")
@click.option("--secret-only", is_flag=True,
              help="Only the deployment secret and a manifest (for PostgreSQL, whose database pg_dump backs up).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def backup_cmd(out: Path, data_dir: Path | None, db_url: str | None, secret_only: bool, force: bool) -> None:
    """Back up the control plane into the file OUT (0600), while the server runs.

    OUT holds a consistent copy of the SQLite database (taken with SQLite's online backup API),
    the deployment secret that opens every user's private key, and a manifest with checksums:
    keep it as safe as the secret. With PostgreSQL, back the database up with pg_dump, and this
    with --secret-only.
    """
    from hatchway.db.engine import sqlite_url_for
    from hatchway.server.backup import backup
    from hatchway.server.backup_format import BackupError
    from hatchway.server.settings import default_data_dir
    from hatchway.server.web.format import human_bytes

    data = (data_dir or default_data_dir()).expanduser().resolve()
    target = out.expanduser().absolute()
    try:
        result = backup(target, data, db_url or sqlite_url_for(data), secret_only=secret_only, force=force)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    m = result.manifest
    what = ("the SQLite database and the deployment secret" if m.holds_database
            else "the deployment secret alone (no database: back it up with pg_dump)")
    click.echo(f"Wrote {result.path} ({human_bytes(result.size)}, mode 0600): {what}; schema revision {m.schema_revision}, "
               f"{m.users} user(s), {m.workspaces} workspace(s).")
    click.echo("It opens every user's private key: keep it as safe as the deployment secret.")


@server.command("restore")
@click.argument("archive", metavar="BACKUP", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--data-dir", type=click.Path(path_type=Path), help="State directory [env HATCHWAY_DATA_DIR, default ~/.local/share/hatchway].")
@click.option("--db", "db_url", envvar="HATCHWAY_DB",
              help="For a --secret-only backup: the PostgreSQL database (restored with pg_restore first) to check the secret against.")
@click.option("--force", is_flag=True, help="Replace the data dir's database and secret (they are moved aside, not deleted).")
def restore_cmd(archive: Path, data_dir: Path | None, db_url: str | None, force: bool) -> None:
    """Restore a backup made by hatchway server backup into the data dir (server stopped).

    Nothing is written unless the archive is whole, its checksums match and its secret is the
    one its database was set up with.
    """
    from hatchway.server.backup_format import BackupError
    from hatchway.server.restore import become_owner_of, open_archive, restore
    from hatchway.server.settings import default_data_dir

    data = (data_dir or default_data_dir()).expanduser().resolve()
    path = archive.expanduser().absolute()
    def as_the_data_dirs_owner() -> None:
        owner = become_owner_of(data)
        if owner is not None:
            click.echo(f"Restoring as {_owner_text(*owner)}, the owner of {data}, so that what it places is theirs "
                       "and a server running as that user can open it.")

    try:
        fd = open_archive(path)  # as whoever runs this: the backup may be root's alone
        result = restore(path, data, db_url, report=click.echo, force=force, archive_fd=fd,
                         before_writing=as_the_data_dirs_owner)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    m = result.manifest
    what = "the database and the deployment secret" if m.holds_database else "the deployment secret"
    click.echo(f"Restored {what} of {m.created_at} (Hatchway {m.hatchway_version}, schema revision {m.schema_revision}, "
               f"{m.users} user(s), {m.workspaces} workspace(s)) into {data}.")
    if result.set_aside is not None:
        click.echo(f"The files it replaced are in {result.set_aside}.")


def _owner_text(uid: int, gid: int) -> str:
    """``user:group (uid:gid)``, with the numbers alone for an id that has no name here."""
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{user}:{group} ({uid}:{gid})"
