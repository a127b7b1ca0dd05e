"""The local provider's pure parts: names, sshd_config, pass-through and cover plans, failure reasons,
whether user namespaces may be used."""

from __future__ import annotations

import re
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from hatchway.providers import userns
from hatchway.providers.naming import MAX_UNIX_USER, netns_name, unix_user_candidates
from hatchway.providers.nslaunch import cover_plan, passthrough_plan
from hatchway.providers.proc import tail_meaningful_line
from hatchway.providers.sshd_config import render_sshd_config
from hatchway.providers.supervisor import describe_exit, restart_delay

USERADD_NAME = re.compile(r"[a-z_][a-z0-9_-]*\$?")
WS_ID = "0123456789abcdef0123456789abcdef"


def test_readable_user_name_first() -> None:
    assert unix_user_candidates("alice", "dev", WS_ID) == ["hw-alice-dev", "hw-alice-dev-3eb1bd439947"]


@pytest.mark.parametrize(
    "owner,name",
    [("a" * 32, "b" * 63), ("alice", "x" * 63), ("a-b", "c"), ("bob_1", "9-lives"), ("z", "0")],
)
def test_user_names_are_valid_deterministic_and_short(owner: str, name: str) -> None:
    first = unix_user_candidates(owner, name, WS_ID)
    assert first == unix_user_candidates(owner, name, WS_ID)
    for candidate in first:
        assert len(candidate) <= MAX_UNIX_USER
        assert USERADD_NAME.fullmatch(candidate), candidate
        assert candidate.startswith("hw-")
    assert len(set(first)) == len(first)


def test_long_names_differ_by_workspace() -> None:
    a = unix_user_candidates("a" * 32, "b" * 63, "1" * 32)
    b = unix_user_candidates("a" * 32, "b" * 63, "2" * 32)
    assert not set(a) & set(b)


def test_ambiguous_readable_names_have_distinct_fallbacks() -> None:
    # owner "a-b" + workspace "c" and owner "a" + workspace "b-c" read the same...
    x = unix_user_candidates("a-b", "c", "1" * 32)
    y = unix_user_candidates("a", "b-c", "2" * 32)
    assert x[0] == y[0] == "hw-a-b-c"
    # ...so the provider falls back to the id-derived name, which differs.
    assert x[1] != y[1]


def test_netns_name() -> None:
    assert netns_name(WS_ID) == "hw-" + WS_ID


def test_sshd_config_has_the_documented_settings() -> None:
    text = render_sshd_config(host_key="/data/ws/sshd/ssh_host_ed25519_key", allow_user="hw-alice-dev")
    lines = set(text.splitlines())
    for expected in (
        "PermitUserEnvironment yes",
        "X11Forwarding yes",
        "X11UseLocalhost no",
        "PasswordAuthentication no",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "HostKey /data/ws/sshd/ssh_host_ed25519_key",
        "AllowUsers hw-alice-dev",
        "Port 22",
        "PermitRootLogin no",
    ):
        assert expected in lines, expected


def test_sshd_config_is_accepted_by_sshd(tmp_path: Path) -> None:
    if not Path("/usr/sbin/sshd").exists() or not Path("/usr/bin/ssh-keygen").exists():
        pytest.skip("openssh-server is not installed (scripts/setup installs it)")
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cfg = tmp_path / "sshd_config"
    cfg.write_text(render_sshd_config(host_key=str(key), allow_user="root"))
    done = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_sshd_config_refuses_values_that_would_add_directives() -> None:
    with pytest.raises(ValueError):
        render_sshd_config(host_key="/k\nPermitRootLogin yes", allow_user="u")
    with pytest.raises(ValueError):
        render_sshd_config(host_key="/k", allow_user="u root")


