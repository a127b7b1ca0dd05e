"""``hatchway keys``: your platform SSH key."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import click

from hatchway.cli.common import (
    ApiClient,
    api,
    directory_problem,
    fail,
    fail_write,
    json_option,
    print_json,
    session_or_fail,
)
from hatchway.cli.replies import Key, PrivateKey
from hatchway.fileutil import atomic_write, make_private_dir, read_regular
from hatchway.names import shown

DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_only_name(url: str) -> str:
    """``hatchway_<host>``, the host made safe for a file name (``:`` of IPv6 becomes ``_``)."""
    host = urlsplit(url).hostname or "server"
    return "hatchway_" + "".join(c if c.isalnum() or c in "-." else "_" for c in host)


def _explicit_port(url: str) -> int | None:
    """The URL's port unless it is its scheme's default (or absent, or unparseable)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    return None if port is None or port == DEFAULT_PORTS.get(parts.scheme.lower()) else port


def key_file_name(url: str) -> str:
    """``hatchway_<host>``, plus ``_<port>`` when the URL names a port other than its scheme's.

    The port is part of the name because two deployments on one host (``127.0.0.1:7411`` and
    ``:7412``) are different key owners: a host-only name made each download overwrite the other
    deployment's key. Deployments on the default port keep the name they always had.
    """
    port = _explicit_port(url)
    return _host_only_name(url) if port is None else f"{_host_only_name(url)}_{port}"


def legacy_key_file_name(url: str) -> str | None:
    """The host-only name releases before the port was added gave this URL's key, if different."""
    return None if _explicit_port(url) is None else _host_only_name(url)


def ssh_dir() -> Path:
    """``~/.ssh``: the one directory Hatchway creates for a file of the person's (0700, as
    ssh-keygen does when it is missing); any other destination's directory must exist."""
    return Path.home() / ".ssh"


def default_key_path(url: str) -> Path:
    """Where a new download of this deployment's key goes: ``~/.ssh/`` + :func:`key_file_name`."""
    return ssh_dir() / key_file_name(url)


def holds_key(path: Path, public_key: str) -> bool:
    """Whether ``path`` and its ``.pub`` exist and the .pub is ``public_key`` (type and data).

    Anything else (missing, unreadable, not text, or not a regular file: a FIFO must not hang
    config-ssh) means the key is downloaded again, and writing it says what is wrong.
    """
    try:
        on_disk = read_regular(path.with_name(path.name + ".pub"))[1].decode().split()[:2]
    except (OSError, UnicodeDecodeError):
        return False
    return path.is_file() and on_disk == public_key.split()[:2]


def choose_key_path(url: str, public_key: str) -> Path:
    """The key file to use for this deployment, given the account's current ``public_key``.

    Upgrade rule: a key downloaded by an older release sits under the host-only name, and the
    user's ssh config (our block, or their own ``IdentityFile`` lines) points at it. As long as
    the new name does not exist yet and the old file holds exactly this account's current key,
    keep using the old file, so those references go on working and ``keys regenerate`` goes on
    refreshing it. Otherwise use the new name and never touch the old file: it may be another
    deployment's key (the collision the new name fixes), or stale.
    """
    new = default_key_path(url)
    legacy = legacy_key_file_name(url)
    if legacy is None or new.exists():
        return new
    old = new.with_name(legacy)
    return old if holds_key(old, public_key) else new


def check_key_destination(path: Path, url: str) -> None:
    """Fail, saying what to do, unless ``path`` can become the key file; before anything is fetched.

    A directory is refused rather than written into (``os.replace`` cannot put a file over it),
    and so is a destination whose directory is missing, except ``~/.ssh``: a mistyped
    ``--output`` must not leave new folders behind.
    """
    if path.is_dir():
        fail(
            f"{path} is a directory; give the key file's path, "
            f"for example: hatchway keys download --output {path / key_file_name(url)}"
        )
    problem = None if path.parent == ssh_dir() else directory_problem(path.parent, "--output")
    if problem:
        fail(f"cannot write {path}: {problem}")


def download_key(client: ApiClient, path: Path) -> PrivateKey:
    """Write the private key (0600, atomically) and its .pub next to it.

    Only the two files are written: a missing ``~/.ssh`` is created 0700 (as ssh-keygen does),
    and no directory's mode is ever changed, since the folder may be shared (``/tmp``) or the
    person's choice. The key file's own 0600 is what keeps it private.
    """
    data = client.call("GET", "/users/me/key/private", expect=PrivateKey)
    pub = path.with_name(path.name + ".pub")
    files = [(path, data["private_key"], 0o600), (pub, data["public_key"] + "\n", 0o644)]
    try:
        if path.parent == ssh_dir():
            make_private_dir(path.parent)
    except OSError as exc:
        fail(f"cannot create {path.parent}: {exc.strerror or exc}; fix that, then try again")
    for target, text, mode in files:
        try:
            atomic_write(target, text.encode(), mode)
        except OSError as exc:
            fail_write(target, exc, "try again")
    return data


@click.group()
def keys() -> None:
    """Your platform-generated SSH key."""


@keys.command("show")
@json_option
def show(as_json: bool) -> None:
    """Show your public SSH key and its fingerprint."""
    k = api().call("GET", "/users/me/key", expect=Key)
    if as_json:
        print_json(k)
    else:
        click.echo(shown(k["public_key"]))
        click.echo(shown(k["fingerprint"]))


def current_key_path(client: ApiClient, url: str) -> Path:
    """:func:`choose_key_path` for the signed-in account (asks the server for its public key)."""
    return choose_key_path(url, client.call("GET", "/users/me/key", expect=Key)["public_key"])


@keys.command("download")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="Where to write it [default ~/.ssh/hatchway_<server host>, plus _<port> for a non-default port].",
)
def download(output: Path | None) -> None:
    """Write your private SSH key to a file (mode 0600)."""
    s = session_or_fail()
    client = ApiClient(s.url, s.token, username=s.username)
    path = (output or current_key_path(client, s.url)).expanduser().absolute()
    check_key_destination(path, s.url)
    data = download_key(client, path)
    click.echo(f"Wrote {path} (mode 0600), {shown(data['fingerprint'])}")


@keys.command("regenerate")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def regenerate(yes: bool) -> None:
    """Replace your SSH key pair; the old key stops working in every workspace within seconds."""
    if not yes:
        click.confirm("Regenerate your SSH key? The old key stops working in every workspace "
                      "(SSH sessions already open stay open; \"hatchway sessions revoke\" ends the ones "
                      "a session opened)", abort=True)
    s = session_or_fail()
    client = ApiClient(s.url, s.token, username=s.username)
    path = current_key_path(client, s.url)  # before regenerating: a legacy file matches the old key
    k = client.call("POST", "/users/me/key/regenerate", expect=Key)
    click.echo(f"New key {shown(k['fingerprint'])}; running workspaces now accept only the new key")
    if path.exists():
        download_key(client, path)
        click.echo(f"Updated {path}")
