"""Which entries of a moved workspace's tree change owner (the pure part of
:mod:`hatchway.providers.reown`)."""

from __future__ import annotations

import pytest

from hatchway.providers.reown import KEEP, Owner, new_owner

OLD = Owner(54321, 54322)
NEW = Owner(1001, 1002)


@pytest.mark.parametrize(
    "uid,gid,expected",
    [
        (54321, 54322, (1001, 1002)),  # the old owner's: all of it moves
        (54321, 0, (1001, KEEP)),  # root's group stays
        (54321, 100, (1001, KEEP)),  # another group (users) stays
        (0, 54322, None),  # root's file in the old group: root's, group and setuid bits included
        (0, 0, None),  # root's: deliberately so, untouched
        (2000, 2000, None),  # another account's
        (1001, 1002, None),  # the new owner's already (an interrupted earlier run)
    ],
)
def test_only_the_old_owners_uid_and_gid_move(uid: int, gid: int, expected: tuple[int, int] | None) -> None:
    assert new_owner(uid, gid, OLD, NEW) == expected


def test_a_root_owned_top_moves_nothing() -> None:
    root = Owner(0, 0)
    assert new_owner(0, 0, root, NEW) is None


def test_the_new_owners_ids_never_move_even_when_shared_with_the_old() -> None:
    # Same uid, another gid (the group was recreated): only the group moves.
    assert new_owner(1001, 54322, Owner(1001, 54322), NEW) == (KEEP, 1002)