def test_passthrough_covers_only_blocked_directories_outermost_first() -> None:
    modes = {
        "/": 0o755,
        "/root": 0o700,
        "/root/.pyenv": 0o755,
        "/root/.pyenv/versions": 0o700,
        "/var": 0o755,
        "/var/lib": 0o755,
        "/var/lib/hw": 0o700,
        "/var/lib/hw/workspaces": 0o700,
        "/var/lib/hw/workspaces/ID": 0o711,
        "/opt": 0o755,
    }
    plan = passthrough_plan(
        [
            "/root/.pyenv/versions/3.11/lib",
            "/root/.pyenv/versions/3.11/bin",
            "/var/lib/hw/workspaces/ID",
            "/opt/app",
        ],
        lambda p: (modes.get(p, 0o755) | stat.S_IFDIR),
    )
    assert plan == [
        ("/root", [".pyenv"]),
        ("/root/.pyenv/versions", ["3.11"]),
        ("/var/lib/hw", ["workspaces"]),
        ("/var/lib/hw/workspaces", ["ID"]),
    ]


def test_passthrough_ignores_missing_paths_and_open_trees() -> None:
    assert passthrough_plan(["/usr/lib/python3"], lambda p: 0o755 | stat.S_IFDIR) == []
    assert passthrough_plan(["/gone/x"], lambda p: None) == []


