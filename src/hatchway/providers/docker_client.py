"""A small async client of the Docker Engine API over its Unix socket (httpx, no SDK).

Bodies and answers are shaped in :mod:`hatchway.providers.docker_api`; this module only sends
them. Engine errors become :class:`EngineError` with the engine's own message; an engine that
cannot be reached becomes :class:`EngineUnreachable`. Both are :class:`SetupError`, so the
supervisor shows them as the workspace's reason instead of retrying blindly. That reason reaches
the workspace's owner, a member who may not see where the provider's engine listens, so it says
"the provider's Docker engine" and only the server's log names its address.

``exec`` comes in two forms: :meth:`DockerClient.exec_run` waits for a command and returns its
output, and :meth:`DockerClient.exec_attach` upgrades the connection (``101 UPGRADED``) into a
raw two-way stream: the agent's stdin and its multiplexed stdout/stderr. Closing our half of it
is how the agent is told to stop: the engine has no API to signal an exec'd process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from hatchway.providers import docker_api as api
from hatchway.providers.base import SetupError

log = logging.getLogger("hatchway.providers.docker")


class EngineError(SetupError):
    def __init__(self, status: int, message: str, what: str = "") -> None:
        self.status = status
        self.engine_message = message
        super().__init__(f"{what}: {message}" if what else message)


class EngineUnreachable(SetupError):
    pass


@dataclass
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str


class AttachedExec:
    """A running exec with its stdin and output attached through an upgraded connection."""

    def __init__(self, client: DockerClient, exec_id: str, response: httpx.Response, stream: Any) -> None:
        self.client = client
        self.exec_id = exec_id
        self._response = response
        self._stream = stream
        self._decoder = api.FrameDecoder()
        self._closed = False

    async def frames(self) -> AsyncIterator[tuple[int, bytes]]:
        """(stream, bytes) until the process and its output end."""
        while True:
            try:
                data = await self._stream.read(65536)
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, RuntimeError):
                data = b""
            except Exception:  # anyio/httpcore closed-stream errors
                data = b""
            if not data:
                return
            for item in self._decoder.feed(data):
                yield item

    def close_stdin(self) -> None:
        """Half-close: the process reads end-of-file on its stdin."""
        sock = self._stream.get_extra_info("socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                await self._stream.aclose()
            except Exception:
                pass
            await self._response.aclose()

    async def exit_code(self) -> int | None:
        info = await self.client.exec_inspect(self.exec_id)
        if info.get("Running"):
            return None
        code = info.get("ExitCode")
        return int(code) if code is not None else None


class DockerClient:
    def __init__(self, socket_path: str, timeout: float = 60.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.socket_path = socket_path
        self._transport = transport or httpx.AsyncHTTPTransport(uds=socket_path)
        self._http = httpx.AsyncClient(transport=self._transport, base_url="http://docker", timeout=timeout)
        self._version: str | None = None
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- plumbing -------------------------------------------------------------------------------

    def _unreachable(self, what: str, cause: object) -> EngineUnreachable:
        """The error for a member's eyes (``what`` happened to "the provider's Docker engine"); the
        log, a site manager's, says which engine and what ``cause`` it met."""
        log.warning("docker engine at unix://%s: %s", self.socket_path, cause)
        return EngineUnreachable(what)

    async def _raw(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kw)
        except httpx.TimeoutException:
            request = f"{method} {path.split('?')[0]}"
            raise self._unreachable(
                f"the provider's Docker engine did not answer {request} in time: it may be overloaded or stuck; a site "
                "manager can check it (hatchway providers list shows where the provider looks for it), then try again",
                f"no answer to {request} in time",
            ) from None
        except httpx.TransportError as exc:
            raise self._unreachable(
                f"cannot reach the provider's Docker engine ({exc or type(exc).__name__}): is dockerd running? A site "
                "manager can start it (hatchway providers list shows where the provider looks for it), or point a "
                "provider at the right engine: hatchway providers create NAME --kind docker --docker-host "
                "unix:///PATH (and hatchway providers delete the wrong one once it has no workspaces)", exc,
            ) from None

    async def version_prefix(self) -> str:
        async with self._lock:
            if self._version is None:
                r = await self._raw("GET", "/version")
                if r.status_code != 200:
                    raise EngineError(r.status_code, api.engine_message(r.status_code, r.content), "Docker engine /version")
                info = r.json()
                try:
                    self._version = api.negotiate_api_version(str(info.get("ApiVersion", "")), info.get("MinAPIVersion"))
                except ValueError as exc:
                    raise SetupError(str(exc)) from None
            return f"/v{self._version}"

    async def request(self, method: str, path: str, *, what: str = "", ok: tuple[int, ...] = (200, 201, 204, 304), **kw: Any) -> httpx.Response:
        prefix = await self.version_prefix()
        r = await self._raw(method, prefix + path, **kw)
        if r.status_code not in ok:
            raise EngineError(r.status_code, api.engine_message(r.status_code, r.content), what or f"{method} {path.split('?')[0]}")
        return r

    # ---- engine ---------------------------------------------------------------------------------

    async def ping(self) -> None:
        r = await self._raw("GET", "/_ping")
        if r.status_code != 200:
            raise EngineError(r.status_code, api.engine_message(r.status_code, r.content), "Docker engine ping")

    async def info(self) -> dict[str, Any]:
        return (await self.request("GET", "/info")).json()

    # ---- images ---------------------------------------------------------------------------------

    async def image_inspect(self, name: str) -> dict[str, Any] | None:
        r = await self.request("GET", f"/images/{name}/json", ok=(200, 404))
        return None if r.status_code == 404 else r.json()

    # ---- volumes --------------------------------------------------------------------------------

    async def volume_inspect(self, name: str) -> dict[str, Any] | None:
        r = await self.request("GET", f"/volumes/{name}", ok=(200, 404))
        return None if r.status_code == 404 else r.json()

    async def volume_create(self, body: dict[str, Any]) -> dict[str, Any]:
        return (await self.request("POST", "/volumes/create", json=body, what="creating the home volume")).json()

    async def volume_remove(self, name: str) -> None:
        await self.request("DELETE", f"/volumes/{name}", ok=(204, 404), what=f"removing volume {name}")

    async def volumes(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        r = await self.request("GET", "/volumes", params={"filters": json.dumps(filters)})
        return list(r.json().get("Volumes") or [])

    # ---- containers -----------------------------------------------------------------------------

    async def containers(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        r = await self.request("GET", "/containers/json", params={"all": "true", "filters": json.dumps(filters)})
        return list(r.json())

    async def container_inspect(self, ref: str) -> dict[str, Any] | None:
        r = await self.request("GET", f"/containers/{ref}/json", ok=(200, 404))
        return None if r.status_code == 404 else r.json()

    async def container_create(self, name: str, body: dict[str, Any]) -> str:
        r = await self.request("POST", "/containers/create", params={"name": name}, json=body, what="creating the container")
        return str(r.json()["Id"])

    async def container_start(self, ref: str) -> None:
        await self.request("POST", f"/containers/{ref}/start", ok=(204, 304), what="starting the container")

    async def container_stop(self, ref: str, timeout: int) -> None:
        await self.request(
            "POST", f"/containers/{ref}/stop", params={"t": str(timeout)}, ok=(204, 304, 404),
            what="stopping the container", timeout=timeout + 30,
        )

    async def container_remove(self, ref: str) -> None:
        await self.request("DELETE", f"/containers/{ref}", params={"force": "true", "v": "false"}, ok=(204, 404),
                           what="removing the container", timeout=60)

    async def container_wait(self, ref: str) -> int:
        r = await self.request("POST", f"/containers/{ref}/wait", ok=(200, 404), timeout=None)
        return int(r.json().get("StatusCode", -1)) if r.status_code == 200 else -1

    # ---- exec -----------------------------------------------------------------------------------

    async def exec_create(self, container: str, body: dict[str, Any]) -> str:
        r = await self.request("POST", f"/containers/{container}/exec", json=body, ok=(201,), what="exec in the container")
        return str(r.json()["Id"])

    async def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        return (await self.request("GET", f"/exec/{exec_id}/json")).json()

    async def exec_run(self, container: str, cmd: list[str], *, user: str = "0:0", env: dict[str, str] | None = None,
                       timeout: float = 60.0) -> ExecResult:
        """Run a command in the container and wait for it; its output is capped at 1 MiB."""
        exec_id = await self.exec_create(container, api.exec_create_body(cmd, user=user, env=env))
        prefix = await self.version_prefix()
        decoder = api.FrameDecoder()
        out, err = bytearray(), bytearray()
        try:
            async with asyncio.timeout(timeout):
                async with self._http.stream(
                    "POST", f"{prefix}/exec/{exec_id}/start", json={"Detach": False, "Tty": False}, timeout=None
                ) as r:
                    if r.status_code != 200:
                        body = await r.aread()
                        raise EngineError(r.status_code, api.engine_message(r.status_code, body), "exec in the container")
                    async for chunk in r.aiter_raw():
                        for stream, data in decoder.feed(chunk):
                            target = out if stream == api.STDOUT else err
                            if len(target) < 1 << 20:
                                target += data
        except TimeoutError:
            raise SetupError(f"{cmd[-2:]} in the container did not finish within {timeout:.0f} s") from None
        except httpx.TransportError as exc:
            raise self._unreachable(f"lost the provider's Docker engine during an exec: {exc}", exc) from None
        info = await self.exec_inspect(exec_id)
        code = info.get("ExitCode")
        return ExecResult(int(code) if code is not None else -1, out.decode(errors="replace"), err.decode(errors="replace"))

    async def exec_attach(self, container: str, body: dict[str, Any]) -> AttachedExec:
        exec_id = await self.exec_create(container, body)
        prefix = await self.version_prefix()
        req = self._http.build_request(
            "POST", f"{prefix}/exec/{exec_id}/start", json={"Detach": False, "Tty": False},
            headers={"Connection": "Upgrade", "Upgrade": "tcp"}, timeout=httpx.Timeout(30.0, read=None),
        )
        try:
            resp = await self._http.send(req, stream=True)
        except httpx.TransportError as exc:
            raise self._unreachable(f"cannot attach to an exec through the provider's Docker engine: {exc}", exc) from None
        stream = resp.extensions.get("network_stream")
        if resp.status_code != 101 or stream is None:
            body = await resp.aread()
            await resp.aclose()
            raise EngineError(resp.status_code, api.engine_message(resp.status_code, body), "starting the agent in the container")
        return AttachedExec(self, exec_id, resp, stream)
