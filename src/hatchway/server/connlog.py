"""The connection log's workspace column, read the one way it is written.

``ssh_connections.workspace_name`` holds what the client asked for (``hatchway.server.api.ssh``):
``NAME`` for the connecting user's own workspace, ``OWNER/NAME`` for someone else's (a site
manager's). So a row's workspace belongs to the prefix when there is one, else to the user who
connected. These helpers are the only readers of that convention: the API's and the web UI's
filters and the owner each row reports.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, or_

from hatchway.db.models import SSHConnection


def owner_of(workspace_name: str, username: str | None) -> str | None:
    """Whose workspace a row is about; None when the client was never identified and named no
    owner."""
    owner, sep, _ = workspace_name.partition("/")
    return owner if sep else username


def workspace_filter(value: str) -> ColumnElement[bool]:
    """Rows about workspace ``OWNER/NAME``, whoever connected (its owner or a site manager); or,
    for a bare ``NAME``, about every workspace of that name, whoever owns it."""
    owner, sep, name = value.partition("/")
    column = SSHConnection.workspace_name
    if sep:
        return or_(column == value, and_(SSHConnection.username == owner, column == name))
    return or_(column == value, column.endswith("/" + value, autoescape=True))
