"""SSH through the relay from inside the test process: asyncssh over the client WebSocket.

What ``hatchway proxy`` does, without a process per connection, so tests can open hundreds of
SSH connections cheaply (soak, abusive-client tests). A refusal from the server (a text frame)
raises :class:`Refused` with the server's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


class Refused(Exception):
    pass


def ws_url(base: str, workspace: str, owner: str | None = None) -> str:
    url = base.replace("http://", "ws://").replace("https://", "wss://") + f"/api/v1/workspaces/{workspace}/ssh"
    return url + (f"?owner={owner}" if owner else "")


async def open_stream(base: str, token: str, workspace: str, owner: str | None = None, **kw: Any) -> ClientConnection:
    return await connect(
        ws_url(base, workspace, owner), additional_headers={"Authorization": f"Bearer {token}"},
        compression=None, max_size=4 * 1024 * 1024, ping_interval=None, open_timeout=30, **kw,
    )


@dataclass
class Tunnel:
    ws: ClientConnection
    ssh: asyncssh.SSHClientConnection
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    sock: socket.socket | None = None

    async def run(self, command: str, stdin: bytes | None = None, timeout: float = 30) -> asyncssh.SSHCompletedProcess:
        return await asyncio.wait_for(self.ssh.run(command, input=stdin, encoding=None, check=False), timeout)

    async def close(self) -> None:
        self.ssh.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ssh.wait_closed(), 5)
        await self._stop()

    async def abort(self) -> None:
        """Vanish like a killed client: no SSH goodbye, the WebSocket's TCP connection just drops."""
        self.ws.transport.abort()
        self.ssh.abort()
        await self._stop()

    async def _stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        if self.sock is not None:
            self.sock.close()


async def _ws_to_sock(ws: ClientConnection, writer: asyncio.StreamWriter, refused: asyncio.Future[str]) -> None:
    try:
        async for message in ws:
            if isinstance(message, str):
                if not refused.done():
                    try:
                        refused.set_result(str(json.loads(message).get("error", message)))
                    except (ValueError, AttributeError):
                        refused.set_result(message)
                return
            writer.write(message)
            await writer.drain()
    except ConnectionClosed:
        pass
    finally:
        writer.close()


async def _sock_to_ws(reader: asyncio.StreamReader, ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed, ConnectionError):
        while data := await reader.read(256 * 1024):
            await ws.send(data)
    with contextlib.suppress(Exception):
        await ws.close()


_listener: socket.socket | None = None


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected loopback TCP sockets (asyncssh wants a peer address, which a Unix
    socketpair does not have)."""
    global _listener
    if _listener is None:
        _listener = socket.socket()
        _listener.bind(("127.0.0.1", 0))
        _listener.listen(512)
    a = socket.create_connection(_listener.getsockname())
    b, _ = _listener.accept()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def ssh_connect(
    base: str, token: str, workspace: str, username: str, key: asyncssh.SSHKey, owner: str | None = None,
    timeout: float = 30,
) -> Tunnel:
    ws = await open_stream(base, token, workspace, owner)
    ours, theirs = tcp_pair()
    reader, writer = await asyncio.open_connection(sock=ours, limit=512 * 1024)
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    tasks = [asyncio.create_task(_ws_to_sock(ws, writer, refused)), asyncio.create_task(_sock_to_ws(reader, ws))]
    connecting = asyncio.ensure_future(
        asyncssh.connect(sock=theirs, host="", username=username, client_keys=[key], known_hosts=None,
                         agent_path=None, config=None, preferred_auth="publickey")
    )
    try:
        done, _ = await asyncio.wait({connecting, refused}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if refused.done():  # the server's reason, even if the SSH handshake also failed meanwhile
            raise Refused(refused.result())
        if connecting not in done:
            raise TimeoutError(f"SSH to {workspace} not established within {timeout} s")
        return Tunnel(ws, connecting.result(), tasks, theirs)
    except BaseException:
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ws.transport.abort()
        theirs.close()
        raise
