"""What every API-backed command shares: the client, error exits, JSON and table output."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar, overload

import click
import httpx

from hatchway import __version__, peerjson
from hatchway.cli.replies import ErrorReply, mismatch
from hatchway.cli.session import NotLoggedIn, StoredSession, load_session
from hatchway.cli.urlpath import routable, segment
from hatchway.fileutil import NotRegularFileError
from hatchway.names import quoted, shown
from hatchway.paging import MAX_LIMIT, MAX_OFFSET
from hatchway.unreachable import NOT_HATCHWAY_ADVICE, no_answer, why_unreachable


#: ``--json`` of every command that lists or shows something: the API's own answer, for scripts.
json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's answer as JSON (for scripts).")
def search_option(which: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--search`` of the lists that grow with a deployment (users, everyone's workspaces);
    ``which`` says what it keeps."""
    return click.option("--search", metavar="TEXT", default=None, help=f"Only {which}, in any case.")


class WholeNumber(click.ParamType):
    """A whole number from ``low`` to ``high``, refused in words before any request is made
    (click's IntRange says "0 is not in the range 1<=x<=5000"); ``meaning`` says what to give."""

    name = "N"

    def __init__(self, low: int, high: int, high_text: str, meaning: str) -> None:
        self.low, self.high, self.high_text, self.meaning = low, high, high_text, meaning

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip()
        # Digits only (int() takes "+1", " 1_0" and "١"), and not so many that int() refuses them.
        number = int(text) if text.isascii() and text.isdigit() and len(text) <= 40 else None
        if number is not None and self.low <= number <= self.high:
            return number
        self.fail(f"{quoted(text)} is not a whole number from {self.low} to {self.high_text}: give {self.meaning}.", param, ctx)


