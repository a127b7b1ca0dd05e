"""Where an action taken from a long list goes back to: the page of the list and the filter it
was taken from (Manage > Users, the Workspaces lists), carried as ``next`` through confirmation
pages and forms, and remembered by a workspace's own page opened from the list. Without it a
site manager working through page 3 of "dev" was sent back to page 1 of everyone after every
click.

``next`` comes from the browser, so it is never used as it came: only the list's own path (or
the own page of the item acted on, remembering a page of the list) is accepted, with its known
parameters, each checked, and the link is written anew from them. Any other address (another
site, another page, ``//host``) is ignored, so ``next`` cannot become an open redirect.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from hatchway.server.web.base import SEARCH_MAX

#: A page number as the pager writes it; larger ones than this are no page of any list.
_PAGE = re.compile(r"[0-9]{1,9}")


def _page(value: str) -> str:
    """A page past the first, as a number; page 1 is the list's address without one."""
    return str(int(value)) if _PAGE.fullmatch(value) and int(value) > 1 else ""


def _search(value: str) -> str:
    return value.strip()[:SEARCH_MAX]


def _all(value: str) -> str:
    return "1" if value == "1" else ""


_CHECKS = {"all": _all, "search": _search, "page": _page}


def _query_of(value: object, path: str) -> dict[str, str] | None:
    """The parameters of ``value``, a link sent back by the browser, when it is a link to
    ``path`` on this site; None when it is not one: another path, another site, not text."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:  # an unbalanced "[" in what would be the host
        return None
    if parts.scheme or parts.netloc or parts.path != path:
        return None
    # The last of a repeated parameter, as the pages read it (Starlette's query_params.get).
    return dict(parse_qsl(parts.query))


@dataclass(frozen=True)
class ListPage:
    """A long list's address: its path, and the parameters it takes in the order its pager
    writes them (its tab, its filter, its page)."""

    path: str
    keys: tuple[str, ...]

    def link(self, params: Mapping[str, str]) -> str:
        """This list with those of ``params`` it takes, checked; empty ones and page 1 left out."""
        kept = {key: _CHECKS[key](params.get(key, "")) for key in self.keys}
        query = urlencode({k: v for k, v in kept.items() if v})
        return self.path + ("?" + query if query else "")

    def parse(self, value: object) -> str | None:
        """``value`` (a ``next`` as sent) written anew as a link to this list, or None when it
        is not one: another path, another site, not text."""
        query = _query_of(value, self.path)
        return None if query is None else self.link(query)

    def opened(self, path: str, back: str | None) -> str:
        """``path``, an item's own page (a workspace's), opened from ``back``, a page of this
        list: the page remembers it, for its way back and for where its buttons go."""
        return path + (self.query(back) if back else "")

    def parse_opened(self, path: str, value: object) -> str | None:
        """``value`` written anew as a link to the item page ``path`` and the page of this list
        it remembers, or None when it is no link to ``path``."""
        query = _query_of(value, path)
        return None if query is None else self.opened(path, self.parse(query.get("next")))

    def remembered(self, opened: str) -> str | None:
        """The page of this list a link made by :meth:`opened` remembers."""
        return self.parse(dict(parse_qsl(urlsplit(opened).query)).get("next"))

    def back(self, value: object) -> str:
        """Where to go after an action: the list page ``value`` names, or the list's first page."""
        return self.parse(value) or self.path

    def query(self, back: str) -> str:
        """``?next=back`` for a link to a confirmation page or form; nothing when ``back`` is
        the list's first page, where the action goes back to anyway."""
        return "" if back == self.path else "?" + urlencode({"next": back})


USERS = ListPage("/manage/users", ("search", "page"))
WORKSPACES = ListPage("/workspaces", ("all", "search", "page"))
