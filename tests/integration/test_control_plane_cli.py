"""The control plane driven through the real CLI against a real server process,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.cli import Cli
from tests.helpers.server import RunningServer, api, free_port

ALICE_PW = "alice-password-1"
BOB_PW = "bob-password-1"


@dataclass
class Deployment:
    server: RunningServer
    alice: Cli  # site manager (first user)
    bob: Cli  # member
    tmp: Path


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp(f"cp-{request.param}")
    db = None
    if request.param == "postgres":
        cluster = request.getfixturevalue("pg_cluster")
        db = cluster if isinstance(cluster, str) else cluster.new_database()
    srv = RunningServer(tmp / "data", db_url=db)
    srv.start()
    alice, bob = Cli(tmp / "alice"), Cli(tmp / "bob")
    alice.login(srv.url, "alice", ALICE_PW, first=True)
    alice.ok("users", "create", "bob", "--email", "bob@example.com", "--password-stdin", stdin=BOB_PW + "\n")
    bob.login(srv.url, "bob", BOB_PW)
    try:
        yield Deployment(srv, alice, bob, tmp)
    finally:
        srv.stop()


def test_first_user_is_site_manager_and_only_once(deployment: Deployment) -> None:
    who = deployment.alice.ok("whoami", "--json").json()
    assert (who["username"], who["role"], who["email"]) == ("alice", "site-manager", "alice@example.com")
    again = Cli(deployment.tmp / "mallory").run(
        "login", deployment.server.url, "--first-user", "--username", "mallory", "--email", "m@example.com",
        "--password-stdin", stdin="mallory-password\n",
    )
    assert again.code != 0
    assert "this deployment already has users" in again.err
    names = [u["username"] for u in deployment.alice.ok("users", "list", "--json").json()]
    assert "mallory" not in names


def test_secrets_on_disk_are_private(deployment: Deployment) -> None:
    session_file = deployment.alice.config_dir / "session.json"
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((deployment.server.data_dir / "deployment.secret").stat().st_mode) == 0o600
    if deployment.server.db_url is None:
        assert stat.S_IMODE((deployment.server.data_dir / "hatchway.db").stat().st_mode) == 0o600
    token = json.loads(session_file.read_text())["token"]
    assert token not in deployment.server.log()
    assert ALICE_PW not in deployment.server.log()


def test_member_is_refused_every_site_manager_command(deployment: Deployment) -> None:
    commands = [
        ("users", "list"),
        ("users", "create", "carol", "--email", "carol@example.com"),
        ("users", "suspend", "alice"),
        ("users", "activate", "alice"),
        ("users", "set-role", "bob", "site-manager"),
        ("providers", "create", "gpu", "--kind", "manual"),
        ("providers", "edit", "local", "--external-connect", "off"),
        ("providers", "delete", "local", "-y"),
        ("audit", "list"),
    ]
    for cmd in commands:
        r = deployment.bob.run(*cmd)
        assert r.code == 1, (cmd, r)
        assert r.err.strip() == "hatchway: forbidden: only a site manager can do this; ask one of your site managers", cmd
    assert deployment.bob.ok("whoami", "--json").json()["role"] == "member"
    providers = deployment.alice.ok("providers", "list", "--json").json()
    assert [p["name"] for p in providers] == ["local"] or "gpu" not in [p["name"] for p in providers]
    assert all(p["external_connect"] for p in providers if p["name"] == "local")


def test_key_download_is_a_valid_openssh_key(deployment: Deployment, tmp_path: Path) -> None:
    shown = deployment.bob.ok("keys", "show", "--json").json()
    out = tmp_path / "k"
    deployment.bob.ok("keys", "download", "--output", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(out)], capture_output=True, text=True, check=True).stdout
    assert derived.split()[:2] == shown["public_key"].split()[:2]
    fp = subprocess.run(["ssh-keygen", "-l", "-f", str(out)], capture_output=True, text=True, check=True).stdout
    assert fp.split()[1] == shown["fingerprint"]


def test_default_key_path_and_regenerate(deployment: Deployment) -> None:
    before = deployment.bob.ok("keys", "show", "--json").json()
    deployment.bob.ok("keys", "download")
    path = deployment.bob.home / ".ssh" / f"hatchway_127.0.0.1_{deployment.server.port}"  # host and port
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    r = deployment.bob.ok("keys", "regenerate", "--yes")
    after = deployment.bob.ok("keys", "show", "--json").json()
    assert after["public_key"] != before["public_key"]
    assert after["fingerprint"] in r.out
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    assert derived.split()[1] == after["public_key"].split()[1], "the downloaded key file follows the regeneration"
    actions = [(e["actor"], e["action"]) for e in deployment.alice.ok("audit", "list", "--json").json()]
    assert ("bob", "key.regenerate") in actions


def test_no_api_returns_someone_elses_private_key(deployment: Deployment) -> None:
    alice_token = json.loads((deployment.alice.config_dir / "session.json").read_text())["token"]
    bob_key = deployment.bob.ok("keys", "show", "--json").json()["public_key"]
    with api(deployment.server.url, alice_token) as c:
        own = c.get("/users/me/key/private")
        assert own.status_code == 200 and own.headers["cache-control"] == "no-store"
        assert bob_key.split()[1] not in own.text
        for path in ("/users/bob/key/private", "/users/bob/key", "/users/bob"):
            assert c.get(path).status_code in (404, 405), path
        for user in c.get("/users").json():
            assert "private" not in json.dumps(user)


def test_suspension_stops_tokens_at_once(deployment: Deployment) -> None:
    carol = Cli(deployment.tmp / "carol")
    deployment.alice.ok("users", "create", "carol", "--email", "carol@example.com", "--password-stdin", stdin="carol-password\n")
    carol.login(deployment.server.url, "carol", "carol-password")
    carol.ok("whoami")
    deployment.alice.ok("users", "suspend", "carol")
    deployment.alice.ok("users", "suspend", "carol")  # a second time (two site managers at once): no second record
    r = carol.run("whoami")
    assert r.code == 1
    assert r.err.strip() == "hatchway: account suspended: your account is suspended; ask a site manager to reactivate it"
    again = carol.run("login", deployment.server.url, "--username", "carol", "--password-stdin", stdin="carol-password\n")
    assert again.code == 1 and "account suspended" in again.err
    activated = deployment.alice.ok("users", "activate", "carol")
    assert activated.out == "Activated carol: they can sign in again (sessions from before the suspension stay ended)\n"
    deployment.alice.ok("users", "activate", "carol")
    stale = carol.run("whoami")  # a token from before the suspension never comes back
    assert stale.err.strip() == (  # the CLI fills in where and as whom it was signed in
        f"hatchway: session expired or revoked: log in again: hatchway login {deployment.server.url} --username carol")
    carol.login(deployment.server.url, "carol", "carol-password")
    carol.ok("whoami")
    listed = {u["username"]: u for u in deployment.alice.ok("users", "list", "--json").json()}
    assert listed["carol"]["suspended"] is False
    actions = [e["action"] for e in deployment.alice.ok("audit", "list", "--json").json() if e["target"] == "carol"]
    assert actions == [  # the refused sign-in while suspended is audited too
        "session.sign-in", "user.activate", "session.sign-in-failed", "user.suspend", "session.sign-in", "user.create"]


def test_set_role_and_last_site_manager(deployment: Deployment) -> None:
    deployment.alice.ok("users", "create", "dave", "--email", "dave@example.com")
    listed = {u["username"]: u for u in deployment.alice.ok("users", "list", "--json").json()}
    assert (listed["dave"]["has_password"], listed["alice"]["has_password"]) == (False, True)
    table = deployment.alice.ok("users", "list").out.splitlines()
    assert table[0].split() == ["USERNAME", "EMAIL", "ROLE", "STATUS", "PASSWORD", "CREATED"]
    dave = next(line for line in table if line.startswith("dave "))
    assert "none (users set-password)" in dave
    deployment.alice.ok("users", "set-role", "dave", "site-manager")
    roles = {u["username"]: u["role"] for u in deployment.alice.ok("users", "list", "--json").json()}
    assert roles["dave"] == "site-manager"
    deployment.alice.ok("users", "set-role", "dave", "member")
    deployment.alice.ok("users", "set-role", "dave", "member")  # already: nothing changes, nothing recorded
    changes = [(e["detail"]["old"], e["detail"]["new"]) for e in deployment.alice.ok("audit", "list", "--json").json()
               if e["action"] == "user.set-role" and e["target"] == "dave"]
    assert changes == [("site-manager", "member"), ("member", "site-manager")]  # newest first
    r = deployment.alice.run("users", "set-role", "alice", "member")
    assert r.code == 1 and "last site manager" in r.err
    bad = deployment.alice.run("users", "set-role", "dave", "overlord")
    assert bad.code == 2 and "overlord" in bad.err


def test_logout_revokes_the_token(deployment: Deployment) -> None:
    erin = Cli(deployment.tmp / "erin")
    deployment.alice.ok("users", "create", "erin", "--email", "erin@example.com", "--password-stdin", stdin="erin-password\n")
    erin.login(deployment.server.url, "erin", "erin-password")
    token = json.loads((erin.config_dir / "session.json").read_text())["token"]
    erin.ok("logout")
    assert not (erin.config_dir / "session.json").exists()
    with api(deployment.server.url, token) as c:
        r = c.get("/users/me")
    assert r.status_code == 401 and r.json()["error"] == "session expired or revoked"
    r = erin.run("whoami")
    assert r.code == 1 and "not logged in" in r.err


def test_a_session_that_cannot_be_saved_is_ended_again_and_said_so(deployment: Deployment) -> None:
    """Logging in with an unusable config dir (here a file stands where a directory is needed;
    a full disk takes the same path) used to end in a traceback, leaving a live session on the
    server that nobody held the token of."""
    hana = Cli(deployment.tmp / "hana")
    deployment.alice.ok("users", "create", "hana", "--email", "hana@example.com", "--password-stdin", stdin="hana-password\n")
    hana.config_dir.parent.mkdir(parents=True)
    hana.config_dir.parent.joinpath("hatchway").write_text("not a directory")
    r = hana.run("login", deployment.server.url, "--username", "hana", "--password-stdin", stdin="hana-password\n")
    assert (r.code, r.out) == (1, "")
    assert r.err == (
        f"hatchway: logged in, but could not save the session in {hana.config_dir}: File exists; that session was "
        "ended again. Free space or fix that directory (or set HATCHWAY_CONFIG_DIR to another one), then log in again\n"
    )
    with api(deployment.server.url) as c:
        token = c.post("/auth/login", json={"username": "hana", "password": "hana-password"}).json()["token"]
    with api(deployment.server.url, token) as c:
        live = c.get("/users/me/sessions").json()
    assert len(live) == 1 and live[0]["current"], live


def test_providers_and_external_connect(deployment: Deployment) -> None:
    deployment.alice.ok("providers", "create", "byo", "--kind", "manual")
    dup = deployment.alice.run("providers", "create", "byo", "--kind", "manual")
    assert dup.code == 1 and 'provider "byo" already exists' in dup.err
    bad = deployment.alice.run("providers", "create", "Bad Name", "--kind", "manual")
    assert bad.code == 1 and "invalid provider name" in bad.err
    deployment.alice.ok("providers", "edit", "byo", "--external-connect", "off")
    rows = {p["name"]: p for p in deployment.bob.ok("providers", "list", "--json").json()}
    assert rows["byo"] == {"name": "byo", "kind": "manual", "external_connect": False, "workspace_count": rows["byo"]["workspace_count"]}
    assert rows["local"]["external_connect"] is True
    deployment.alice.ok("providers", "edit", "byo", "--external-connect", "on")
    events = [e for e in deployment.alice.ok("audit", "list", "--json").json() if e["action"] == "provider.edit"]
    assert events[0]["detail"] == {"external_connect": {"old": False, "new": True}}
    assert events[1]["detail"] == {"external_connect": {"old": True, "new": False}}


def test_a_member_sees_only_their_own_workspaces_counted_and_no_engine_address(deployment: Deployment) -> None:
    """How many workspaces other users have on a provider (and when that changes) is not a
    member's to watch, nor where a Docker engine listens; a site manager sees both."""
    alice, bob = deployment.alice, deployment.bob
    alice.ok("providers", "create", "counted", "--kind", "manual")
    alice.ok("providers", "create", "engine", "--kind", "docker", "--docker-host", "unix:///run/site-engine.sock",
             "--docker-network", "ws-net")
    try:
        for name in ("a1", "a2"):
            alice.ok("workspaces", "create", name, "--provider", "counted")
        bob.ok("workspaces", "create", "b1", "--provider", "counted")
        as_bob = {p["name"]: p for p in bob.ok("providers", "list", "--json").json()}
        as_alice = {p["name"]: p for p in alice.ok("providers", "list", "--json").json()}
        assert (as_bob["counted"]["workspace_count"], as_alice["counted"]["workspace_count"]) == (1, 3)
        assert as_bob["engine"] == {"name": "engine", "kind": "docker", "external_connect": True, "workspace_count": 0}
        assert (as_alice["engine"]["docker_host"], as_alice["engine"]["docker_network"]) == (
            "unix:///run/site-engine.sock", "ws-net")
        # Nor does a refusal from that engine say where it listens: the server's log does.
        r = bob.run("workspaces", "create", "b2", "--provider", "engine", "--image", "debian:12")
        assert (r.code, r.err) == (1, (
            'hatchway: cannot use image "debian:12": cannot reach the provider\'s Docker engine ([Errno 2] No such '
            "file or directory): is dockerd running? A site manager can start it (hatchway providers list shows where "
            "the provider looks for it), or point a provider at the right engine: hatchway providers create NAME "
            "--kind docker --docker-host unix:///PATH (and hatchway providers delete the wrong one once it has no "
            "workspaces)\n"))
        assert "docker engine at unix:///run/site-engine.sock: [Errno 2] No such file or directory" in \
            deployment.server.log()
    finally:  # the module's deployment is shared: later tests count bob's workspaces
        for who, name in ((alice, "a1"), (alice, "a2"), (bob, "b1")):
            who.run("workspaces", "delete", name, "-y")
        for provider in ("counted", "engine"):
            alice.run("providers", "delete", provider, "-y")


