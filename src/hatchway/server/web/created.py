"""The notice after a user or a workspace is created from a page of a long list, which the
browser goes back to (``listback``). Said as "created" alone, it left people looking for a row
that the page did not show (the list filtered to a name the new one does not contain, Mine
for someone else's workspace, the new row sorted onto another page); they thought it had
failed, or created it twice. So the notice says where the new item is and links there.

Whether the page shows it is decided by the list's own query (``base.position``), never by a
second copy of its filter. The links are the lists' addresses as ``listback`` writes them, from
checked parameters; the page escapes the names in the message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.server.web.base import page_of, position

#: A link after the message: its label and its address.
Link = tuple[str, str]


@dataclass(frozen=True)
class Notice:
    """The message, and the links after it."""

    message: str
    links: tuple[Link, ...] = ()


@dataclass(frozen=True)
class Listing:
    """A list as a page shows it: its rows (the list's query), and its address at page N."""

    rows: Select[Any]
    at: Callable[[int], str]


@dataclass(frozen=True)
class Wider:
    """The list without the shown one's filter, which does list the new item: ``why`` ends the
    sentence saying why the shown list leaves it out ("because ..."), ``label`` names the way there."""

    why: str
    label: str
    listing: Listing


def on_page(done: str, shown: int, page: int, at: Callable[[int], str], own: Link | None) -> Notice:
    """The new item is on page ``page`` of the list shown at page ``shown``: on the page shown,
    ``done`` alone (its row is there to see); on another, which page, and the way to it."""
    if page == shown:
        return Notice(done)
    return Notice(f"{done} It is on page {page} of this list.", ((f"Go to page {page}", at(page)), *_own(own)))


def hidden(done: str, wider: Wider, page: int, own: Link | None) -> Notice:
    """The shown list leaves the new item out; the wider list has it on page ``page``."""
    label = wider.label if page == 1 else f"{wider.label} (page {page})"
    return Notice(f"{done} It is not shown here {wider.why}.", ((label, wider.listing.at(page)), *_own(own)))


def _own(own: Link | None) -> tuple[Link, ...]:
    return (own,) if own else ()


async def created_notice(
    db: AsyncSession, done: str, key: Any, value: Any, shown: Listing, page: int, wider: Wider | None,
    own: Link | None = None,
) -> Notice:
    """The notice for the item whose ``key`` column is ``value``, created from page ``page`` of
    ``shown``: ``done`` says what was created; ``wider`` is the list without ``shown``'s filter
    (None when it has none); ``own`` is the way to the item's own page, if it has one."""
    found = await position(db, shown.rows, key, value)
    if found is not None:
        return on_page(done, page, page_of(found), shown.at, own)
    elsewhere = await position(db, wider.listing.rows, key, value) if wider else None
    if wider is None or elsewhere is None:  # deleted since (another tab, the API): nothing to show
        return Notice(done)
    return hidden(done, wider, page_of(elsewhere), own)
