"""``hatchway keys``: your platform SSH key."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import click

from hatchway.cli.common import ApiClient, api, print_json, session_or_fail
from hatchway.fileutil import atomic_write, ensure_private_dir


def default_key_path(url: str) -> Path:
    host = urlsplit(url).hostname or "server"
    safe = "".join(c if c.isalnum() or c in "-." else "_" for c in host)
    return Path.home() / ".ssh" / f"hatchway_{safe}"


def download_key(client: ApiClient, path: Path) -> dict:
    """Write the private key (0600, atomically) and its .pub next to it."""
    data = client.call("GET", "/users/me/key/private")
    ensure_private_dir(path.parent)
    atomic_write(path, data["private_key"].encode(), 0o600)
    atomic_write(path.with_name(path.name + ".pub"), (data["public_key"] + "\n").encode(), 0o644)
    return data


@click.group()
def keys() -> None:
    """Your platform-generated SSH key."""


@keys.command("show")
@click.option("--json", "as_json", is_flag=True)
def show(as_json: bool) -> None:
    k = api().call("GET", "/users/me/key")
    if as_json:
        print_json(k)
    else:
        click.echo(k["public_key"])
        click.echo(k["fingerprint"])


@keys.command("download")
@click.option("--output", type=click.Path(path_type=Path), help="Where to write it [default ~/.ssh/hatchway_<server host>].")
def download(output: Path | None) -> None:
    s = session_or_fail()
    path = (output or default_key_path(s.url)).expanduser().absolute()
    data = download_key(ApiClient(s.url, s.token), path)
    click.echo(f"Wrote {path} (mode 0600), {data['fingerprint']}")


@keys.command("regenerate")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def regenerate(yes: bool) -> None:
    if not yes:
        click.confirm("Regenerate your SSH key? The old key stops working in every workspace", abort=True)
    s = session_or_fail()
    client = ApiClient(s.url, s.token)
    k = client.call("POST", "/users/me/key/regenerate")
    click.echo(f"New key {k['fingerprint']}; running workspaces now accept only the new key")
    path = default_key_path(s.url)
    if path.exists():
        download_key(client, path)
        click.echo(f"Updated {path}")