def test_a_provider_without_workspaces_can_be_deleted(deployment: Deployment) -> None:
    deployment.alice.ok("providers", "create", "typo", "--kind", "docker", "--docker-host", "unix:///nonexistent.sock")
    deployment.alice.ok("providers", "create", "busy", "--kind", "manual")
    deployment.bob.ok("workspaces", "create", "on-busy", "--provider", "busy")
    for name, message in (
        ("busy", 'provider "busy" still has 1 workspace: delete them first; see hatchway workspaces list --all'),
        ("local", 'the built-in "local" provider cannot be deleted: turn its External Connect off to refuse SSH to '
                  "its workspaces: hatchway providers edit local --external-connect off"),
        ("nope", 'no provider named "nope": see hatchway providers list'),
    ):
        r = deployment.alice.run("providers", "delete", name, "-y")
        assert (r.code, r.err.strip()) == (1, f"hatchway: {message}"), name
    assert deployment.alice.ok("providers", "delete", "typo", "-y").out == "Deleted provider typo\n"
    names = [p["name"] for p in deployment.alice.ok("providers", "list", "--json").json()]
    assert "typo" not in names and "busy" in names
    event = next(e for e in deployment.alice.ok("audit", "list", "--json").json() if e["action"] == "provider.delete")
    assert (event["actor"], event["target"], event["detail"]) == ("alice", "typo", {"kind": "docker"})
    deployment.bob.ok("workspaces", "delete", "on-busy", "-y")
    deployment.alice.ok("providers", "delete", "busy", "-y")


