"""Silently dropping the packets of chosen loopback TCP connections, as a host that lost power or
its network does: no FIN or RST ever arrives, so only keepalive and retransmission timeouts can
end them. Root only (iptables); the rules match each connection's two ports exactly, so nothing
else on the machine is touched, and they are removed on every way out.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tests.helpers.netns import run


def missing_reason() -> str | None:
    """Why connections cannot be dropped here, or None."""
    if shutil.which("iptables") is None:
        return "iptables missing: scripts/setup installs it"
    return None


def _rules(client_ports: Iterable[int], server_port: int) -> list[list[str]]:
    """Both directions of each connection from 127.0.0.1:client to 127.0.0.1:server."""
    rules = []
    for client in client_ports:
        for sport, dport in ((client, server_port), (server_port, client)):
            rules.append(["OUTPUT", "-o", "lo", "-p", "tcp", "-s", "127.0.0.1", "-d", "127.0.0.1",
                          "--sport", str(sport), "--dport", str(dport), "-j", "DROP"])
    return rules


@contextmanager
def dropped(client_ports: Iterable[int], server_port: int) -> Iterator[None]:
    """Drop every packet of the loopback connections from ``client_ports`` to ``server_port``
    while the block runs."""
    added: list[list[str]] = []
    try:
        for rule in _rules(client_ports, server_port):
            run("iptables", "-w", "-I", *rule)
            added.append(rule)
        yield
    finally:
        for rule in added:
            run("iptables", "-w", "-D", *rule, check=False)
