"""How PostgreSQL and a replica notice that the other end vanished without a word.

A host that loses power or its network sends no FIN or RST: its connections stay open on the
other side until TCP keepalive gives up, which Linux's defaults make 2 h 11 min (7200 s of
silence, then 9 probes 75 s apart). PostgreSQL would keep a vanished replica's sessions that
long, and with them the supervising replica's advisory lock (hatchway.server.supervision): no
other replica could supervise meanwhile, and the dead one's connections would count against
``max_connections``. A replica would wait as long on a query to a vanished database. So both
ends of every replica connection probe a silent peer and drop it after DEAD_PEER_S: PostgreSQL
through per-session settings (nothing to set in postgresql.conf), the replica through its
socket's options.

DEAD_PEER_S is a minute. It must be longer than a supervising replica that is only cut off from
the database (its host alive) takes to stop its workspaces: STEP_DOWN_AFTER_S after it notices,
which its lock connection's probe does within seconds, about 40 s in all. PostgreSQL frees the
lock only after that, so two replicas never supervise at once; and losing the supervisor's host
then stops supervision for about a minute rather than two hours.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

#: Silence on a connection before the first keepalive probe.
IDLE_S = 30
#: Time between unanswered probes.
INTERVAL_S = 10
#: Unanswered probes after which the peer is taken for gone.
COUNT = 3
#: How long a silent peer is given in all. Also the longest that data sent (a query, a result)
#: may go unacknowledged (TCP_USER_TIMEOUT): keepalive only probes a connection with none in flight.
DEAD_PEER_S = IDLE_S + INTERVAL_S * COUNT


def server_settings() -> dict[str, str]:
    """PostgreSQL's side: session settings for asyncpg's ``server_settings`` (any user may set them)."""
    return {
        "tcp_keepalives_idle": str(IDLE_S),
        "tcp_keepalives_interval": str(INTERVAL_S),
        "tcp_keepalives_count": str(COUNT),
        "tcp_user_timeout": str(DEAD_PEER_S * 1000),
    }


def watch_peer(connection: asyncpg.Connection) -> None:
    """The replica's side: the same limits on ``connection``'s socket. asyncpg has no option for
    them (MagicStack/asyncpg#606), so they are set on its transport's socket."""
    sock = connection._transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket: the database is on this host, and its end closes when it exits
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, IDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, INTERVAL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, COUNT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, DEAD_PEER_S * 1000)
