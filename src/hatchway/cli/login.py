"""``hatchway login``, ``logout`` and ``whoami``."""

from __future__ import annotations

import contextlib

import click

from hatchway.cli.common import (
    ApiClient,
    api,
    fail,
    json_option,
    print_json,
    prompt_secret,
    read_password_stdin,
    session_or_fail,
)
from hatchway.cli.replies import LoginReply, User
from hatchway.cli.session import StoredSession, clear_session, config_dir, save_session
from hatchway.names import shown


@click.command()
@click.argument("url")
@click.option("--username", required=True, help="Your Hatchway user name.")
@click.option("--email", help="Email of the first user (with --first-user).")
@click.option("--first-user", is_flag=True, help="Create the first user (a site manager) on an empty deployment.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def login(url: str, username: str, email: str | None, first_user: bool, password_stdin: bool) -> None:
    """Log in to a Hatchway server and store the session token."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        fail(f"invalid URL {url!r}: expected http://HOST:PORT or https://HOST")
    password = read_password_stdin() if password_stdin else prompt_secret("Password")
    client = ApiClient(url, username=username)
    if first_user:
        if not email:
            fail("--first-user needs --email")
        out = client.call(
            "POST", "/auth/first-user", {"username": username, "email": email, "password": password},
            expect=LoginReply,
        )
    else:
        out = client.call("POST", "/auth/login", {"username": username, "password": password}, expect=LoginReply)
    try:
        path = save_session(StoredSession(url=url, token=out["token"], username=out["user"]["username"]))
    except OSError as exc:
        # The session exists on the server but nobody holds its token: end it there, or it would
        # sit in `hatchway sessions list` until it expires.
        with contextlib.suppress(SystemExit):
            ApiClient(url, out["token"], username=username).call("POST", "/auth/logout")
        fail(f"logged in, but could not save the session in {config_dir()}: {exc.strerror or exc}; that session was ended "
             "again. Free space or fix that directory (or set HATCHWAY_CONFIG_DIR to another one), then log in again")
    role = out["user"]["role"]
    click.echo(shown(f"Logged in to {url} as {out['user']['username']} ({role}); session saved in {path}"))


@click.command()
def logout() -> None:
    """Revoke the stored session token and forget it."""
    s = session_or_fail()
    ApiClient(s.url, s.token, username=s.username).call("POST", "/auth/logout")
    clear_session()
    click.echo(f"Logged out of {s.url}")


@click.command()
@json_option
def whoami(as_json: bool) -> None:
    """Show who you are logged in as."""
    s = session_or_fail()
    me = api().call("GET", "/users/me", expect=User)
    me["url"] = s.url
    if as_json:
        print_json(me)
    else:
        click.echo(shown(f"{me['username']} <{me['email']}> ({me['role']}) on {s.url}"))
