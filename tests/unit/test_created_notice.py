"""The notice after creating from a page of a long list (``web/created``): on the page shown, the
plain "created"; on another page of the list, or left out by its filter, where it is and the
way there. ``base.position`` finds the new row with the list's own query, in the order the
pager pages it: checked against ``paged``'s pages on a real SQLite database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from hatchway.db.models import Base, User
from hatchway.server.api.users import users_query
from hatchway.server.web.base import PAGE_SIZE, page_of, position
from hatchway.server.web.created import Listing, Notice, Wider, hidden, on_page
from hatchway.server.web.listback import USERS


def _at(page: int) -> str:
    return USERS.link({"search": "dev", "page": str(page)})


WIDER = Wider('because the list is filtered to names containing "dev"', "Show all",
              Listing(users_query(), lambda page: USERS.link({"page": str(page)})))


@pytest.mark.parametrize(("row", "page"), [(1, 1), (25, 1), (26, 2), (50, 2), (51, 3), (1000, 40)])
def test_the_page_of_a_row(row: int, page: int) -> None:
    assert page_of(row) == page


def test_on_the_page_shown_the_notice_is_the_plain_created() -> None:
    assert on_page('User "dev-7" created as member.', 2, 2, _at, None) == Notice('User "dev-7" created as member.')
    assert on_page("Done.", 1, 1, _at, ("Go to the workspace", "/workspaces/a/b")) == Notice("Done.")


def test_on_another_page_the_notice_says_which_and_links_there() -> None:
    assert on_page('User "dev-new" created as member.', 2, 3, _at, None) == Notice(
        'User "dev-new" created as member. It is on page 3 of this list.',
        (("Go to page 3", "/manage/users?search=dev&page=3"),))
    assert on_page("Done.", 3, 1, _at, ("Go to the workspace", "/workspaces/a/b")) == Notice(
        "Done. It is on page 1 of this list.", (("Go to page 1", "/manage/users?search=dev"), ("Go to the workspace", "/workspaces/a/b")))


def test_left_out_by_the_filter_the_notice_says_why_and_links_to_the_page_without_it() -> None:
    assert hidden('User "zed" created as member.', WIDER, 1, None) == Notice(
        'User "zed" created as member. It is not shown here because the list is filtered to names containing "dev".',
        (("Show all", "/manage/users"),))
    assert hidden("Done.", WIDER, 3, ("Go to the workspace", "/workspaces/a/b")) == Notice(
        'Done. It is not shown here because the list is filtered to names containing "dev".',
        (("Show all (page 3)", "/manage/users?page=3"), ("Go to the workspace", "/workspaces/a/b")))


@pytest.fixture
async def db() -> AsyncIterator[AsyncSession]:
    engine = create_async_engine("sqlite+aiosqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        async with async_sessionmaker(engine)() as session:
            # Added out of order: the list's order is the query's (by name), not the table's.
            for name in sorted((f"dev-{i:02}" for i in range(60)), key=lambda n: n[::-1]) + ["alice", "zed"]:
                session.add(User(username=name, email=f"{name}@example.com", role="member", ssh_public_key="",
                                 ssh_private_key_sealed="", ssh_key_fingerprint=""))
            await session.flush()
            yield session
    finally:
        await engine.dispose()


async def test_a_rows_position_is_where_the_pager_shows_it(db: AsyncSession) -> None:
    for search in ("dev", ""):
        stmt = users_query(search)
        names = list((await db.execute(stmt)).scalars())
        for number, user in enumerate(names, 1):
            assert await position(db, stmt, User.username, user.username) == number
            page = page_of(number)
            shown = (await db.execute(stmt.offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE))).scalars().all()
            assert user in shown
    assert await position(db, users_query("dev"), User.username, "dev-30") == 31
    assert await position(db, users_query(""), User.username, "dev-30") == 32  # after alice
    assert await position(db, users_query("dev"), User.username, "zed") is None  # the filter leaves it out
    assert await position(db, users_query(""), User.username, "nobody") is None
