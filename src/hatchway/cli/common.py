"""What every API-backed command shares: the client, error exits, JSON and table output."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from hatchway import __version__
from hatchway.cli.session import NotLoggedIn, StoredSession, load_session
from hatchway.cli.urlpath import routable, segment
from hatchway.names import quoted
from hatchway.unreachable import why_unreachable


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"hatchway: {message}", err=True)
    raise SystemExit(code)


def user_agent() -> str:
    """``hatchway-cli/VERSION (HOST)``: the host name is how people tell their sessions apart
    (``hatchway sessions list``); printable ASCII only, as a header value must be."""
    host = "".join(ch for ch in socket.gethostname() if 32 < ord(ch) < 127 and ch not in "()")[:64]
    return f"hatchway-cli/{__version__}" + (f" ({host})" if host else "")


#: How the server writes the login command it cannot complete (it knows neither the URL the
#: client used nor, for a dead token, whose it was).
LOGIN_PLACEHOLDER = "hatchway login URL --username NAME"


class ApiClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, username: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.username = username
        headers = {"User-Agent": user_agent()}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        """Perform one API call; any failure exits with the server's own explanation."""
        for fields in (body, params):
            bad = not_utf8(fields) if isinstance(fields, dict) else None
            if bad is not None:
                key, text = bad
                shown = text.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
                what = "the password" if "password" in key else f"{key} {quoted(shown)}"  # never echo it
                fail(f"{what} is not valid UTF-8, and the API takes only UTF-8 text; "
                     "give it in UTF-8 (check your terminal's or script's encoding)")
        try:
            resp = self._http.request(method, "/api/v1" + path, json=body, params=params)
        except httpx.HTTPError as exc:
            fail(why_unreachable(self.url, exc))
        if resp.status_code >= 400:
            try:
                data = resp.json()
                error, detail = data.get("error") or resp.reason_phrase, data.get("detail") or ""
            except ValueError:
                error, detail = f"HTTP {resp.status_code}", resp.text[:200]
            fail(f"{error}" + (f": {fill_login(detail, self.url, self.username)}" if detail else ""))
        return resp.json() if resp.content else None


def fill_login(advice: str, url: str, username: str | None) -> str:
    """The server's advice with the ``hatchway login URL --username NAME`` it cannot fill in
    filled in: the CLI knows where it is signed in, and as whom."""
    return advice.replace(LOGIN_PLACEHOLDER, f"hatchway login {url} --username {username or 'NAME'}")


def not_utf8(fields: dict[str, Any]) -> tuple[str, str] | None:
    """The first field of a request body or query whose text is not valid UTF-8, and that text.

    A command-line argument with bytes that are not UTF-8 arrives as surrogate escapes, which
    neither JSON nor a query string can carry: httpx raised UnicodeEncodeError with a traceback.
    (Path segments carry them as the bytes they were; see :func:`segment`.)
    """
    for key, value in fields.items():
        bad = _text_not_utf8(value)
        if bad is not None:
            return str(key), bad
    return None


def _text_not_utf8(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value
        return None
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return None
    for item in items:
        bad = _text_not_utf8(item)
        if bad is not None:
            return bad
    return None


def name_segment(name: str, check: Callable[[str], str], advice: str) -> str:
    """``name``, as a person typed it, as one API path segment (:func:`segment`): build every
    path with it, so the server sees the literal name and answers for that name.

    A name that cannot reach the server as one segment (empty, or with a ``/``; see
    :func:`routable`) is refused here instead, with the rule names follow (``check``, one of
    :mod:`hatchway.names`, as the server checks new names) and ``advice`` on finding the real ones.
    """
    if not routable(name):
        try:
            check(name)
        except ValueError as exc:
            fail(f"{exc}; {advice}")
    return segment(name)


def session_or_fail() -> StoredSession:
    try:
        return load_session()
    except NotLoggedIn as exc:
        fail(str(exc))


def api() -> ApiClient:
    s = session_or_fail()
    return ApiClient(s.url, s.token, username=s.username)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and "T" in value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            return value
    return str(value)


def shown(text: str) -> str:
    """``text`` safe for a terminal: what is not printable (escape sequences, line breaks) is
    shown escaped (``\\x1b``, ``\\n``), so values from the server (emails, names, what an
    agent reports) can neither drive the terminal nor split a table's rows."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*(Text(shown(_cell(v))) for v in row))  # Text: values are never rich markup
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=250)  # pipes and logs: never wrap rows
    console.print(table)


def prompt_secret(
    prompt: str, confirm: str | None = None, advice: str = "pass --password-stdin and give the password on one line"
) -> str:
    """Ask for a password on the terminal; without one, say how to give it instead (click would
    print a warning and "Aborted!")."""
    if not sys.stdin.isatty():
        fail(f"standard input is not a terminal, so there is no one to prompt; {advice}")
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm or False))


def read_password_stdin() -> str:
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        fail("no password on standard input")
    return password


def directory_problem(directory: Path, option: str) -> str | None:
    """Why a file given with ``option`` cannot be written into ``directory``, and what to do; or None.

    Checked before anything is fetched or written: a mistyped destination is refused, never
    answered by creating folders nobody asked for.
    """
    if os.path.isdir(directory):
        return None
    if os.path.lexists(directory):
        return f"{directory} is not a directory; choose another {option}"
    return f"the directory {directory} does not exist; create it first, or choose another {option}"


def split_owner(name: str) -> tuple[str, str | None]:
    """``owner/name`` addresses another user's workspace (site managers)."""
    if "/" in name:
        owner, _, ws = name.partition("/")
        return ws, owner
    return name, None
