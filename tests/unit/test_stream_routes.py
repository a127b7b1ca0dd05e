"""The stream endpoints dispatched in front of FastAPI match exactly what FastAPI would route."""

from __future__ import annotations

from fastapi.routing import APIWebSocketRoute

from hatchway.server.api import agent, internal, ssh
from hatchway.server.streams import ROUTES, route


def test_stream_paths_go_to_their_handlers_with_their_parameters() -> None:
    assert route("/api/v1/workspaces/dev/ssh") == (ssh.ssh_stream, {"name": "dev"})
    assert route("/api/v1/agent/streams/ab12") == (agent.data_stream, {"stream_id": "ab12"})
    assert route("/internal/v1/streams/ab12") == (internal.handed_over_stream, {"stream_id": "ab12"})


def test_everything_else_is_left_to_fastapi() -> None:
    for path in ("/api/v1/workspaces/dev", "/api/v1/workspaces/a/b/ssh", "/api/v1/workspaces//ssh",
                 "/api/v1/agent/control", "/api/v1/agent/streams/", "/api/v1/agent/streams/a/b",
                 "/x/api/v1/workspaces/dev/ssh", "/api/v1/workspaces/dev/ssh/", "/internal/v1/dial"):
        assert route(path) is None, path


def test_every_fastapi_websocket_route_with_a_handler_here_has_the_same_path() -> None:
    """The routers still declare these endpoints (docs, tests of the app without the server):
    the dispatcher must agree with them on every path."""
    declared = {}
    for module in (ssh, agent, internal):
        for r in module.router.routes:
            if isinstance(r, APIWebSocketRoute):
                declared[r.endpoint] = r.path
    for pattern, handler in ROUTES:
        template = declared[handler]
        sample = template.replace("{name}", "dev").replace("{stream_id}", "ab12")
        assert pattern.fullmatch(sample), (template, pattern.pattern)
