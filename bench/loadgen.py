"""Many concurrent SSH connections from one process, through the real server relay and agent.

Per connection: the client WebSocket ``/api/v1/workspaces/NAME/ssh`` that ``hatchway proxy``
would open (same headers, no compression), a socketpair spliced to it, and an asyncssh client on
the other end of the socketpair, authenticating with the platform key and the pinned host key.
So the server and agent do exactly what they do for ``ssh hatchway.NAME``, while the client side
costs a few hundred KiB instead of an ``ssh`` plus a ``hatchway proxy`` process (~30 MB).

All connections run one small exec and then stay open, idle, until every one has finished (or
the time bound has passed); then the caller measures memory and everything is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import asyncssh
from websockets.asyncio.client import connect

EXEC = "echo ok"
CHUNK = 256 * 1024


@dataclass
class ConnResult:
    ok: bool = False
    setup_s: float | None = None  # start → SSH authenticated
    exec_s: float | None = None  # start → exec finished
    error: str = ""


@dataclass
class LoadResult:
    n: int
    results: list[ConnResult] = field(default_factory=list)
    held: dict = field(default_factory=dict)  # what the caller measured while all were open

    @property
    def succeeded(self) -> int:
        return sum(r.ok for r in self.results)

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            if not r.ok:
                out[r.error] = out.get(r.error, 0) + 1
        return out


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE (children inherit it) toward ``wanted``; returns the new one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted)
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def ws_url(base: str, workspace: str) -> str:
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}[parts.scheme]
    return f"{scheme}://{parts.netloc}/api/v1/workspaces/{quote(workspace, safe='')}/ssh"


async def _ws_to_sock(ws, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
    async for message in ws:
        if isinstance(message, str):
            raise RuntimeError(f"refused: {message[:200]}")
        await loop.sock_sendall(sock, message)


async def _sock_to_ws(ws, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
    while data := await loop.sock_recv(sock, CHUNK):
        await ws.send(data)


class _Conn:
    def __init__(self) -> None:
        self.ws = None
        self.ssh: asyncssh.SSHClientConnection | None = None
        self.pumps: list[asyncio.Task] = []
        self.socks: list[socket.socket] = []

    async def close(self) -> None:
        if self.ssh is not None:
            self.ssh.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ssh.wait_closed(), 5)
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        for t in self.pumps:
            t.cancel()
        await asyncio.gather(*self.pumps, return_exceptions=True)
        for s in self.socks:
            s.close()


async def _one(url: str, token: str, user: str, key: asyncssh.SSHKey, host_key: asyncssh.SSHKey,
               conn: _Conn, result: ConnResult, cipher: str) -> None:
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    conn.ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"}, compression=None,
                            max_size=4 * 1024 * 1024, ping_interval=None, open_timeout=None, write_limit=CHUNK)
    ours, theirs = socket.socketpair()
    conn.socks = [ours, theirs]
    theirs.setblocking(False)
    conn.pumps = [asyncio.create_task(_ws_to_sock(conn.ws, theirs, loop)),
                  asyncio.create_task(_sock_to_ws(conn.ws, theirs, loop))]

    async def handshake() -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            # A named host: asyncssh would otherwise ask the socketpair for a peer address.
            sock=ours, host="hatchway-bench", port=22, username=user, client_keys=[key],
            known_hosts=([host_key], [], []),
            config=[], agent_path=None, preferred_auth="publickey", gss_auth=False, gss_kex=False,
            encryption_algs=[cipher], keepalive_interval=0,
        )

    ssh_task = asyncio.create_task(handshake())
    # A refusal arrives as a text frame: surface it instead of a vague SSH error.
    done, _ = await asyncio.wait({ssh_task, *conn.pumps}, return_when=asyncio.FIRST_COMPLETED)
    if ssh_task not in done:
        ssh_task.cancel()
        with contextlib.suppress(BaseException):
            await ssh_task
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        raise RuntimeError("stream ended during the SSH handshake")
    conn.ssh = ssh_task.result()
    result.setup_s = time.perf_counter() - t0
    r = await conn.ssh.run(EXEC, check=False)
    result.exec_s = time.perf_counter() - t0
    if r.exit_status != 0 or r.stdout != "ok\n":
        raise RuntimeError(f"exec gave exit {r.exit_status} and {r.stdout!r}")
    result.ok = True


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


async def run_load(*, base_url: str, token: str, workspace: str, user: str, key_path: str, host_key: str, n: int,
                   timeout: float, while_open: Callable[[LoadResult], Awaitable[None]] | None = None,
                   cipher: str = "aes128-gcm@openssh.com", in_flight: int | None = None) -> LoadResult:
    """Open ``n`` connections; call ``while_open`` when all have run their exec and are idle (or
    the time bound passed), then close them all.

    ``in_flight=None`` starts all ``n`` at once (a burst). Otherwise at most ``in_flight`` are
    between "start" and "exec finished" at a time; finished ones stay open, so all ``n`` are
    still open together at the end. Setup time counts from a connection's own start."""
    key = asyncssh.read_private_key(key_path)
    pinned = asyncssh.import_public_key(host_key)
    url = ws_url(base_url, workspace)
    out = LoadResult(n, [ConnResult() for _ in range(n)])
    conns = [_Conn() for _ in range(n)]
    deadline = time.perf_counter() + timeout

    gate = asyncio.Semaphore(in_flight or n)

    async def guarded(i: int) -> None:
        async with gate:
            await attempt(i)

    async def attempt(i: int) -> None:
        try:
            await asyncio.wait_for(_one(url, token, user, key, pinned, conns[i], out.results[i], cipher),
                                   max(0.1, deadline - time.perf_counter()))
        except asyncio.TimeoutError:
            out.results[i].error = f"timed out after {timeout:.0f} s"
        except Exception as exc:  # one failed connection is a result, not a crash
            out.results[i].error = _describe(exc)
            if os.environ.get("BENCH_DEBUG"):
                traceback.print_exc()

    tasks = [asyncio.create_task(guarded(i)) for i in range(n)]
    try:
        await asyncio.gather(*tasks)
        await asyncio.sleep(1.0)  # let both ends finish the exec's channel teardown
        if while_open is not None:
            await while_open(out)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.wait_for(asyncio.gather(*(c.close() for c in conns), return_exceptions=True), 60)
    return out


def run_load_sync(**kw) -> LoadResult:
    """``run_load`` on a fresh event loop (uvloop when installed: a cheaper client leaves more
    of the two cores to the server and agent being measured)."""
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_load(**kw))
