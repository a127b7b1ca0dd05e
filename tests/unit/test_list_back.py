"""Where an action taken from a long list goes back to (``web/listback``): the list's own page
and filter as the browser sent them, written anew, and nothing else: never another site or page."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from hatchway.server.web.listback import USERS, WORKSPACES


@pytest.mark.parametrize(
    ("sent", "back"),
    [
        ("/manage/users", "/manage/users"),
        ("/manage/users?search=dev&page=2", "/manage/users?search=dev&page=2"),
        ("/manage/users?page=2&search=dev", "/manage/users?search=dev&page=2"),  # the pager's order
        ("/manage/users?page=1&search=", "/manage/users"),
        ("/manage/users?page=007", "/manage/users?page=7"),
        ("/manage/users?search=+a+b+", "/manage/users?search=a+b"),
        ("/manage/users?search=" + "x" * 150, "/manage/users?search=" + "x" * 100),
        ("/manage/users?search=dev&search=other", "/manage/users?search=other"),  # the last, as the page reads it
        ("/manage/users?page=2&page=3", "/manage/users?page=3"),
        ("/manage/users?page=2&all=1&next=//evil.example&view=admin", "/manage/users?page=2"),  # unknown ones dropped
        ("/manage/users?page=-3", "/manage/users"),
        ("/manage/users?page=2.5", "/manage/users"),
        ("/manage/users?page=%C2%B2", "/manage/users"),  # a superscript two is no page number
        ("/manage/users?page=9999999999", "/manage/users"),
        ("/manage/users?search=%0d%0aSet-Cookie:x", "/manage/users?search=Set-Cookie%3Ax"),
        ("/manage/users#top", "/manage/users"),
    ],
)
def test_a_users_list_page_is_written_anew_from_its_known_parameters(sent: str, back: str) -> None:
    assert USERS.back(sent) == back


@pytest.mark.parametrize(
    "sent",
    [
        None, "", 42, "https://evil.example/manage/users", "//evil.example/manage/users", "///evil.example/manage/users",
        "/\\evil.example/manage/users", "http:/manage/users", "javascript:alert(1)", "/manage/users/", "/manage/users/bob/suspend",
        "/manage/usersx", "/workspaces?all=1", "manage/users", "/manage/audit?user=bob", "//[evil/manage/users",
    ],
)
def test_anything_but_the_users_list_goes_to_its_first_page(sent: object) -> None:
    assert USERS.parse(sent) is None
    assert USERS.back(sent) == "/manage/users"


def test_a_repeated_parameter_is_read_as_the_list_page_itself_reads_it() -> None:
    """The page a ``next`` names is the page the list shows for that address, parameter by parameter."""
    sent = "/workspaces?all=0&search=a&page=2&all=1&search=b&page=3"
    shown = QueryParams(sent.partition("?")[2])
    assert WORKSPACES.back(sent) == WORKSPACES.link({k: shown.get(k, "") for k in ("all", "search", "page")})
    assert WORKSPACES.back(sent) == "/workspaces?all=1&search=b&page=3"


def test_the_workspaces_lists_keep_their_tab_filter_and_page() -> None:
    assert WORKSPACES.back("/workspaces?page=2&search=ws&all=1") == "/workspaces?all=1&search=ws&page=2"
    assert WORKSPACES.back("/workspaces?all=yes&page=3") == "/workspaces?page=3"  # "Mine", page 3
    assert WORKSPACES.parse("/workspaces/bob/dev") is None  # a workspace's own page is not the list
    assert WORKSPACES.parse("/workspaces?all=1") == "/workspaces?all=1"


def test_a_link_carries_next_only_where_it_is_not_the_first_page() -> None:
    assert USERS.query("/manage/users") == ""
    assert USERS.query("/manage/users?search=dev&page=2") == "?next=%2Fmanage%2Fusers%3Fsearch%3Ddev%26page%3D2"
    assert WORKSPACES.query("/workspaces?all=1") == "?next=%2Fworkspaces%3Fall%3D1"
    assert USERS.link({"search": "dev", "page": "1", "other": "x"}) == "/manage/users?search=dev"


OWN = "/workspaces/bob/dev"


def test_a_workspaces_own_page_remembers_the_list_page_it_was_opened_from() -> None:
    assert WORKSPACES.opened(OWN, "/workspaces?all=1&search=ws&page=2") == (
        "/workspaces/bob/dev?next=%2Fworkspaces%3Fall%3D1%26search%3Dws%26page%3D2")
    assert WORKSPACES.opened(OWN, "/workspaces") == OWN  # the first page of Mine: nothing to carry
    assert WORKSPACES.opened(OWN, None) == OWN
    opened = WORKSPACES.opened(OWN, "/workspaces?all=1&page=3")
    assert WORKSPACES.parse_opened(OWN, opened) == opened
    assert WORKSPACES.remembered(opened) == "/workspaces?all=1&page=3"
    assert WORKSPACES.remembered(OWN) is None


@pytest.mark.parametrize(
    ("sent", "back"),
    [
        (OWN, OWN),
        ("/workspaces/bob/dev?next=%2Fworkspaces%3Fpage%3D2%26search%3Dx%26all%3D1&x=1",
         "/workspaces/bob/dev?next=%2Fworkspaces%3Fall%3D1%26search%3Dx%26page%3D2"),  # written anew
        ("/workspaces/bob/dev?next=https%3A%2F%2Fevil.example%2Fworkspaces", OWN),  # the list's rules for its next
        ("/workspaces/bob/dev?next=%2Fmanage%2Fusers%3Fpage%3D2", OWN),
        ("/workspaces/bob/dev#top", OWN),
    ],
)
def test_a_link_to_the_workspaces_own_page_is_written_anew(sent: str, back: str) -> None:
    assert WORKSPACES.parse_opened(OWN, sent) == back


@pytest.mark.parametrize(
    "sent",
    [
        None, "", 42, "https://evil.example/workspaces/bob/dev", "//evil.example/workspaces/bob/dev",
        "/workspaces/bob/other", "/workspaces/bob/dev/", "/workspaces/bob/dev/delete", "/workspaces?all=1",
        "/workspaces/bob/../bob/dev",
    ],
)
def test_anything_but_the_workspaces_own_page_is_no_link_to_it(sent: object) -> None:
    assert WORKSPACES.parse_opened(OWN, sent) is None
