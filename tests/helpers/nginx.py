"""Debian's nginx in front of server replicas, on loopback ports, for the scale-out tests.

The documented example (deploy/nginx/hatchway.conf) is used as written, with only its listen
port and upstream ports replaced, so the tests prove the configuration people copy.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

from tests.helpers.server import wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "hatchway.conf"

#: Proxy settings shared by the placement servers (the same as the example's location block).
_PROXY = """
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $hatchway_connection;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_read_timeout 1h;
        proxy_send_timeout 1h;
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_buffer_size 64k;
        proxy_buffers 4 64k;
"""


def why_cannot_run() -> str | None:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        return "nginx is not installed (scripts/setup installs Debian's nginx-light when root)"
    return None


def example_config(listen_port: int, replica_ports: list[int]) -> str:
    """The documented configuration, pointed at these loopback ports."""
    text = EXAMPLE.read_text()
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n" for p in replica_ports)
    text, n = re.subn(r"(?m)^    server 127\.0\.0\.1:\d+ [^\n]*\n(?:    server 127\.0\.0\.1:\d+ [^\n]*\n)*", servers, text)
    assert n == 1, "the example's upstream block changed shape"
    text, n = re.subn(r"(?m)^    listen 80;$", f"    listen 127.0.0.1:{listen_port};", text)
    assert n == 1, "the example's listen line changed shape"
    return text


def tls_config(listen_port: int, replica_ports: list[int], cert: Path, key: Path) -> str:
    """The documented configuration with TLS on its listener, as its comment says to run it."""
    text = example_config(listen_port, replica_ports)
    listen = f"    listen 127.0.0.1:{listen_port};"
    tls = f"    listen 127.0.0.1:{listen_port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};"
    assert text.count(listen) == 1
    return text.replace(listen, tls)


def placement_config(replica_ports: list[int], routes: list[tuple[int, int, int, int]]) -> str:
    """Test-only routing: on the port of route ``(c, a, d, port)`` ordinary clients go to replica c, an
    agent's control channel to replica a and its dial-back streams to replica d (told apart by
    the agent's User-Agent, which names the channel)."""
    out = [
        'map $http_user_agent $hatchway_role {\n    "~\\(control\\)$" control;\n    "~\\(stream\\)$" stream;\n    default client;\n}\n'
    ]
    for i, p in enumerate(replica_ports):
        out.append(f"upstream hatchway_r{i} {{ server 127.0.0.1:{p}; }}\n")
    for c, a, d, port in routes:
        out.append(
            f"server {{\n    listen 127.0.0.1:{port};\n    set $pick hatchway_r{c};\n"
            f"    if ($hatchway_role = control) {{ set $pick hatchway_r{a}; }}\n"
            f"    if ($hatchway_role = stream) {{ set $pick hatchway_r{d}; }}\n"
            f"    location / {{\n        proxy_pass http://$pick;{_PROXY}    }}\n}}\n"
        )
    return "".join(out)


class Nginx:
    def __init__(self, workdir: Path, *snippets: str) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        includes = []
        for i, text in enumerate(snippets):
            path = self.dir / f"site{i}.conf"
            path.write_text(text)
            includes.append(f"    include {path};\n")
        d = self.dir
        self.conf = d / "nginx.conf"
        self.conf.write_text(
            "user root;\nworker_processes 1;\nworker_rlimit_nofile 16384;\ndaemon off;\n"
            f"pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
            "events { worker_connections 8192; }\n"
            "http {\n"
            f"    access_log {d}/access.log;\n"
            f"    client_body_temp_path {d}/tmp/body;\n    proxy_temp_path {d}/tmp/proxy;\n"
            f"    fastcgi_temp_path {d}/tmp/fastcgi;\n    uwsgi_temp_path {d}/tmp/uwsgi;\n    scgi_temp_path {d}/tmp/scgi;\n"
            + "".join(includes) + "}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, probe_port: int) -> None:
        check = subprocess.run(["nginx", "-t", "-c", str(self.conf), "-p", str(self.dir)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        log = open(self.dir / "stderr.log", "ab")
        self.proc = subprocess.Popen(["nginx", "-c", str(self.conf), "-p", str(self.dir)], stdout=log, stderr=log)
        log.close()

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            import socket

            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", probe_port)) == 0

        wait_for(listening, 15, what="nginx to listen")

    def log(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in (self.dir / "stderr.log", self.dir / "error.log") if p.exists()
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown: open WebSockets are cut
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