def paging_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--limit`` and ``--offset`` of the lists that grow with a deployment, passed to the API
    as its ``limit`` and ``offset``, within the same bounds (:mod:`hatchway.paging`)."""
    command = click.option(
        "--offset", type=WholeNumber(0, MAX_OFFSET, "2^63-1", "how many to skip first"), default=None,
        help="Skip the first N (with --limit: the next page).",
    )(command)
    return click.option(
        "--limit", type=WholeNumber(1, MAX_LIMIT, str(MAX_LIMIT), "how many to list at most"), default=None,
        help=f"List at most N, from 1 to {MAX_LIMIT} (all of them when left out).",
    )(command)


def fail(message: str, code: int = 1) -> NoReturn:
    """The one line every refusal ends in; escaped, since it often quotes the server."""
    click.echo(f"hatchway: {shown(message)}", err=True)
    raise SystemExit(code)


def fail_write(path: Path, exc: OSError, then: str) -> NoReturn:
    """The one line for a file that could not be written (``atomic_write`` has left the old one
    in place, so it says so): what went wrong, and what to do ``then``."""
    if isinstance(exc, NotRegularFileError):  # its message names the file and what to do
        fail(f"{exc} (it was left unchanged), then {then}")
    fail(f"cannot write {path}: {exc.strerror or exc} (it was left unchanged); fix that, then {then}")


def user_agent() -> str:
    """``hatchway-cli/VERSION (HOST)``: the host name is how people tell their sessions apart
    (``hatchway sessions list``); printable ASCII only, as a header value must be."""
    host = "".join(ch for ch in socket.gethostname() if 32 < ord(ch) < 127 and ch not in "()")[:64]
    return f"hatchway-cli/{__version__}" + (f" ({host})" if host else "")


#: How the server writes the login command it cannot complete (it knows neither the URL the
#: client used nor, for a dead token, whose it was).
LOGIN_PLACEHOLDER = "hatchway login URL --username NAME"


T = TypeVar("T")


class ApiClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, username: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.username = username
        headers = {"User-Agent": user_agent()}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @overload
    def call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> object: ...

    @overload
    def call(
        self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None, *, expect: type[T]
    ) -> T: ...

    def call(
        self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None, *, expect: Any = object
    ) -> Any:
        """Perform one API call and return its answer, checked to have the shape ``expect``
        (:mod:`hatchway.cli.replies`; without it, any JSON, for a caller that reads nothing in
        it). Any failure exits with one line saying what happened: the server's own
        explanation, or what answered instead of Hatchway's API."""
        for fields in (body, params):
            bad = not_utf8(fields) if isinstance(fields, dict) else None
            if bad is not None:
                key, text = bad
                escaped = text.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
                what = "the password" if "password" in key else f"{key} {quoted(escaped)}"  # never echo it
                fail(f"{what} is not valid UTF-8, and the API takes only UTF-8 text; "
                     "give it in UTF-8 (check your terminal's or script's encoding)")
        try:
            resp = self._http.request(method, "/api/v1" + path, json=body, params=params)
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            # It was reached: the connection broke mid-answer, or what answered does not speak HTTP.
            fail(f"the server at {self.url} ended the connection without a complete HTTP answer "
                 f"({shown(str(exc) or type(exc).__name__)[:200]}); try again, and if it goes on, "
                 f"{NOT_HATCHWAY_ADVICE}")
        except (httpx.ReadTimeout, httpx.WriteTimeout):
            fail(no_answer(self.url, self.timeout))
        except httpx.HTTPError as exc:
            fail(why_unreachable(self.url, exc))
        data = self._json(resp)
        if resp.status_code >= 400:
            if mismatch(data, ErrorReply) is not None:
                fail(f"the server at {self.url} answered {status_text(resp)} with JSON that is not a Hatchway error; "
                     f"{NOT_HATCHWAY_ADVICE}")
            error, detail = data["error"] or status_text(resp), data.get("detail") or ""
            fail(error + (f": {fill_login(detail, self.url, self.username)}" if detail else ""))  # fail escapes it
        problem = mismatch(data, expect)
        if problem is not None:
            fail(f"the server at {self.url} answered {method} /api/v1{path} with JSON that Hatchway {__version__} "
                 f"does not send there ({shown(problem)[:200]}); check the URL (hatchway login URL) and that the "
                 f"server there runs Hatchway {__version__}, as this CLI does")
        return data

    def _json(self, resp: httpx.Response) -> Any:
        """The answer's body as JSON, or exit saying what came instead (an HTML error page, a
        redirect, a body cut short) and what to check. Hatchway's API answers every call,
        errors included, with a JSON body."""
        if resp.is_redirect:
            where = shown(resp.headers.get("location", ""))[:200]
            fail(f"the server at {self.url} answered {status_text(resp)}, a redirect to {where}, not Hatchway's API; "
                 f"{NOT_HATCHWAY_ADVICE}")
        ctype = resp.headers.get("content-type", "").partition(";")[0].strip().lower()
        if ctype == "application/json" or ctype.endswith("+json") or resp.content.lstrip()[:1] in (b"{", b"["):
            try:
                return peerjson.loads(resp.content)
            except ValueError as exc:
                fail(f"the server at {self.url} answered {status_text(resp)} with JSON cut short or malformed "
                     f"({shown(str(exc))[:200]}); try again, and if it goes on, {NOT_HATCHWAY_ADVICE}")
        if not resp.content:
            what = "an empty body"
        elif ctype == "text/html" or resp.content.lstrip()[:1] == b"<":
            what = "an HTML page"
        else:
            what = f"a {shown(ctype)[:100]} body" if ctype else "a body that is not JSON"
        fail(f"the server at {self.url} answered {status_text(resp)} with {what}, not Hatchway's API; {NOT_HATCHWAY_ADVICE}")


def status_text(resp: httpx.Response) -> str:
    """``502 Bad Gateway``: the status as people know it (the code alone when it has no name)."""
    return f"{resp.status_code} {resp.reason_phrase}".strip()


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