@pytest.mark.parametrize(
    "name",
    # "bob/x/y" is bob's own workspace "x/y" (OWNER/NAME); plain "x/y" would be user x's "y".
    ["Dev", "dev_1", "-dev", "dev-", "a" * 64, "dev box", "dev\nHost *", "dév", "dev;rm", "", "bob/x/y", "%h"],
)
def test_workspace_name_validation(deployment: Deployment, name: str) -> None:
    r = deployment.bob.run("workspaces", "create", "--provider", "local", "--", name)
    assert r.code != 0
    assert r.err.startswith("hatchway: invalid request: name: invalid workspace name "), r.err
    assert "use 1-63 lowercase letters, digits and '-'" in r.err
    assert "\n" not in r.err.rstrip("\n"), "a hostile name must not add lines to the message"
    assert deployment.bob.ok("workspaces", "list", "--json").json() == []


def test_workspaces_lifecycle_and_agent_token(deployment: Deployment) -> None:
    deployment.alice.run("providers", "create", "byo2", "--kind", "manual")
    r = deployment.bob.ok("workspaces", "create", "web-1", "--provider", "byo2", "--env", "LANG=C.UTF-8", "--env", "EDITOR=vim -u NONE")
    assert "HATCHWAY_AGENT_TOKEN=hwa_" in r.out and "hatchway agent --url " + deployment.server.url in r.out
    dup = deployment.bob.run("workspaces", "create", "web-1", "--provider", "byo2")
    assert dup.code == 1 and 'workspace "web-1" already exists' in dup.err
    unknown = deployment.bob.run("workspaces", "create", "web-2", "--provider", "nope")
    assert unknown.code == 1 and 'no provider named "nope"' in unknown.err
    badenv = deployment.bob.run("workspaces", "create", "web-3", "--provider", "byo2", "--env", "1BAD=x")
    assert badenv.code == 1 and "invalid environment variable name" in badenv.err
    shown = deployment.bob.ok("workspaces", "show", "web-1", "--json").json()
    assert shown["env"] == {"LANG": "C.UTF-8", "EDITOR": "vim -u NONE"}
    assert (shown["owner"], shown["provider"], shown["state"], shown["agent_connected"]) == ("bob", "byo2", "running", False)
    lines = [line.split(None, 1) for line in deployment.bob.ok("workspaces", "show", "web-1").out.splitlines()]
    assert ["connect:", "ssh hatchway.web-1"] in lines and ["env:", "EDITOR=vim -u NONE"] in lines
    # Agent tokens: a new one invalidates the old one; only owner or site manager may rotate.
    first = r.out.split("HATCHWAY_AGENT_TOKEN=")[1].split()[0]
    with api(deployment.server.url, first) as c:
        assert c.get("/agent/manifest").status_code == 200
    new = deployment.bob.ok("workspaces", "agent-token", "web-1").out.strip()
    assert new.startswith("hwa_") and new != first
    with api(deployment.server.url, first) as c:
        assert c.get("/agent/manifest").status_code == 401
    with api(deployment.server.url, new) as c:
        m = c.get("/agent/manifest").json()
        assert m["workspace"]["name"] == "web-1" and m["image_env"] == {"LANG": "C.UTF-8", "EDITOR": "vim -u NONE"}
        assert c.get("/users/me").status_code == 401, "an agent token grants nothing of the user API"
    deployment.alice.ok("workspaces", "agent-token", "bob/web-1")
    other = deployment.alice.run("workspaces", "show", "web-1")
    assert other.code == 1 and 'no workspace named "web-1"' in other.err
    assert deployment.alice.ok("workspaces", "show", "bob/web-1", "--json").json()["owner"] == "bob"
    nosy = deployment.bob.run("workspaces", "show", "alice/anything")
    assert nosy.code == 1 and "forbidden" in nosy.err
    deployment.bob.ok("workspaces", "delete", "web-1", "--yes")
    assert "web-1" not in [w["name"] for w in deployment.bob.ok("workspaces", "list", "--json").json()]