def test_failure_reason_is_this_runs_last_error(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_text(
        "--- 2026-01-01 10:00:00 starting the agent of alice/dev\n"
        "2026-01-01 10:00:01,000 ERROR hatchway.agent: an old error from the previous run\n"
        "--- 2026-01-01 10:05:00 starting the agent of alice/dev\n"
        "2026-01-01 10:05:01,000 INFO  hatchway.agent: wrote ~/.ssh/authorized_keys\n"
        "2026-01-01 10:05:02,000 ERROR hatchway.agent: the server refused the agent token (HTTP 401)\n"
        "2026-01-01 10:05:02,100 INFO  hatchway.agent: bye\n"
    )
    assert tail_meaningful_line(log) == "the server refused the agent token (HTTP 401)"
    log.write_text("--- x\n2026-01-01 10:05:01,000 INFO  hatchway.agent: fine\n")
    assert tail_meaningful_line(log) == ""
    log.write_text("--- x\nhatchway: cannot set up the workspace inside its namespaces: mount: EPERM\n")
    assert tail_meaningful_line(log) == "hatchway: cannot set up the workspace inside its namespaces: mount: EPERM"
    assert tail_meaningful_line(tmp_path / "missing.log") == ""


def test_restart_backoff_and_exit_descriptions() -> None:
    delays = [restart_delay(n) for n in range(1, 10)]
    assert 0.4 < delays[0] < 0.6
    assert all(d <= 33 for d in delays)
    assert delays[-1] > 27
    assert describe_exit(-9) == "was killed by signal 9"
    assert describe_exit(137) == "was killed by signal 9"
    assert describe_exit(2) == "exited with status 2"


# ---- without root: the user-namespace plan and reasons ----------------------------------------


def test_cover_keeps_only_the_way_to_the_workspace_and_the_code() -> None:
    targets = [
        "/home/u/.local/share/hw/workspaces/abc",
        "/home/u/app",  # the code: kept whole, its insides not covered
        "/home/u/app/src/hatchway",
        "/usr/lib/python3",
    ]
    hide = ["/home/u/.local/share/hw", "/home/u/.local/share/hw/workspaces", "/home/u", "/run/user/5"]
    assert cover_plan(targets, hide, ["/tmp"]) == [
        ("/tmp", [], 0o1777),
        ("/home/u", [".local", "app"], 0o711),
        ("/home/u/.local", ["share"], 0o711),
        ("/run/user/5", [], 0o711),
        ("/home/u/.local/share", ["hw"], 0o711),
        ("/home/u/.local/share/hw", ["workspaces"], 0o711),
        ("/home/u/.local/share/hw/workspaces", ["abc"], 0o711),
    ]


def test_cover_never_hides_a_target_but_hides_a_data_dir_inside_one() -> None:
    assert cover_plan(["/srv/code"], ["/srv/code", "/"]) == []
    assert cover_plan(["/srv/code", "/srv/code/data/workspaces/abc"], ["/srv/code/data"]) == [
        ("/srv/code/data", ["workspaces"], 0o711),
        ("/srv/code/data/workspaces", ["abc"], 0o711),
    ]


def _reader(values: dict[str, str]) -> Callable[[str], str | None]:
    return lambda path: values.get(path)


def test_user_namespaces_allowed_unless_a_kernel_switch_says_no() -> None:
    assert userns.kernel_switches(_reader({})).ok
    assert userns.kernel_switches(_reader({userns.UNPRIVILEGED_USERNS_CLONE: "1", userns.MAX_USER_NAMESPACES: "15000"})).ok
    debian = userns.kernel_switches(_reader({userns.UNPRIVILEGED_USERNS_CLONE: "0"}))
    assert not debian.ok and "kernel.unprivileged_userns_clone = 0" in debian.reason
    assert "sysctl -w kernel.unprivileged_userns_clone=1" in debian.reason
    zero = userns.kernel_switches(_reader({userns.MAX_USER_NAMESPACES: "0"}))
    assert not zero.ok and "user.max_user_namespaces = 0" in zero.reason


def test_a_failed_attempt_names_apparmor_when_it_restricts_user_namespaces() -> None:
    plain = userns.probe_failure("unshare failed: unshare failed: Operation not permitted", _reader({}))
    assert not plain.ok
    assert plain.reason == (
        "creating the workspace's namespaces without root failed (unshare failed: unshare failed: Operation not permitted)"
    )
    ubuntu = userns.probe_failure("x", _reader({userns.APPARMOR_RESTRICT: "1"}))
    assert "kernel.apparmor_restrict_unprivileged_userns = 1" in ubuntu.reason


def _fallback_isolation(tmp_path: Path, *, turned_off: bool, why: str = "", owner_role: str = "site-manager") -> str:
    import asyncio

    from hatchway.providers.base import WorkspaceSpec
    from hatchway.providers.local import LocalProvider

    provider = LocalProvider(tmp_path, 7080, "http://127.0.0.1:7080", None, isolate=False if turned_off else None)
    provider.isolate = False  # as a server that is not root
    provider._no_userns = why
    spec = WorkspaceSpec(id=WS_ID, name="dev", owner="alice", openssh=True, owner_role=owner_role)
    return asyncio.run(provider.prepare(spec)).isolation


def test_the_fallback_starts_no_members_workspace(tmp_path: Path) -> None:
    """One made while the server could isolate it, or by a site manager since made a member,
    would run as the server's own user: it is not started, and says why."""
    from hatchway.providers.base import SetupError

    for role in ("member", "", "site manager"):
        with pytest.raises(SetupError) as refused:
            _fallback_isolation(tmp_path, turned_off=False, why="no unshare", owner_role=role)
        assert str(refused.value) == (
            "local workspaces on this server are not isolated: the Hatchway server does not run as root and cannot use "
            "user namespaces here (no unshare); one would run as the server's own user, with its access to the "
            "deployment's secrets and database, so only a site manager may own one. Ask a site manager to run the "
            "server as root, or allow user namespaces, for isolated workspaces, or to give you a workspace on another "
            "provider"
        )
    assert not (tmp_path / "workspaces").exists()  # refused before anything was made


def test_the_fallback_says_why_user_namespaces_could_not_be_used(tmp_path: Path) -> None:
    why = userns.kernel_switches(_reader({userns.UNPRIVILEGED_USERNS_CLONE: "0"})).reason
    text = _fallback_isolation(tmp_path, turned_off=False, why=why)
    assert text.startswith(
        "not isolated: the Hatchway server does not run as root and cannot use user namespaces here "
        "(the kernel does not allow unprivileged user namespaces (kernel.unprivileged_userns_clone = 0; "
    )
    for lacking in ("own Unix user", "network namespace", "port-22 forwarding is off", "PID namespace"):
        assert lacking in text
    assert "run the server as root, or allow user namespaces, for isolated workspaces" in text
    assert text.endswith("--openssh was not applied: starting sshd on the workspace's own port 22 needs a root server")
    off = _fallback_isolation(tmp_path, turned_off=True)
    assert off.startswith("not isolated: isolation is turned off (HATCHWAY_LOCAL_ISOLATION=off), so ")
