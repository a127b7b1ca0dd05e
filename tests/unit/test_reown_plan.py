"""Which entries of a moved workspace's tree change owner, and which mount points the walk
stays out of (the pure parts of :mod:`hatchway.providers.reown`)."""

from __future__ import annotations

import pytest

from hatchway.providers.reown import KEEP, Owner, mount_points, new_owner

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


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:5 / /proc rw,nosuid shared:2 - proc proc rw
90 22 8:1 /etc /data/workspaces/w1/home/etc\\040copy rw,relatime shared:1 - ext4 /dev/sda1 rw
91 22 0:40 / /data/workspaces/w1/home/tab\\011and\\134slash rw - tmpfs tmpfs rw
"""


def test_mount_points_are_read_with_their_escapes_decoded() -> None:
    assert mount_points(MOUNTINFO) == {
        "/",
        "/proc",
        "/data/workspaces/w1/home/etc copy",
        "/data/workspaces/w1/home/tab\tand\\slash",
    }


def test_short_lines_are_not_mount_points() -> None:
    assert mount_points("\n22 1 8:1 /\n") == set()
