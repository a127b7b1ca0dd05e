"""config-ssh's plan (pure): which workspaces get an entry and a pinned host key, and why the
others do not, whatever names the server answers with.

One unusable workspace must be left out on its own, with one escaped, bounded line saying so;
before, a name with a line break, a non-ASCII or a 100 000-character name, or two names that
differ only in case ended config-ssh in a traceback and left everyone without entries.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from hatchway.cli.config_ssh import Plan, plan_entries
from hatchway.cli.replies import Workspace
from hatchway.sshconfig import render_block, render_known_hosts


def _host_key() -> str:
    return (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


KEY_A, KEY_B = _host_key(), _host_key()


def ws(name: str, host_key: str = KEY_A, **changes: object) -> Workspace:
    workspace: dict[str, object] = {
        "id": "w1", "name": name, "owner": "alice", "provider": "local", "provider_kind": "local",
        "external_connect": True, "state": "running", "state_reason": None, "env": {}, "agent_connected": True,
        "agent_last_seen": None, "os_user": "alice", "ssh_mode": "builtin", "ssh_server_version": None,
        "host_keys": [host_key], "diagnostics": [],
    }
    workspace.update(changes)
    return workspace  # type: ignore[return-value]


def plan(*workspaces: Workspace) -> Plan:
    result = plan_entries(list(workspaces), Path("/home/a/.ssh/k"), Path("/home/a/.config/hatchway/known_hosts"),
                          ["/usr/bin/hatchway", "proxy"])
    # whatever is planned can be written: nothing left for render_* to refuse
    render_block(result.entries)
    render_known_hosts(result.known_hosts)
    return result


RULE = (
    "its name cannot be an ssh host name (only ASCII letters, digits, '.', '_' and '-', at most 246 characters); "
    "to reach it with ssh, recreate it under such a name"
)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("bad name\nHost *", "'bad name\\nHost *'"),
        ("dév", '"dév"'),
        ("a" * 100_000, repr("a" * 77 + "...")),
        ("x" * 247, repr("x" * 77 + "...")),
        ("\x1b]0;pwned\x07", "'\\x1b]0;pwned\\x07'"),
    ],
    ids=["line break", "non-ASCII", "100 000 characters", "one too long", "terminal escape"],
)
def test_an_unusable_name_leaves_out_that_workspace_alone(name: str, shown: str) -> None:
    p = plan(ws("dev"), ws(name, KEY_B))
    assert [e.alias for e in p.entries] == ["hatchway.dev"]
    assert p.known_hosts == [("hatchway.dev", KEY_A)], "nothing of the bad one is pinned"
    assert p.warnings == [f"left out workspace {shown}: {RULE}"]
    assert p.refusals == {f"hatchway.{name}": f"workspace {shown} cannot be reached with ssh: {RULE}"}


def test_the_longest_usable_name_is_configured() -> None:
    assert [e.alias for e in plan(ws("x" * 246)).entries] == ["hatchway." + "x" * 246]


@pytest.mark.parametrize("order", [["DEV", "dev"], ["dev", "DEV"]])
def test_names_that_differ_only_in_case_keep_the_lowercase_one_in_any_order(order: list[str]) -> None:
    keys = {"dev": KEY_A, "DEV": KEY_B}
    p = plan(*(ws(name, keys[name]) for name in order))
    assert [e.alias for e in p.entries] == ["hatchway.dev"]
    assert p.known_hosts == [("hatchway.dev", KEY_A)], "DEV's host key must not be accepted for dev"
    assert p.warnings == [
        "left out hatchway.DEV: ssh does not tell it apart from hatchway.dev (it ignores case), "
        "so only hatchway.dev is configured; rename one of the two workspaces"
    ]
    assert p.refusals == {
        "hatchway.DEV": 'workspace "DEV" cannot be reached with ssh: ssh does not tell its host name apart from '
        'that of workspace "dev" (it ignores case); rename one of the two'
    }


def test_without_a_lowercase_spelling_the_first_in_code_point_order_is_kept() -> None:
    p = plan(ws("dEV", KEY_B), ws("Dev"), ws("other"))
    assert [e.alias for e in p.entries] == ["hatchway.Dev", "hatchway.other"]
    assert p.known_hosts == [("hatchway.Dev", KEY_A), ("hatchway.other", KEY_A)]
    assert list(p.refusals) == ["hatchway.dEV"]


def test_a_name_listed_twice_is_configured_once() -> None:
    p = plan(ws("dev"), ws("dev", KEY_B))
    assert [e.alias for e in p.entries] == ["hatchway.dev"]
    assert p.known_hosts == [("hatchway.dev", KEY_A)]
    assert p.warnings == ["the server listed hatchway.dev more than once; it is configured once"]
    assert p.refusals == {}


def test_a_left_out_duplicate_pins_nothing_even_with_ssh_switched_off() -> None:
    # A workspace without External Connect still has its host key pinned (for when SSH is
    # switched back on), but never under a name ssh would confuse with another's.
    p = plan(ws("dev"), ws("DEV", KEY_B, external_connect=False))
    assert p.known_hosts == [("hatchway.dev", KEY_A)]
    assert p.disabled == 0
