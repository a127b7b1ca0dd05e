"""Validation of the names and values people type.

Names end up in ssh_config Host lines, Unix user names, file paths, log lines and URLs, so they
are checked once, here, against the narrowest pattern that serves people, and every refusal says
what is allowed.
"""

from __future__ import annotations

import re

WORKSPACE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
USERNAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
PROVIDER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]{1,255}")

ROLES = ("member", "site-manager")
MAX_ENV_VALUE = 64 * 1024
MAX_ENV_VARS = 256


class Refused(ValueError):
    """A refused value that a form can name by its own label for the field: ``str()`` is the
    sentence the API and CLI show ("invalid workspace name 'X': ..."), :meth:`for_label` the
    same refusal on a form whose field is labelled otherwise ("Name "X" is not valid: ...")."""

    def __init__(self, message: str, form_message: str) -> None:
        super().__init__(message)
        self.form_message = form_message

    def for_label(self, label: str) -> str:
        return self.form_message.replace("{label}", label, 1)


def _show(value: str) -> str:
    """Quote a rejected value for an error message without letting it add lines."""
    shown = value if len(value) <= 80 else value[:77] + "..."
    return repr(shown)


def quoted(value: str) -> str:
    """A name someone asked for, in double quotes for a message; one that could not be a name
    (too long, or with a line break or control character in it) is shown like a rejected value,
    so an error never echoes a megabyte or adds a line."""
    if len(value) <= 80 and value.isprintable():
        return f'"{value}"'
    return _show(value)


def shown(text: str) -> str:
    """``text`` safe for a terminal: what is not printable (escape sequences, line breaks) is
    shown escaped (``\\x1b``, ``\\n``), so values from the server (emails, names, what an
    agent reports, a refusal) can neither drive the terminal nor split a table's rows."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _check(name: str, pattern: re.Pattern[str], what: str, rule: str) -> str:
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise Refused(f"invalid {what} {_show(str(name))}: {rule}", f"{{label}} {quoted(str(name))} is not valid: {rule}")
    return name


_DNS_LABEL_RULE = "use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"


def stream_label(stream_id: str) -> str:
    """How a relayed stream is named in log lines, by the server and its agent alike, so that
    one connection's lines can be found in both logs. A stream id starts with the id of the
    replica the client waits on, the same for every stream it relays, so the label is the id's
    random end."""
    return stream_id[-8:]


def check_workspace_name(name: str) -> str:
    return _check(name, WORKSPACE_NAME, "workspace name", _DNS_LABEL_RULE)


def check_provider_name(name: str) -> str:
    return _check(name, PROVIDER_NAME, "provider name", _DNS_LABEL_RULE)


def could_be_username(name: object) -> bool:
    """Whether some account could have ``name``: a name no account can have (a NUL, a lone
    surrogate, a megabyte) is no account's, and is not worth a database query, which PostgreSQL
    would answer with an error (it cannot hold a NUL in text) rather than no row."""
    return isinstance(name, str) and USERNAME.fullmatch(name) is not None


def could_be_workspace_name(name: object) -> bool:
    """:func:`could_be_username` for workspace names."""
    return isinstance(name, str) and WORKSPACE_NAME.fullmatch(name) is not None


def could_be_provider_name(name: object) -> bool:
    """:func:`could_be_username` for provider names."""
    return isinstance(name, str) and PROVIDER_NAME.fullmatch(name) is not None


#: Every character a username, workspace or provider name can hold.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def name_fragment(text: str) -> str | None:
    """``text`` typed into a filter on names, as names hold it: lowercased (names are, so "Ali"
    finds "alice"), or None when no name can contain it (a space, a NUL): nothing matches then,
    and the database is not asked (PostgreSQL answers a NUL in text with an error, not no row)."""
    fragment = text.strip().lower()
    return fragment if set(fragment) <= _NAME_CHARS else None


def check_username(name: str) -> str:
    return _check(
        name, USERNAME, "username", "use 1-32 characters, lowercase letters, digits, '_' and '-', starting with a letter"
    )


#: Names the API could not address: ``/api/v1/users/me/…`` is always the signed-in user.
RESERVED_USERNAMES = frozenset({"me"})


def check_new_username(name: str) -> str:
    """A username for a user being created: valid, and not one the API reserves."""
    check_username(name)
    if name in RESERVED_USERNAMES:
        raise Refused(
            f'the username "{name}" is reserved (/api/v1/users/{name} is the signed-in user); choose another',
            f'{{label}} "{name}" is reserved; choose another',
        )
    return name


def check_email(email: str) -> str:
    if not isinstance(email, str) or len(email) > 320 or not EMAIL.fullmatch(email):
        raise Refused(
            f"invalid email address {_show(str(email))}",
            f"{{label}} {quoted(str(email))} is not an email address: write it as name@example.com",
        )
    return email


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"invalid role {_show(str(role))}: use one of {', '.join(ROLES)}")
    return role


def check_env(env: dict[str, str]) -> dict[str, str]:
    """Image variables become lines of ~/.ssh/environment and process environments: refuse
    anything that could add a line or is not a portable variable name."""
    if len(env) > MAX_ENV_VARS:
        raise ValueError(f"too many environment variables ({len(env)}): at most {MAX_ENV_VARS}")
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            raise ValueError(
                f"invalid environment variable name {_show(str(key))}: use letters, digits "
                "and '_', not starting with a digit"
            )
        if not isinstance(value, str):
            raise ValueError(f"environment variable {key}: value must be a string")
        if "\n" in value or "\r" in value or "\x00" in value:
            raise ValueError(
                f"environment variable {key}: value contains a newline or NUL, which "
                "~/.ssh/environment cannot hold"
            )
        if len(value.encode("utf-8", "surrogatepass")) > MAX_ENV_VALUE:
            raise ValueError(f"environment variable {key}: value longer than {MAX_ENV_VALUE} bytes")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"environment variable {key}: value is not valid UTF-8") from None
    return env


def parse_env_assignment(item: str) -> tuple[str, str]:
    """Split a ``K=V`` command-line assignment."""
    if "=" not in item:
        raise ValueError(f"invalid --env {_show(item)}: expected NAME=value")
    key, value = item.split("=", 1)
    check_env({key: value})
    return key, value
