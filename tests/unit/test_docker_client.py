"""The Engine API client against a scripted engine (httpx's mock transport): versions in paths,
engine errors in the engine's words, an unreachable engine said plainly, exec output demuxed."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from hatchway.providers import docker_api as api
from hatchway.providers.base import SetupError
from hatchway.providers.docker_client import DockerClient, EngineError, EngineUnreachable


def engine(routes: dict[tuple[str, str], httpx.Response], seen: list[httpx.Request] | None = None) -> DockerClient:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if request.url.path == "/version":
            return httpx.Response(200, json={"ApiVersion": "1.43", "MinAPIVersion": "1.12"})
        key = (request.method, request.url.path)
        if key not in routes:
            return httpx.Response(404, json={"message": f"page not found: {request.url.path}"})
        r = routes[key]

        async def body():  # streamed like a real engine's answer (exec output is read as it comes)
            yield r.content

        return httpx.Response(r.status_code, headers=r.headers, content=body())

    return DockerClient("/run/test.sock", transport=httpx.MockTransport(handle))


async def test_paths_carry_the_negotiated_version_and_404_means_absent() -> None:
    seen: list[httpx.Request] = []
    c = engine({("GET", "/v1.43/images/hatchway/openssh:1/json"): httpx.Response(200, json={"Id": "sha256:x"})}, seen)
    assert await c.image_inspect("hatchway/openssh:1") == {"Id": "sha256:x"}
    assert await c.image_inspect("missing:1") is None
    assert await c.container_inspect("nope") is None
    assert [r.url.path for r in seen][:2] == ["/version", "/v1.43/images/hatchway/openssh:1/json"]
    await c.aclose()


async def test_engine_errors_keep_the_engine_message() -> None:
    c = engine({("POST", "/v1.43/containers/create"): httpx.Response(409, json={"message": 'Conflict. The container name "/x" is already in use'})})
    with pytest.raises(EngineError) as e:
        await c.container_create("x", {"Image": "i"})
    assert e.value.status == 409
    assert str(e.value) == 'creating the container: Conflict. The container name "/x" is already in use'
    assert isinstance(e.value, SetupError)
    await c.aclose()


async def test_filters_are_json_in_the_query() -> None:
    seen: list[httpx.Request] = []
    c = engine({("GET", "/v1.43/containers/json"): httpx.Response(200, json=[{"Id": "c1"}])}, seen)
    assert await c.containers(api.label_filter("w1")) == [{"Id": "c1"}]
    q = seen[-1].url.params
    assert q["all"] == "true"
    assert json.loads(q["filters"]) == {"label": ["hatchway.managed=true", "hatchway.workspace.id=w1"]}
    await c.aclose()


async def test_exec_run_splits_stdout_and_stderr_and_reads_the_exit_code() -> None:
    body = api.frame(1, b'{"user": "alice"}\n') + api.frame(2, b"warning\n")
    c = engine({
        ("POST", "/v1.43/containers/c1/exec"): httpx.Response(201, json={"Id": "e1"}),
        ("POST", "/v1.43/exec/e1/start"): httpx.Response(200, content=body),
        ("GET", "/v1.43/exec/e1/json"): httpx.Response(200, json={"Running": False, "ExitCode": 0}),
    })
    done = await c.exec_run("c1", ["id"])
    assert (done.exit_code, done.stdout, done.stderr) == (0, '{"user": "alice"}\n', "warning\n")
    await c.aclose()


async def test_too_old_engine_is_refused_with_the_reason() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ApiVersion": "1.39"})

    c = DockerClient("/run/test.sock", transport=httpx.MockTransport(handle))
    with pytest.raises(SetupError, match="Docker 20.10"):
        await c.info()
    await c.aclose()


async def test_unreachable_engine_is_said_plainly_and_where_only_in_the_log(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """The reason reaches a member's workspace, and where the engine listens is a site manager's
    business: the log names the socket, the message the provider."""
    sock = tmp_path / "no-such.sock"
    c = DockerClient(str(sock))
    with caplog.at_level(logging.WARNING, logger="hatchway.providers.docker"), pytest.raises(EngineUnreachable) as e:
        await c.ping()
    await c.aclose()
    assert str(e.value) == (
        "cannot reach the provider's Docker engine ([Errno 2] No such file or directory): is dockerd running? A site "
        "manager can start it (hatchway providers list shows where the provider looks for it), or point a provider "
        "at the right engine: hatchway providers create NAME --kind docker --docker-host unix:///PATH (and hatchway "
        "providers delete the wrong one once it has no workspaces)")
    assert [r.getMessage() for r in caplog.records] == [
        f"docker engine at unix://{sock}: [Errno 2] No such file or directory"]
