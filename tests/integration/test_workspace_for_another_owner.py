"""A site manager creates a workspace for another user (``POST /workspaces?owner=NAME``,
``hatchway workspaces create OWNER/NAME``): it is the owner's in every respect (their key in the
agent's manifest, their name and email in its environment, their list), the site manager is
recorded as the actor, and nobody else may name another owner.

On a ``manual`` provider, so nothing here needs root; the end-to-end SSH of it is in
tests/e2e/test_local_workspace_for_member.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.cli import Cli
from tests.helpers.server import RunningServer, api


@dataclass
class Site:
    server: RunningServer
    alice: Cli  # site manager (first user)
    bob: Cli  # member
    carol: Cli  # member
    tokens: dict[str, str]  # API session tokens by username


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("for-owner")
    server = RunningServer(tmp / "data")
    server.start()
    try:
        alice, bob, carol = Cli(tmp / "alice"), Cli(tmp / "bob"), Cli(tmp / "carol")
        alice.login(server.url, "alice", "alice-password", first=True)
        alice.ok("providers", "create", "byo", "--kind", "manual")
        for name, cli in (("bob", bob), ("carol", carol)):
            alice.ok("users", "create", name, "--email", f"{name}@example.com", "--password-stdin", stdin=f"{name}-password\n")
            cli.login(server.url, name, f"{name}-password")
        tokens = {}
        with api(server.url) as c:
            for name in ("alice", "bob", "carol"):
                tokens[name] = c.post("/auth/login", json={"username": name, "password": f"{name}-password"}).json()["token"]
        yield Site(server, alice, bob, carol, tokens)
    finally:
        server.stop()


def test_a_site_manager_creates_a_workspace_that_is_the_owners_in_every_respect(site: Site) -> None:
    with api(site.server.url, site.tokens["alice"]) as c:
        r = c.post("/workspaces", params={"owner": "bob"}, json={"name": "onboard", "provider": "byo", "env": {"EDITOR": "vim"}})
        assert r.status_code == 201, r.text
        created = r.json()
        assert (created["name"], created["owner"], created["provider"], created["state"]) == ("onboard", "bob", "byo", "running")
        # A manual agent's token goes to whoever created it, to hand on with the machine.
        assert created["agent_token"].startswith("hwa_")
        assert created["agent_command"].startswith("HATCHWAY_AGENT_TOKEN=hwa_")
        events = [e for e in c.get("/audit", params={"action": "workspace.create"}).json() if e["target"] == "bob/onboard"]
        assert [(e["actor"], e["action"], e["target"], e["detail"]) for e in events] == [
            ("alice", "workspace.create", "bob/onboard", {"provider": "byo"})
        ]
    with api(site.server.url, site.tokens["bob"]) as c:
        bob_key = c.get("/users/me/key").json()["public_key"]
        assert [w["name"] for w in c.get("/workspaces").json()] == ["onboard"]
    with api(site.server.url, created["agent_token"]) as c:
        manifest = c.get("/agent/manifest").json()
    assert manifest["owner"] == {"username": "bob", "email": "bob@example.com"}
    assert manifest["authorized_keys"] == [bob_key]
    assert manifest["image_env"] == {"EDITOR": "vim"}
    defaults = manifest["defaults"]
    assert (defaults["HATCHWAY_USER_NAME"], defaults["HATCHWAY_USER_EMAIL"]) == ("bob", "bob@example.com")
    assert (defaults["HATCHWAY_WORKSPACE_NAME"], defaults["HATCHWAY_WORKSPACE_ID"]) == ("onboard", created["id"])
    # The site manager does not own it: their own list is untouched.
    assert site.alice.ok("workspaces", "list", "--json").json() == []


def test_names_are_unique_per_owner(site: Site) -> None:
    with api(site.server.url, site.tokens["alice"]) as c:
        assert c.post("/workspaces", params={"owner": "carol"}, json={"name": "twin", "provider": "byo"}).status_code == 201
        assert c.post("/workspaces", json={"name": "twin", "provider": "byo"}).status_code == 201  # alice's own
        again = c.post("/workspaces", params={"owner": "carol"}, json={"name": "twin", "provider": "byo"})
        assert (again.status_code, again.json()) == (409, {
            "error": '"carol" already has a workspace named "twin"',
            "detail": "pick another name, or delete theirs first: hatchway workspaces delete carol/twin",
        })
        # Naming yourself is your own workspace, with the answer you always had.
        mine = c.post("/workspaces", params={"owner": "alice"}, json={"name": "twin", "provider": "byo"})
        assert (mine.status_code, mine.json()) == (409, {
            "error": 'workspace "twin" already exists', "detail": "pick another name or delete the old one",
        })
    for name in ("carol/twin", "twin"):
        site.alice.ok("workspaces", "delete", name, "-y")


def test_a_member_may_name_only_themselves(site: Site) -> None:
    with api(site.server.url, site.tokens["bob"]) as c:
        for owner in ("carol", "alice", "nobody"):  # a name no user has is refused the same: it tells nothing
            r = c.post("/workspaces", params={"owner": owner}, json={"name": "sneaky", "provider": "byo"})
            assert (r.status_code, r.json()) == (403, {
                "error": "forbidden", "detail": "only a site manager can create workspaces for other users",
            }), owner
        r = c.post("/workspaces", params={"owner": "bob"}, json={"name": "self-named", "provider": "byo"})
        assert (r.status_code, r.json()["owner"]) == (201, "bob")
    refused = site.bob.run("workspaces", "create", "carol/sneaky", "--provider", "byo")
    assert (refused.code, refused.out, refused.err) == (
        1, "", "hatchway: forbidden: only a site manager can create workspaces for other users\n"
    )
    assert site.carol.ok("workspaces", "list", "--json").json() == []
    site.bob.ok("workspaces", "delete", "self-named", "-y")


def test_an_unknown_owner_is_named_with_what_to_do(site: Site) -> None:
    with api(site.server.url, site.tokens["alice"]) as c:
        r = c.post("/workspaces", params={"owner": "zoe"}, json={"name": "dev", "provider": "byo"})
    assert (r.status_code, r.json()) == (404, {
        "error": 'no user named "zoe"',
        "detail": "create the user first (hatchway users create NAME --email EMAIL), or see hatchway users list",
    })
    r = site.alice.run("workspaces", "create", "zoe/dev", "--provider", "byo")
    assert (r.code, r.out) == (1, "")
    assert r.err == (
        'hatchway: no user named "zoe": create the user first (hatchway users create NAME --email EMAIL), '
        "or see hatchway users list\n"
    )


def test_cli_creates_for_an_owner_who_then_sees_it(site: Site) -> None:
    r = site.alice.run("workspaces", "create", "bob/laptop", "--provider", "byo", "--env", "LANG=C.UTF-8")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "Created workspace laptop for bob on provider byo (running)"
    assert lines[1] == "Run the agent on the workspace machine, as the user SSH sessions should run as:"
    assert lines[2].startswith("  HATCHWAY_AGENT_TOKEN=hwa_")
    assert lines[3:] == [
        "The token is shown only now; get a new one with: hatchway workspaces agent-token bob/laptop",
        'Only bob can connect: they run "hatchway config-ssh", then "ssh hatchway.laptop"',
    ]
    listed = site.bob.ok("workspaces", "list").out.splitlines()
    assert [line.split()[:3] for line in listed] == [["NAME", "OWNER", "PROVIDER"], ["laptop", "bob", "byo"], ["onboard", "bob", "byo"]]
    shown = site.bob.ok("workspaces", "show", "laptop", "--json").json()
    assert (shown["owner"], shown["env"]) == ("bob", {"LANG": "C.UTF-8"})
    # Naming yourself is your own workspace: the output you always had.
    mine = site.alice.ok("workspaces", "create", "alice/own", "--provider", "byo").out.splitlines()
    assert mine[0] == "Created workspace own on provider byo (running)"
    assert mine[-1] == "The token is shown only now; get a new one with: hatchway workspaces agent-token own"
    # An empty OWNER is nobody's, not yours.
    empty = site.alice.run("workspaces", "create", "/dev", "--provider", "byo")
    assert empty.code == 1 and empty.err.startswith("hatchway: ") and "OWNER/NAME" in empty.err
    for name in ("bob/laptop", "alice/own"):
        site.alice.ok("workspaces", "delete", name, "-y")


def test_a_suspended_owner_gets_the_workspace_and_it_waits_for_them(site: Site, tmp_path: Path) -> None:
    """Prepared before the account is switched on (see ``new_workspace_owner``): suspension
    already keeps them out, so creating it grants nothing until a site manager activates them."""
    site.alice.ok("users", "create", "dana", "--email", "dana@example.com", "--password-stdin", stdin="dana-password\n")
    site.alice.ok("users", "suspend", "dana")
    r = site.alice.run("workspaces", "create", "dana/dev", "--provider", "byo")
    assert r.code == 0, r.err
    assert r.out.splitlines()[0] == "Created workspace dev for dana on provider byo (running)"
    site.alice.ok("users", "activate", "dana")
    dana = Cli(tmp_path / "dana")
    dana.login(site.server.url, "dana", "dana-password")
    assert [(w["name"], w["owner"]) for w in dana.ok("workspaces", "list", "--json").json()] == [("dev", "dana")]
    site.alice.ok("workspaces", "delete", "dana/dev", "-y")
