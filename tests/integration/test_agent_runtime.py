"""The real agent process against a real server process: injection, reports, key rotation,
reconnects, dial-back into the built-in server and forwarding to an SSH server on the port."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from hatchway.sshd.server import SERVER_VERSION
from tests.helpers.server import (
    HATCHWAY,
    RunningServer,
    api,
    first_user,
    running_server,
    wait_for,
)

AK_START = "# ------------START-HATCHWAY-KEYS------------\n"
AK_COMMENT = "# Managed by the Hatchway agent; your own keys go outside this block.\n"
AK_END = "# ------------END-HATCHWAY-KEYS--------------\n"
ENV_HEAD = (
    "# --------- START HATCHWAY ENVIRONMENT VARIABLES ----------\n"
    "# The following has been auto-generated at workspace startup\n"
    "# You should not hand-edit this section unless you are deleting it.\n"
    "\n"
)
ENV_END = "\n# ----------------- END HATCHWAY -----------------------\n"


@dataclass
class Deployment:
    server: RunningServer
    user_token: str
    agent_token: str
    workspace_id: str

    def workspace(self) -> dict[str, Any]:
        with api(self.server.url, self.user_token) as c:
            r = c.get("/workspaces/dev")
            r.raise_for_status()
            return r.json()

    def public_key(self) -> str:
        with api(self.server.url, self.user_token) as c:
            return c.get("/users/me/key").json()["public_key"]


class Agent:
    """``hatchway agent`` as a subprocess with its own HOME; stderr kept for assertions."""

    def __init__(self, home: Path, url: str, token: str, *args: str) -> None:
        self.home = home
        self.log_path = home.parent / f"{home.name}-agent.log"
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {**os.environ, "HOME": str(home), "HATCHWAY_AGENT_TOKEN": token}
        env.pop("HATCHWAY_AGENT_URL", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([HATCHWAY, "agent", "--url", url, "--verbose", *args], stdout=log, stderr=log, env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"agent did not stop on SIGTERM within {timeout} s:\n{self.log()}")
        return self.proc.returncode


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with running_server(tmp_path) as srv:
        token = first_user(srv.url)
        with api(srv.url, token) as c:
            c.post("/providers", json={"name": "byo", "kind": "manual"}).raise_for_status()
            r = c.post("/workspaces", json={"name": "dev", "provider": "byo", "env": {"FOO": "bar", "EMPTY": ""}})
            r.raise_for_status()
            body = r.json()
        yield Deployment(srv, token, body["agent_token"], body["id"])


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()


def expected_environment(d: Deployment, *extra: str) -> str:
    lines = [
        "HATCHWAY_USER_EMAIL=alice@example.com",
        "HATCHWAY_USER_NAME=alice",
        "HATCHWAY_WORKSPACE_NAME=dev",
        f"HATCHWAY_WORKSPACE_ID={d.workspace_id}",
        "HATCHWAY_PROVIDER_NAME=byo",
        f"HATCHWAY_URL={d.server.url}",
        *extra,
    ]
    return ENV_HEAD + "".join(line + "\n" for line in lines) + ENV_END


def first_ssh_bytes(d: Deployment, timeout: float = 10.0) -> bytes:
    """Open the client side of an SSH stream, as ``hatchway proxy`` does, and read the greeting."""
    url = d.server.url.replace("http://", "ws://") + "/api/v1/workspaces/dev/ssh"
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {d.user_token}"}, compression=None, open_timeout=timeout) as ws:
        data = b""
        while b"\n" not in data:
            message = ws.recv(timeout=timeout)
            assert isinstance(message, bytes), f"expected SSH bytes, got {message!r}"
            data += message
        return data


def test_agent_injects_reports_serves_and_follows_key_rotation(deployment: Deployment, agents: list[Agent], tmp_path: Path) -> None:
    d = deployment
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOWNerk4nU1nQxVmPzMgu7gQ16uDy0iU+OoLkYhTYbA8 mine\n")
    agent = Agent(home, d.server.url, d.agent_token, "--ssh-port", "0")
    agents.append(agent)

    ws = wait_for(lambda: (w := d.workspace())["agent_connected"] and w["host_keys"] and w, 15, what="agent connected")
    assert ws["ssh_mode"] == "built-in"
    assert ws["ssh_server_version"] is None
    assert ws["os_user"] == __import__("pwd").getpwuid(os.getuid()).pw_name
    assert ws["agent_version"] == __import__("hatchway").__version__
    assert ws["diagnostics"] == []
    assert len(ws["host_keys"]) == 1 and ws["host_keys"][0].startswith("ssh-ed25519 AAAA")

    # Files: exact content, modes, the user's own key kept below the block.
    ssh = home / ".ssh"
    assert (ssh.stat().st_mode & 0o777) == 0o700
    ak = ssh / "authorized_keys"
    assert (ak.stat().st_mode & 0o777) == 0o600 and (ssh / "environment").stat().st_mode & 0o777 == 0o600
    assert ak.read_text() == (
        AK_START + AK_COMMENT + d.public_key() + "\n" + AK_END
        + "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOWNerk4nU1nQxVmPzMgu7gQ16uDy0iU+OoLkYhTYbA8 mine\n"
    )
    assert (ssh / "environment").read_text() == expected_environment(d, "FOO=bar", "EMPTY=")

    # The host key is persistent and private.
    key_file = home / ".local" / "share" / "hatchway-agent" / "ssh_host_ed25519_key"
    assert (key_file.stat().st_mode & 0o777) == 0o600
    assert (key_file.parent.stat().st_mode & 0o777) == 0o700

    # Dial-back and splice: the built-in server greets through the relay.
    greeting = first_ssh_bytes(d)
    assert greeting.split(b"\r\n")[0] == f"SSH-2.0-{SERVER_VERSION}".encode()

    # Key rotation reaches authorized_keys within 5 s.
    old_key = d.public_key()
    with api(d.server.url, d.user_token) as c:
        new_key = c.post("/users/me/key/regenerate").json()["public_key"]
    t0 = time.monotonic()
    wait_for(lambda: new_key in ak.read_text(), 5, what="regenerated key in authorized_keys")
    assert time.monotonic() - t0 < 5
    text = ak.read_text()
    assert old_key.split()[1] not in text
    assert text.startswith(AK_START + AK_COMMENT + new_key + "\n" + AK_END)
    assert text.endswith(" mine\n")

    # SIGTERM: clean exit 0; the token never reached the log.
    assert agent.stop() == 0
    log = agent.log()
    assert d.agent_token not in log
    assert "Traceback" not in log


def test_agent_reconnects_within_5s_after_a_server_restart(deployment: Deployment, agents: list[Agent], tmp_path: Path) -> None:
    d = deployment
    agent = Agent(tmp_path / "home", d.server.url, d.agent_token, "--ssh-port", "0")
    agents.append(agent)
    wait_for(lambda: d.workspace()["agent_connected"], 15, what="agent connected")
    host_keys = d.workspace()["host_keys"]

    d.server.stop()
    time.sleep(1.0)  # the agent is now retrying against a dead port
    d.server.start()
    t0 = time.monotonic()
    wait_for(lambda: d.workspace()["agent_connected"], 5, what="agent reconnected after the server restart")
    assert time.monotonic() - t0 < 5
    assert agent.proc.poll() is None  # the same agent process, not a restart
    assert d.workspace()["host_keys"] == host_keys  # the built-in host key survived
    assert first_ssh_bytes(d).startswith(b"SSH-2.0-")
    assert agent.stop() == 0


def test_invalid_token_exits_2_with_a_message(deployment: Deployment, tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path / "home"), "HATCHWAY_AGENT_TOKEN": "hwa_not-a-valid-token"}
    p = subprocess.run(
        [HATCHWAY, "agent", "--url", deployment.server.url], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert p.returncode == 2
    assert "agent token not valid" in p.stderr
    assert "hwa_not-a-valid-token" not in p.stderr
    assert not (tmp_path / "home" / ".ssh").exists()  # nothing is injected for an unknown workspace


def test_unusable_state_dir_exits_2_with_a_message(deployment: Deployment, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where a directory should be")
    not_a_dir = tmp_path / "file" / "state"
    env = {**os.environ, "HOME": str(tmp_path / "home"), "HATCHWAY_AGENT_TOKEN": deployment.agent_token}
    p = subprocess.run(
        [HATCHWAY, "agent", "--url", deployment.server.url, "--ssh-port", "0", "--state-dir", str(not_a_dir)],
        capture_output=True, text=True, env=env, timeout=30, check=False,
    )
    assert p.returncode == 2
    assert f"cannot use the state directory {not_a_dir}: Not a directory" in p.stderr
    assert "Traceback" not in p.stderr


def test_replaced_token_stops_a_running_agent_with_status_2(deployment: Deployment, agents: list[Agent], tmp_path: Path) -> None:
    d = deployment
    agent = Agent(tmp_path / "home", d.server.url, d.agent_token, "--ssh-port", "0")
    agents.append(agent)
    wait_for(lambda: d.workspace()["agent_connected"], 15, what="agent connected")
    with api(d.server.url, d.user_token) as c:
        c.post("/workspaces/dev/agent-token").raise_for_status()
    assert agent.proc.wait(10) == 2
    assert "agent token not valid" in agent.log()


def test_missing_token_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HATCHWAY_AGENT_TOKEN", "HATCHWAY_AGENT_URL")}
    p = subprocess.run([HATCHWAY, "agent", "--url", "http://127.0.0.1:9"], capture_output=True, text=True, env=env, timeout=30, check=False)
    assert p.returncode == 2
    assert "HATCHWAY_AGENT_TOKEN" in p.stderr


class FakeSSHD:
    """A TCP server that greets like OpenSSH and then echoes; it hangs up on a client that sends
    an SSH banner (the agent's host-key fetch), so only the test's raw bytes are echoed."""

    BANNER = b"SSH-2.0-OpenSSH_9.9 FakeForTests\r\n"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.connections = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                writer.write(self.BANNER + b"KEXINIT-PLACEHOLDER")
                await writer.drain()
                while data := await reader.read(65536):
                    if data.startswith(b"SSH-"):
                        return
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        async def main() -> None:
            self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            self.ready.set()
            await self.server.serve_forever()

        self.main = self.loop.create_task(main())
        try:
            self.loop.run_until_complete(self.main)
        except asyncio.CancelledError:
            pass
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    def stop(self) -> None:
        def cancel() -> None:
            self.server.close()
            self.main.cancel()

        self.loop.call_soon_threadsafe(cancel)
        self.thread.join(5)


def test_agent_forwards_to_an_ssh_server_on_the_port_replaying_its_banner(
    deployment: Deployment, agents: list[Agent], tmp_path: Path
) -> None:
    d = deployment
    sshd = FakeSSHD()
    try:
        agent = Agent(tmp_path / "home", d.server.url, d.agent_token, "--ssh-port", str(sshd.port))
        agents.append(agent)
        ws = wait_for(lambda: (w := d.workspace())["agent_connected"] and w["ssh_mode"] and w, 15, what="agent report")
        assert ws["ssh_mode"] == "openssh"
        assert ws["ssh_server_version"] == "OpenSSH_9.9 FakeForTests"
        assert len(ws["host_keys"]) == 1  # the built-in key; the fake has none to fetch

        url = d.server.url.replace("http://", "ws://") + "/api/v1/workspaces/dev/ssh"
        with ws_connect(url, additional_headers={"Authorization": f"Bearer {d.user_token}"}, compression=None) as c:
            got = b""
            while not got.endswith(b"KEXINIT-PLACEHOLDER"):
                got += c.recv(timeout=10)
            # The banner the agent read while checking the port reaches the client byte for byte.
            assert got == FakeSSHD.BANNER + b"KEXINIT-PLACEHOLDER"
            c.send(b"ping-1")
            assert c.recv(timeout=10) == b"ping-1"
            big = os.urandom(3 * 1024 * 1024)  # several frames each way, through every hop
            c.send(big)
            echoed = b""
            while len(echoed) < len(big):
                echoed += c.recv(timeout=10)
            assert echoed == big

            # A live stream does not depend on the control channel: a second agent with the same
            # token takes the control channel over, and this stream carries on regardless.
            other = Agent(tmp_path / "home2", d.server.url, d.agent_token, "--ssh-port", str(sshd.port))
            agents.append(other)
            wait_for(lambda: "replaced by a newer connection" in agent.log(), 15, what="first agent replaced")
            c.send(b"ping-2")
            assert c.recv(timeout=10) == b"ping-2"
            assert other.stop() == 0

        # The connection log records the mode the agent announced.
        with api(d.server.url, d.user_token) as a:
            conns = wait_for(lambda: [x for x in a.get("/connections").json() if x["ended_at"]], 5, what="ended connection")
        assert conns[0]["mode"] == "openssh"
        assert agent.stop() == 0
    finally:
        sshd.stop()


def test_a_non_ssh_listener_is_reported_and_the_built_in_server_answers(
    deployment: Deployment, agents: list[Agent], tmp_path: Path
) -> None:
    import socket

    d = deployment
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        agent = Agent(tmp_path / "home", d.server.url, d.agent_token, "--ssh-port", str(listener.getsockname()[1]))
        agents.append(agent)
        ws = wait_for(lambda: (w := d.workspace())["agent_connected"] and w["ssh_mode"] and w, 15, what="agent report")
        assert ws["ssh_mode"] == "built-in"
        assert "port 22 answers but is not an SSH server; using the built-in server" in ws["diagnostics"]
        assert first_ssh_bytes(d).startswith(b"SSH-2.0-")
        assert "WARNING hatchway.agent.port22: port 22 answers but is not an SSH server" in agent.log()
        assert agent.stop() == 0
    finally:
        stop.set()
        thread.join(2)
        listener.close()
