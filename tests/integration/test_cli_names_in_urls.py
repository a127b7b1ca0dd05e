"""Names typed into the CLI reach the API as exactly those names, through the real CLI and a real
server.

Pasted into URL paths unencoded, names were read as URL syntax: ``workspaces delete
"dev#not-this-one"`` deleted dev, ``users set-role carol/../bob`` promoted bob, a newline or a
tab crashed with httpx.InvalidURL, and ``show '?x'`` crashed with a TypeError. Now the server
answers for the literal name, and a name no URL can carry (empty, or with a "/", which the
server decodes back into a separator) is refused by the CLI with the rule names follow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers.cli import Cli, Result
from tests.helpers.server import RunningServer

WS_RULE = "use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
USER_RULE = "use 1-32 characters, lowercase letters, digits, '_' and '-', starting with a letter"
WS_ADVICE = "name a workspace as NAME or OWNER/NAME (see: hatchway workspaces list)"


@dataclass
class World:
    srv: RunningServer
    alice: Cli  # site manager: owns dev and dev2
    bob: Cli  # member: owns dev too


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("names-in-urls")
    srv = RunningServer(tmp / "data")
    srv.start()
    try:
        alice, bob = Cli(tmp / "alice"), Cli(tmp / "bob")
        alice.login(srv.url, "alice", "alice-password-1", first=True)
        for name in ("bob", "carol"):
            alice.ok("users", "create", name, "--email", f"{name}@example.com", "--password-stdin",
                     stdin=f"{name}-password-1\n")
        bob.login(srv.url, "bob", "bob-password-1")
        alice.ok("providers", "create", "man", "--kind", "manual")
        alice.ok("providers", "create", "spare", "--kind", "manual")  # no workspaces: deletable
        alice.ok("workspaces", "create", "dev", "--provider", "man")
        alice.ok("workspaces", "create", "dev2", "--provider", "man")
        bob.ok("workspaces", "create", "dev", "--provider", "man")
        yield World(srv, alice, bob)
    finally:
        srv.stop()


def refused(r: Result, err: str) -> None:
    assert (r.code, r.out, r.err) == (1, "", f"hatchway: {err}\n"), r


def not_found(name: str) -> str:
    return f'no workspace named {name}: you have no such workspace; see "hatchway workspaces list"'


def workspaces(cli: Cli) -> list[tuple[str, str]]:
    return sorted((w["owner"], w["name"]) for w in cli.ok("workspaces", "list", "--all", "--json").json())


def audit(world: World) -> list[dict[str, object]]:
    """Every change the API makes is audited: an unchanged log means nothing was touched."""
    return world.alice.ok("audit", "list", "--json").json()  # type: ignore[no-any-return]


def test_workspace_names_with_url_syntax_address_only_that_name(world: World) -> None:
    before, log = workspaces(world.alice), audit(world)
    cases = {
        "dev#not-this-one": '"dev#not-this-one"',
        "dev?x": '"dev?x"',
        "?x": '"?x"',
        "#": '"#"',
        "de%76": '"de%76"',  # %76 is "v": it must not be decoded into dev
        "dev\n": "'dev\\n'",
        "dev\tx": "'dev\\tx'",
        "..": '".."',
        ".": '"."',
        "dev/..": '".."',  # OWNER/NAME: dev's workspace ".."
    }
    for name, shown in cases.items():
        expected = not_found(shown) if "/" not in name else f'no workspace named {shown}: "dev" has no such workspace; see "hatchway workspaces list"'
        for args in (("show", name), ("delete", name, "-y"), ("agent-token", name), ("stop", name),
                     ("start", name, "--no-wait"), ("restart", name, "--no-wait")):
            refused(world.alice.run("workspaces", *args), expected)
    assert workspaces(world.alice) == before, "no workspace was deleted"
    assert audit(world) == log, "no agent token issued, nothing stopped or started"


def test_workspace_arguments_no_url_can_carry_are_refused_by_the_cli(world: World) -> None:
    before, log = workspaces(world.alice), audit(world)
    cases = {
        "": f"invalid workspace name '': {WS_RULE}; {WS_ADVICE}",
        "alice/": f"invalid workspace name '': {WS_RULE}; {WS_ADVICE}",
        "alice/../dev2": f"invalid workspace name '../dev2': {WS_RULE}; {WS_ADVICE}",
        "bob/x/../../dev": f"invalid workspace name 'x/../../dev': {WS_RULE}; {WS_ADVICE}",
        "/dev": f"invalid username '': {USER_RULE}; {WS_ADVICE}",  # not your own dev
    }
    for name, expected in cases.items():
        for args in (("show", name), ("delete", name, "-y"), ("agent-token", name), ("stop", name)):
            refused(world.alice.run("workspaces", *args), expected)
    assert workspaces(world.alice) == before
    assert audit(world) == log


def test_owner_slash_name_still_works_and_its_owner_is_sent_literally(world: World) -> None:
    shown = world.alice.ok("workspaces", "show", "bob/dev", "--json").json()
    assert (shown["owner"], shown["name"]) == ("bob", "dev")
    assert world.alice.ok("workspaces", "show", "alice/dev", "--json").json()["owner"] == "alice"
    refused(world.alice.run("workspaces", "show", "bob#x/dev"),
            'no workspace named "dev": "bob#x" has no such workspace; see "hatchway workspaces list"')
    refused(world.alice.run("workspaces", "show", "bob/dev#x"),
            'no workspace named "dev#x": "bob" has no such workspace; see "hatchway workspaces list"')
    refused(world.bob.run("workspaces", "delete", "alice/dev", "-y"),
            "forbidden: only a site manager can manage other users' workspaces")
    assert ("alice", "dev") in workspaces(world.alice)


def test_user_names_with_url_syntax_address_only_that_name(world: World) -> None:
    def roles() -> dict[str, tuple[str, bool]]:
        return {u["username"]: (u["role"], u["suspended"]) for u in world.alice.ok("users", "list", "--json").json()}

    before, log = roles(), audit(world)
    cases = {
        "bob#x": '"bob#x"', "bob?x": '"bob?x"', "#": '"#"', "b%6Fb": '"b%6Fb"', "..": '".."',
        "bob\n": "'bob\\n'", "bob\t": "'bob\\t'",
    }
    for name, shown in cases.items():
        expected = f"no user named {shown}: see hatchway users list"
        refused(world.alice.run("users", "set-role", name, "site-manager"), expected)
        refused(world.alice.run("users", "suspend", name), expected)
        refused(world.alice.run("users", "activate", name), expected)
        refused(world.alice.run("users", "set-password", name, "--password-stdin", stdin="a-new-password-1\n"), expected)
    for name in ("carol/../bob", "carol/..%2Fbob", ""):
        expected = f"invalid username {name!r}: {USER_RULE}; see hatchway users list"
        refused(world.alice.run("users", "set-role", name, "site-manager"), expected)
        refused(world.alice.run("users", "suspend", name), expected)
        refused(world.alice.run("users", "set-password", name, "--password-stdin", stdin="a-new-password-1\n"), expected)
    assert roles() == before, "nobody was promoted or suspended"
    assert audit(world) == log, "no role, suspension or password changed"
    assert before["bob"] == ("member", False)
    world.bob.ok("whoami")  # bob's password and session are as they were


def test_provider_names_with_url_syntax_address_only_that_name(world: World) -> None:
    def providers() -> dict[str, bool]:
        return {p["name"]: p["external_connect"] for p in world.alice.ok("providers", "list", "--json").json()}

    before, log = providers(), audit(world)
    for name, shown in {"spare#x": '"spare#x"', "spare?x": '"spare?x"', "spar%65": '"spar%65"',
                        "spare\n": "'spare\\n'", "..": '".."'}.items():
        expected = f"no provider named {shown}: see hatchway providers list"
        refused(world.alice.run("providers", "delete", name, "-y"), expected)
        refused(world.alice.run("providers", "edit", name, "--external-connect", "off"), expected)
    expected = f"invalid provider name 'x/../spare': {WS_RULE}; see hatchway providers list"
    refused(world.alice.run("providers", "delete", "x/../spare", "-y"), expected)
    assert providers() == before and before["spare"] is True, "spare is neither deleted nor switched off"
    assert audit(world) == log


NOT_UTF8 = "is not valid UTF-8, and the API takes only UTF-8 text; give it in UTF-8 (check your terminal's or script's encoding)"


def test_arguments_that_are_not_utf8_are_refused_or_sent_as_their_bytes(world: World) -> None:
    """A byte that is not UTF-8 (here 0xff; Python holds it as a surrogate escape) crashed httpx."""
    before, log = workspaces(world.alice), audit(world)
    # In a path, the bytes themselves are sent; the server decodes them with U+FFFD for 0xff.
    refused(world.alice.run("workspaces", "show", "caf\u00e9\udcff"), not_found('"caf\u00e9\ufffd"'))
    refused(world.alice.run("users", "suspend", "\udcff"), 'no user named "\ufffd": see hatchway users list')
    # JSON bodies and query strings cannot carry them: refused before anything is sent.
    refused(world.alice.run("workspaces", "show", "b\udcffb/dev"), f'owner "b\\xffb" {NOT_UTF8}')
    refused(world.alice.run("workspaces", "create", "dev\udcff", "--provider", "man"), f'name "dev\\xff" {NOT_UTF8}')
    refused(world.alice.run("users", "create", "\udcff", "--email", "x@example.com"), f'username "\\xff" {NOT_UTF8}')
    refused(world.alice.run("audit", "list", "--actor", "\udcff"), f'actor "\\xff" {NOT_UTF8}')
    assert workspaces(world.alice) == before
    assert audit(world) == log
