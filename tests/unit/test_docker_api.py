"""The docker provider's engine requests and answers, without an engine (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hatchway.providers import docker_api as api

RT = api.RuntimeMounts(
    runtime="/d/docker/agent-runtime/runtime",
    stdlib="/d/docker/agent-runtime/stdlib",
    dynload="/d/docker/agent-runtime/dynload",
    paths=tuple(f"/d/docker/agent-runtime/path{i}" for i in range(api.PATH_SLOTS)),
)


def plan(**kw: object) -> api.ContainerPlan:
    base = dict(
        workspace_id="0123456789abcdef0123456789abcdef", owner="alice", name="dev", image="hatchway/openssh:latest",
        cvm=False, env={"FOO": "bar baz", "PATH": "/usr/bin:/bin"}, user="alice", volume="hatchway-alice-dev-01234567-home",
        network="none", runtime=RT,
    )
    base.update(kw)
    return api.ContainerPlan(**base)  # type: ignore[arg-type]


# ---- hosts and versions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (None, "/var/run/docker.sock"),
        ("", "/var/run/docker.sock"),
        ("unix:///run/hatchway-test-docker/docker.sock", "/run/hatchway-test-docker/docker.sock"),
        ("/var/run/docker.sock", "/var/run/docker.sock"),
    ],
)
def test_docker_host_unix_sockets(value: str | None, path: str) -> None:
    assert api.parse_docker_host(value) == path


@pytest.mark.parametrize("value", ["tcp://10.0.0.1:2375", "ssh://me@host", "unix://relative.sock", "npipe:////./pipe/x"])
def test_docker_host_refuses_remote_or_relative(value: str) -> None:
    with pytest.raises(api.DockerHostError) as e:
        api.parse_docker_host(value)
    assert "docker" in str(e.value).lower()


@pytest.mark.parametrize("value", ["/run/docker\x00.sock", "unix:///run/docker\x00.sock", "/" + "d" * 107, "unix:///" + "d" * 107])
def test_docker_host_refuses_a_socket_path_no_socket_can_have_bare_or_as_a_url(value: str) -> None:
    """A NUL, or a path too long for a Unix socket address: refused as the provider is created
    (a site manager's form), not stored for every workspace create to fail on (or, with a NUL,
    for PostgreSQL to refuse with a 500)."""
    with pytest.raises(api.DockerHostError) as e:
        api.parse_docker_host(value)
    assert str(e.value) == f"invalid Docker host {value!r}: use unix:///absolute/path/to/docker.sock"


def test_remote_engines_are_refused_with_the_reason() -> None:
    with pytest.raises(api.DockerHostError, match="server's own machine"):
        api.parse_docker_host("tcp://127.0.0.1:2375")


@pytest.mark.parametrize(
    ("server", "minimum", "chosen"),
    [("1.41", "1.12", "1.41"), ("1.43", None, "1.43"), ("1.50", "1.24", "1.45"), ("1.45", "1.45", "1.45")],
)
def test_api_version_negotiation(server: str, minimum: str | None, chosen: str) -> None:
    assert api.negotiate_api_version(server, minimum) == chosen


def test_api_version_too_old_or_too_new() -> None:
    with pytest.raises(ValueError, match="20.10"):
        api.negotiate_api_version("1.40")
    with pytest.raises(ValueError, match="minimum is 1.46"):
        api.negotiate_api_version("1.50", "1.46")
    with pytest.raises(ValueError):
        api.negotiate_api_version("banana")


# ---- names and labels ------------------------------------------------------------------------------


def test_names_are_readable_unique_and_valid() -> None:
    wid = "0123456789abcdef0123456789abcdef"
    assert api.container_name("alice", "dev", wid) == "hatchway-alice-dev-01234567"
    assert api.volume_name("alice", "dev", wid) == "hatchway-alice-dev-01234567-home"
    assert api.container_name("Bob_x", "a" * 63, wid).startswith("hatchway-bob_x-aaaa")


@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80))
def test_container_names_are_always_valid_for_the_engine(owner: str, name: str) -> None:
    import re

    n = api.container_name(owner, name, "abcdef0123456789")
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", n)
    assert n.endswith("-abcdef01")


def test_labels_and_filters_select_one_workspace() -> None:
    assert api.labels("w1", "alice", "dev", "home") == {
        "hatchway.managed": "true", "hatchway.workspace.id": "w1", "hatchway.workspace.owner": "alice",
        "hatchway.workspace.name": "dev", "hatchway.role": "home",
    }
    assert api.label_filter("w1") == {"label": ["hatchway.managed=true", "hatchway.workspace.id=w1"]}


# ---- images -----------------------------------------------------------------------------------------


def test_image_env_is_read_from_the_image_config() -> None:
    inspect = {"Config": {"Env": ["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8", "EMPTY=", "EQ=a=b"]}}
    env, dropped = api.image_env(inspect)
    assert env == {"PATH": "/usr/local/bin:/usr/bin", "LANG": "C.UTF-8", "EMPTY": "", "EQ": "a=b"}
    assert dropped == []


def test_image_env_leaves_out_what_cannot_be_a_variable() -> None:
    env, dropped = api.image_env({"Config": {"Env": ["1BAD=x", "NOVALUE", "NL=a\nb", "OK=1", "WEIRD-NAME=2"]}})
    assert env == {"OK": "1"}
    assert dropped == ["1BAD", "NOVALUE", "NL", "WEIRD-NAME"]
    assert api.image_env({}) == ({}, [])
    assert api.image_env({"Config": None}) == ({}, [])


def test_architectures_in_the_engines_words() -> None:
    assert api.docker_arch("x86_64") == "amd64"
    assert api.docker_arch("aarch64") == "arm64"
    assert api.docker_arch("mips") == "mips"


# ---- containers ---------------------------------------------------------------------------------------


def test_the_workspaces_loader_variables_stay_out_of_the_containers_root_processes() -> None:
    body = api.container_create_body(plan(env={"FOO": "1", "LD_PRELOAD": "/home/alice/x.so", "LD_LIBRARY_PATH": "/home/alice"}))
    assert body["Env"] == ["FOO=1"]


def test_plain_container_runs_hatchways_init_with_its_own_network_and_home_volume() -> None:
    body = api.container_create_body(plan())
    assert body["Image"] == "hatchway/openssh:latest"
    assert body["Entrypoint"] == ["/opt/hatchway/runtime/ld.so"]
    assert body["Cmd"][-2:] == ["hatchway.providers.docker_incontainer", "init"]
    assert body["Cmd"][:3] == ["--library-path", "/opt/hatchway/runtime/lib", "/opt/hatchway/runtime/bin/python"]
    assert body["Env"] == ["FOO=bar baz", "PATH=/usr/bin:/bin"]
    assert body["Labels"]["hatchway.workspace.id"] == "0123456789abcdef0123456789abcdef"
    hc = body["HostConfig"]
    assert hc["NetworkMode"] == "none"
    assert hc["RestartPolicy"] == {"Name": "no"}
    assert "CapAdd" not in hc and "Privileged" not in hc and "CgroupnsMode" not in hc
    mounts = hc["Mounts"]
    assert mounts[0] == {"Type": "volume", "Source": "hatchway-alice-dev-01234567-home", "Target": "/home/alice"}
    binds = mounts[1:]
    assert all(m["Type"] == "bind" and m["ReadOnly"] is True for m in binds)
    assert [m["Target"] for m in binds] == [
        "/opt/hatchway/runtime", "/opt/hatchway/stdlib", "/opt/hatchway/dynload",
        "/opt/hatchway/path0", "/opt/hatchway/path1", "/opt/hatchway/path2", "/opt/hatchway/path3",
    ]
    assert "HATCHWAY_AGENT_TOKEN" not in json.dumps(body)


def test_cvm_container_runs_systemd_as_podman_would() -> None:
    body = api.container_create_body(plan(cvm=True))
    assert body["Cmd"][-1] == "cvm-init"
    assert "container=docker" in body["Env"]
    assert body["StopSignal"] == "SIGRTMIN+3"
    hc = body["HostConfig"]
    assert set(hc["Tmpfs"]) == {"/run", "/run/lock", "/tmp"}
    assert hc["CgroupnsMode"] == "private"
    # The server makes the cgroups writable from the host: no process of the container (the
    # shim, which the image's LD_PRELOAD reaches; what docker exec starts) holds CAP_SYS_ADMIN.
    assert "CapAdd" not in hc and "Privileged" not in hc


def test_cvm_keeps_an_image_container_variable() -> None:
    body = api.container_create_body(plan(cvm=True, env={"container": "podman"}))
    assert body["Env"] == ["container=podman"]


def test_runtime_mounts_need_every_slot() -> None:
    with pytest.raises(ValueError):
        api.runtime_mounts(api.RuntimeMounts("/r", "/s", "/d", ("/p0",)))


def test_exec_bodies() -> None:
    body = api.exec_create_body(["id"], user="1000:1000", env={"HOME": "/home/alice"}, workdir="/home/alice", stdin=True)
    assert body == {
        "Cmd": ["id"], "User": "1000:1000", "AttachStdin": True, "AttachStdout": True, "AttachStderr": True,
        "Tty": False, "Env": ["HOME=/home/alice"], "WorkingDir": "/home/alice",
    }
    assert "WorkingDir" not in api.exec_create_body(["id"])
    assert api.runtime_command("setup", "--name", "alice")[-4:] == [
        "hatchway.providers.docker_incontainer", "setup", "--name", "alice",
    ]


def test_an_existing_container_is_kept_only_if_made_as_planned() -> None:
    for p in (plan(), plan(cvm=True)):
        body = api.container_create_body(p)
        inspect: dict = {
            "Mounts": [
                {"Type": "volume", "Name": m["Source"], "Destination": m["Target"]} if m["Type"] == "volume"
                else {"Type": "bind", "Source": m["Source"], "Destination": m["Target"]}
                for m in body["HostConfig"]["Mounts"]
            ],
            "HostConfig": {"CapAdd": None},
        }
        assert api.made_as_planned(inspect, p)
        # A --cvm container of an earlier release, which held CAP_SYS_ADMIN, is made again.
        assert not api.made_as_planned({**inspect, "HostConfig": {"CapAdd": ["SYS_ADMIN"]}}, p)
        inspect["Mounts"] = inspect["Mounts"][:-1]
        assert not api.made_as_planned(inspect, p)
        assert not api.made_as_planned({"Mounts": []}, p)


# ---- answers -----------------------------------------------------------------------------------------


def test_frames_are_split_by_stream() -> None:
    d = api.FrameDecoder()
    data = api.frame(1, b"hello\n") + api.frame(2, b"oops\n") + api.frame(1, b"")
    assert d.feed(data) == [(1, b"hello\n"), (2, b"oops\n"), (1, b"")]
    assert d.pending == 0


@given(st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=300)), max_size=8), st.data())
def test_frames_survive_any_chunking(frames: list[tuple[int, bytes]], data: st.DataObject) -> None:
    wire = b"".join(api.frame(s, p) for s, p in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    d = api.FrameDecoder()
    out = []
    prev = 0
    for c in cuts + [len(wire)]:
        out += d.feed(wire[prev:c])
        prev = c
    assert out == frames
    assert d.pending == 0


def test_engine_messages() -> None:
    assert api.engine_message(404, b'{"message":"No such image: x:latest"}') == "No such image: x:latest"
    assert api.engine_message(500, b"plain text\n") == "plain text"
    assert api.engine_message(500, b"") == "HTTP 500"
    assert api.engine_message(409, {"message": " conflict "}) == "conflict"


def test_start_error_hints() -> None:
    msg = 'OCI runtime create failed: exec: "/sbin/init": stat /sbin/init: no such file or directory'
    assert "needs an image with systemd" in api.start_error_hint(msg, True)
    assert "architecture" in api.start_error_hint("exec format error", False)
    assert api.start_error_hint("something else", False) == "something else"


@pytest.mark.parametrize(
    ("out", "ready"),
    [("running\n", True), ("degraded\n", True), ("starting\n", False), ("initializing", False), ("", False),
     ("offline\n", False), ("maintenance\n", None), ("stopping", None)],
)
def test_systemd_states(out: str, ready: bool | None) -> None:
    assert api.systemd_state_ready(out) is ready


def test_inspect_helpers() -> None:
    assert api.running({"State": {"Running": True, "Pid": 42}})
    assert api.container_pid({"State": {"Running": True, "Pid": 42}}) == 42
    assert not api.running({})
    assert api.container_pid({}) == 0


# ---- API bodies -----------------------------------------------------------------------------------------


def test_provider_and_workspace_bodies_validate_docker_fields() -> None:
    from pydantic import ValidationError

    from hatchway.server.api import schemas

    p = schemas.ProviderCreateIn(name="dock", kind="docker", docker_host="unix:///run/d.sock", docker_network="none")
    assert (p.docker_host, p.docker_network) == ("unix:///run/d.sock", "none")
    for bad in ({"docker_host": "tcp://10.1.2.3:2375"}, {"docker_network": "a b"}, {"kind": "podman"}):
        with pytest.raises(ValidationError):
            schemas.ProviderCreateIn(**{"name": "dock", "kind": "docker", **bad})
    w = schemas.WorkspaceCreateIn(name="dev", provider="dock", image="hatchway-local/debian:bookworm-abc", cvm=True)
    assert w.image == "hatchway-local/debian:bookworm-abc" and w.cvm
    assert schemas.WorkspaceCreateIn(name="dev", image="localhost:5000/a/b@sha256:" + "0" * 64).image
    for bad_image in ("../etc", "a b", "x?y=1", "a//b", ""):
        with pytest.raises(ValidationError):
            schemas.WorkspaceCreateIn(name="dev", image=bad_image)