def test_bad_requests_get_json_errors_and_change_nothing(deployment: Deployment) -> None:
    alice_token = json.loads((deployment.alice.config_dir / "session.json").read_text())["token"]
    with api(deployment.server.url, alice_token) as c:
        users_before = c.get("/users").json()
        r = c.post("/users", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"] == "invalid request"
        r = c.post("/users", content=b"x" * (2 * 1024 * 1024), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "request too large"
        r = c.post("/users", json={"username": "eve\nx", "email": "e@example.com"})
        assert r.status_code == 422 and "invalid username" in r.json()["detail"]
        r = c.post("/users", json={"username": "eve", "email": "e@example.com", "role": "root"})
        assert r.status_code == 422
        r = c.post("/users", json={"username": "alice", "email": "e@example.com"})
        assert r.status_code == 409 and r.json() == {"error": 'user "alice" already exists', "detail": "pick another username"}
        r = c.post("/workspaces", json={"name": "ok", "provider": "local", "env": {"A": "x\ny"}})
        assert r.status_code == 422 and "newline" in r.json()["detail"]
        r = c.get("/nope")
        assert r.status_code == 404 and set(r.json()) == {"error", "detail"}
        assert c.get("/users").json() == users_before
    with httpx.Client(base_url=deployment.server.url + "/api/v1") as anon:
        r = anon.get("/users/me")
        assert r.status_code == 401 and r.json()["error"] == "not authenticated"


def test_wrong_passwords_are_throttled(deployment: Deployment) -> None:
    deployment.alice.ok("users", "create", "frank", "--email", "frank@example.com", "--password-stdin", stdin="frank-password\n")
    frank = Cli(deployment.tmp / "frank")
    for _ in range(5):
        r = frank.run("login", deployment.server.url, "--username", "frank", "--password-stdin", stdin="wrong-pass\n")
        assert r.code == 1 and "wrong username or password" in r.err
    r = frank.run("login", deployment.server.url, "--username", "frank", "--password-stdin", stdin="frank-password\n")
    assert r.code == 1 and "too many failed logins" in r.err
    # Another user is not affected.
    deployment.bob.login(deployment.server.url, "bob", BOB_PW)


def test_openapi_lists_every_endpoint_the_cli_uses(deployment: Deployment) -> None:
    doc = httpx.get(deployment.server.url + "/api/v1/openapi.json").json()
    paths = doc["paths"]
    expected = {
        "/api/v1/auth/first-user": "post",
        "/api/v1/auth/login": "post",
        "/api/v1/auth/logout": "post",
        "/api/v1/users/me": "get",
        "/api/v1/users": "post",
        "/api/v1/users/{username}/suspend": "post",
        "/api/v1/users/{username}/activate": "post",
        "/api/v1/users/{username}/role": "put",
        "/api/v1/users/{username}/password": "put",
        "/api/v1/users/me/password": "put",
        "/api/v1/users/me/key": "get",
        "/api/v1/users/me/key/private": "get",
        "/api/v1/users/me/key/regenerate": "post",
        "/api/v1/providers": "post",
        "/api/v1/providers/{name}": "patch",
        "/api/v1/workspaces": "post",
        "/api/v1/workspaces/{name}": "delete",
        "/api/v1/workspaces/{name}/agent-token": "post",
        "/api/v1/audit": "get",
        "/api/v1/connections": "get",
        "/api/v1/agent/manifest": "get",
    }
    for path, method in expected.items():
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from OpenAPI"


def test_data_survives_restart(deployment: Deployment) -> None:
    deployment.alice.ok("users", "create", "gina", "--email", "gina@example.com")
    key_before = deployment.bob.ok("keys", "show", "--json").json()
    assert deployment.server.stop(signal.SIGINT) == 0, "SIGINT stops the server cleanly"
    assert "Traceback" not in deployment.server.log()
    deployment.server.start()
    names = [u["username"] for u in deployment.alice.ok("users", "list", "--json").json()]
    assert "gina" in names
    assert deployment.bob.ok("keys", "show", "--json").json() == key_before
    deployment.bob.ok("keys", "download", "--output", str(deployment.tmp / "after-restart"))


def test_list_search_keeps_matching_users_and_workspaces(deployment: Deployment) -> None:
    """A deployment with thousands of users: `--search` finds the few, in any case, on the server."""
    alice, bob = deployment.alice, deployment.bob
    for name in ("srch-ann", "srch-bea"):
        alice.ok("users", "create", name, "--email", f"{name}@example.com")
    alice.ok("providers", "create", "srchprov", "--kind", "manual")
    alice.ok("workspaces", "create", "srch-one", "--provider", "srchprov")
    alice.ok("workspaces", "create", "bob/srch-two", "--provider", "srchprov")

    assert [u["username"] for u in alice.ok("users", "list", "--search", "SRCH-", "--json").json()] == ["srch-ann", "srch-bea"]
    table = alice.ok("users", "list", "--search", "bea").out.splitlines()
    assert [line.split()[0] for line in table] == ["USERNAME", "srch-bea"]

    def found(cli: Cli, *args: str) -> list[tuple[str, str]]:
        return [(w["owner"], w["name"]) for w in cli.ok("workspaces", "list", *args, "--json").json()]

    assert found(alice, "--all", "--search", "Srch") == [("alice", "srch-one"), ("bob", "srch-two")]
    assert found(alice, "--all", "--search", "bob/srch") == [("bob", "srch-two")]
    assert found(alice, "--search", "srch") == [("alice", "srch-one")]  # without --all: her own
    assert found(bob, "--search", "two") == [("bob", "srch-two")]
    assert found(alice, "--all", "--search", "no such") == []
    rows = alice.ok("workspaces", "list", "--all", "--search", "bob/srch-t").out.splitlines()
    assert [line.split()[:2] for line in rows] == [["NAME", "OWNER"], ["srch-two", "bob"]]


def test_list_limit_and_offset_page_users_and_workspaces(deployment: Deployment) -> None:
    """`--limit`/`--offset` page the lists as the API does: users by name, workspaces by owner
    and name, with or without --search."""
    alice = deployment.alice
    for name in ("pgn-a", "pgn-b", "pgn-c"):
        alice.ok("users", "create", name, "--email", f"{name}@example.com")
    alice.ok("providers", "create", "pgnprov", "--kind", "manual")
    for owner in ("pgn-c", "pgn-a", "pgn-b"):
        alice.ok("workspaces", "create", f"{owner}/box", "--provider", "pgnprov")

    def users(*args: str) -> list[str]:
        return [u["username"] for u in alice.ok("users", "list", *args, "--json").json()]

    def workspaces(*args: str) -> list[str]:
        return [f'{w["owner"]}/{w["name"]}' for w in alice.ok("workspaces", "list", "--all", *args, "--json").json()]

    assert users("--search", "pgn-", "--limit", "2") == ["pgn-a", "pgn-b"]
    assert users("--search", "pgn-", "--offset", "2") == ["pgn-c"]
    assert users("--search", "pgn-", "--limit", "1", "--offset", "1") == ["pgn-b"]
    assert users("--search", "pgn-", "--offset", "3") == []
    everyone = users()
    assert users("--limit", "2", "--offset", "1") == everyone[1:3]
    assert users("--limit", "5000") == everyone
    table = alice.ok("users", "list", "--search", "pgn", "--limit", "1", "--offset", "2").out.splitlines()
    assert [line.split()[0] for line in table] == ["USERNAME", "pgn-c"]

    assert workspaces("--search", "pgn-", "--limit", "2", "--offset", "1") == ["pgn-b/box", "pgn-c/box"]
    assert workspaces("--search", "/box", "--limit", "1") == ["pgn-a/box"]
    assert workspaces("--offset", str(2**63 - 1)) == []
    every_workspace = workspaces()
    assert workspaces("--limit", "3", "--offset", "1") == every_workspace[1:4]
    rows = alice.ok("workspaces", "list", "--all", "--search", "pgn-", "--offset", "2").out.splitlines()
    assert [line.split()[:2] for line in rows] == [["NAME", "OWNER"], ["box", "pgn-c"]]


#: Each refused value and the last line of what the CLI says about it.
BAD_PAGING = [
    (("--limit", "0"), "Error: Invalid value for '--limit': \"0\" is not a whole number from 1 to 5000: give how many to list at most."),
    (("--limit", "-1"), "Error: Invalid value for '--limit': \"-1\" is not a whole number from 1 to 5000: give how many to list at most."),
    (("--limit", "5001"),
     "Error: Invalid value for '--limit': \"5001\" is not a whole number from 1 to 5000: give how many to list at most."),
    (("--limit", "ten"), "Error: Invalid value for '--limit': \"ten\" is not a whole number from 1 to 5000: give how many to list at most."),
    (("--limit", "2.5"), "Error: Invalid value for '--limit': \"2.5\" is not a whole number from 1 to 5000: give how many to list at most."),
    (("--offset", "-1"), "Error: Invalid value for '--offset': \"-1\" is not a whole number from 0 to 2^63-1: give how many to skip first."),
    (("--offset", str(2**63)),
     f"Error: Invalid value for '--offset': \"{2**63}\" is not a whole number from 0 to 2^63-1: give how many to skip first."),
    (("--offset", "+3"), "Error: Invalid value for '--offset': \"+3\" is not a whole number from 0 to 2^63-1: give how many to skip first."),
]


@pytest.mark.parametrize("command", [("users", "list"), ("workspaces", "list", "--all")])
def test_bad_limit_or_offset_is_refused_before_any_request(deployment: Deployment, command: tuple[str, ...]) -> None:
    """The CLI refuses what the API would answer with a 422, without asking it: a session whose
    server is gone says the same, where a good value tries the server and finds it gone."""
    gone = Cli(deployment.tmp / f"gone-{command[0]}")
    gone.config_dir.mkdir(parents=True, exist_ok=True)
    session = json.loads((deployment.alice.config_dir / "session.json").read_text())
    (gone.config_dir / "session.json").write_text(json.dumps({**session, "url": f"http://127.0.0.1:{free_port()}"}))
    (gone.config_dir / "session.json").chmod(0o600)
    for cli in (deployment.alice, gone):
        for args, said in BAD_PAGING:
            r = cli.run(*command, *args)
            assert (r.code, r.out, r.err.splitlines()[-1]) == (2, "", said), (command, args, r)
    assert deployment.alice.ok(*command, "--limit", "1", "--offset", "0", "--json").json() != []
    r = gone.run(*command, "--limit", "1")
    assert r.code == 1 and r.err.startswith("hatchway: "), r
