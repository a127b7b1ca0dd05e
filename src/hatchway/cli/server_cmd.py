"""``hatchway server``: run the control plane."""

from __future__ import annotations

from pathlib import Path

import click

from hatchway.logs import setup_logging


@click.command()
@click.option("--listen", default="127.0.0.1:7080", show_default=True, help="HOST:PORT to listen on.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="State directory [env HATCHWAY_DATA_DIR, default ~/.local/share/hatchway].")
@click.option("--db", "db_url", envvar="HATCHWAY_DB", help="Database URL (sqlite:///… or postgresql://…) [default: SQLite in the data dir].")
@click.option("--access-url", envvar="HATCHWAY_ACCESS_URL", default="", help="The URL clients and agents use to reach this server.")
@click.option("-v", "--verbose", is_flag=True, help="Log the whole story of every connection.")
def server(listen: str, data_dir: Path | None, db_url: str | None, access_url: str, verbose: bool) -> None:
    """Run the Hatchway control plane (API, web UI, relay)."""
    from hatchway.db.engine import sqlite_url_for
    from hatchway.server.run import serve
    from hatchway.server.settings import Settings, default_data_dir, parse_listen

    setup_logging(verbose)
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    data = (data_dir or default_data_dir()).expanduser().resolve()
    settings = Settings(
        data_dir=data,
        db_url=db_url or sqlite_url_for(data),
        listen_host=host,
        listen_port=port,
        access_url=access_url,
    )
    raise SystemExit(serve(settings))
