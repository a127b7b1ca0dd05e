"""``hatchway server --metrics-listen``: a real server, a real workspace and real OpenSSH.

The metrics count a real SSH connection exactly (accepted, refused with its reason, setup time),
its bytes while it is live and after it ended, and the gauges come back to zero when it closes.
The metrics listener serves GET /metrics and nothing else; the API's listener never serves them;
an address in use stops the server at once with one line.

The workspace runs without isolation (HATCHWAY_LOCAL_ISOLATION=off), so this runs as any user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.cli import Cli
from tests.helpers.metrics import connections, refused, relayed_bytes, scrape
from tests.helpers.server import HATCHWAY, RunningServer, free_port, wait_for
from tests.helpers.world import children

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (scripts/setup installs it)")

UNISOLATED = {"HATCHWAY_LOCAL_ISOLATION": "off"}
UP, DOWN = 3 * 1024 * 1024, 5_000_000  # bytes sent to the workspace, and back


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[RunningServer, Cli, Path, int]]:
    """A server with metrics on, its site manager's CLI with a running local workspace "dev",
    the ssh config reaching it, and the metrics port."""
    metrics_port = free_port()
    server = RunningServer(tmp_path / "data", extra_env={**UNISOLATED, "HATCHWAY_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"})
    server.start()
    assert server.proc is not None
    cli = Cli(tmp_path / "me")
    try:
        cli.login(server.url, "solo", "solo-password", first=True)
        cli.ok("workspaces", "create", "dev")
        cli.ok("config-ssh", "--ssh-config", str(tmp_path / "ssh_config"), "-y")
        yield server, cli, tmp_path / "ssh_config", metrics_port
    finally:
        workspace = children(server.proc.pid)  # the server stops its workspace's agent ...
        server.stop()
        for pid in workspace:  # ... unless a failed run left it behind
            with contextlib.suppress(OSError):
                if b"hatchway" in Path(f"/proc/{pid}/cmdline").read_bytes():  # still it, not a reused pid
                    os.kill(pid, signal.SIGKILL)


async def test_a_real_ssh_connection_is_counted_exactly_with_its_bytes_live_and_after(
    deployment: tuple[RunningServer, Cli, Path, int],
) -> None:
    server, cli, ssh_config, port = deployment
    before = scrape(port)
    assert connections(before) == {"accepted": 0, "refused": 0, "failed": 0}
    assert relayed_bytes(before) == (0, 0)
    assert before[("hatchway_ssh_connections_relayed", ())] == 0
    assert before[("hatchway_agents_connected", ())] == 1
    assert before[("hatchway_workspaces", (("state", "running"),))] == 1

    # Refused: External Connect off, with the reason users read.
    cli.ok("providers", "edit", "local", "--external-connect", "off")
    r = subprocess.run(["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "hatchway.dev", "true"],
                       capture_output=True, text=True, timeout=30, env=cli.env())
    assert r.returncode == 255 and "External Connect is off" in r.stderr, r.stderr
    cli.ok("providers", "edit", "local", "--external-connect", "on")

    # Accepted: UP bytes up, DOWN back, then the session idles until told to end.
    ssh = await asyncio.create_subprocess_exec(
        "ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "hatchway.dev",
        f"head -c {UP} | wc -c; head -c {DOWN} /dev/zero; echo; echo done; read x",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli.env(),
    )
    assert ssh.stdin is not None and ssh.stdout is not None
    try:
        ssh.stdin.write(os.urandom(UP))
        await asyncio.wait_for(ssh.stdin.drain(), 30)
        assert await asyncio.wait_for(ssh.stdout.readline(), 30) == f"{UP}\n".encode()
        assert await asyncio.wait_for(ssh.stdout.readexactly(DOWN), 30) == bytes(DOWN)
        assert await asyncio.wait_for(ssh.stdout.read(6), 30) == b"\ndone\n"

        live = scrape(port)  # the session is open and idle
        assert connections(live) == {"accepted": 1, "refused": 1, "failed": 0}
        assert live[("hatchway_ssh_connections_relayed", ())] == 1
        up, down = relayed_bytes(live)  # a live stream's counters, summed at scrape time
        assert UP <= up < UP * 1.2 and DOWN <= down < DOWN * 1.2, (up, down)

        ssh.stdin.write(b"\n")
        ssh.stdin.close()
        assert await asyncio.wait_for(ssh.wait(), 30) == 0
    finally:
        if ssh.returncode is None:
            ssh.kill()
            await ssh.wait()

    ended = wait_for(lambda: (s := scrape(port))[("hatchway_ssh_connections_relayed", ())] == 0 and s, 10,
                     what="the relayed gauge to come back to 0")
    assert connections(ended) == {"accepted": 1, "refused": 1, "failed": 0}
    assert refused(ended) == {
        "bad_request": 0, "unauthenticated": 0, "suspended": 0, "no_access": 0, "external_connect_off": 1,
        "not_running": 0, "agent_unreachable": 0, "too_many": 0, "ended_during_setup": 0,
    }
    total_up, total_down = relayed_bytes(ended)  # the ended stream's totals stay
    assert up <= total_up < UP * 1.2 and down <= total_down < DOWN * 1.2, (total_up, total_down)
    assert ended[("hatchway_ssh_connection_setup_seconds_count", ())] == 1
    assert 0 < ended[("hatchway_ssh_connection_setup_seconds_sum", ())] < 10
    assert ended[("hatchway_agents_connected", ())] == 1
    # The record the connection log keeps agrees with the metric.
    row = cli.ok("audit", "connections", "--json").json()[0]
    assert (row["result"], row["bytes_to_workspace"], row["bytes_from_workspace"]) == ("closed", total_up, total_down)


def test_the_metrics_listener_serves_only_metrics_and_the_api_listener_none(tmp_path: Path) -> None:
    port = free_port()
    server = RunningServer(tmp_path / "data", extra_env={"HATCHWAY_METRICS_LISTEN": f"127.0.0.1:{port}"})
    server.start()
    try:
        assert f"INFO  hatchway.server: serving metrics at http://127.0.0.1:{port}/metrics (no credentials asked: " \
               "keep this address private)" in server.log()
        metrics = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=10) as c:
            assert c.get(server.url + "/metrics").status_code == 404  # the API's listener: not there
            assert c.get(server.url + "/api/v1/openapi.json").status_code == 200
            for method, path in [("GET", "/"), ("GET", "/api/v1/openapi.json"), ("GET", "/api/v1/users/me"),
                                 ("POST", "/metrics"), ("GET", "/metrics/"), ("GET", "/static/hatchway.css")]:
                r = c.request(method, metrics + path)
                assert (r.status_code, r.text) == (404, "not found: this listener serves only GET /metrics\n"), (method, path)
            r = c.get(metrics + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
            assert r.text.endswith("# EOF\n")
        assert connections(scrape(port)) == {"accepted": 0, "refused": 0, "failed": 0}
    finally:
        assert server.stop() == 0
    with pytest.raises(httpx.ConnectError):  # it stopped with the server
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_a_metrics_address_in_use_stops_the_server_at_once_with_one_line(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    data = tmp_path / "data"
    try:
        r = subprocess.run([HATCHWAY, "server", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data),
                            "--metrics-listen", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30)
    finally:
        taken.close()
    lines = [line.split(" ", 2)[2] for line in r.stderr.splitlines()]
    assert (r.returncode, lines) == (1, [
        f"ERROR hatchway.server: cannot serve metrics on 127.0.0.1:{port} (--metrics-listen): Address already in use; "
        "stop what uses that address or choose another one with --metrics-listen"
    ])
    assert not (data / "hatchway.db").exists()  # refused before the database was touched

    r = subprocess.run([HATCHWAY, "server", "--data-dir", str(data), "--metrics-listen", "9100"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == "Error: invalid --metrics-listen '9100': expected HOST:PORT, e.g. 127.0.0.1:2112"
