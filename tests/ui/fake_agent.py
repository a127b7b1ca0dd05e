"""A protocol-level stand-in for a workspace agent, so UI tests see real agent state and real
relayed connections (with byte counts and durations) without a workspace.

It speaks the agent side of the control channel (hello report, answers dials) and echoes
every byte of a dialled stream back, as an SSH server would answer a client.
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect


def _ws_url(http_url: str) -> str:
    return "ws" + http_url[len("http"):]


class FakeAgent:
    def __init__(self, url: str, token: str, report: dict[str, Any]) -> None:
        self.url = url
        self.token = token
        self.report = report
        self._control: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        self._thread: threading.Thread | None = None

    def _connect(self, path: str) -> ClientConnection:
        return connect(_ws_url(self.url) + path, additional_headers={"Authorization": f"Bearer {self.token}"}, open_timeout=10)

    def start(self) -> FakeAgent:
        self._control = self._stack.enter_context(self._connect("/api/v1/agent/control"))
        self._control.send(json.dumps({"type": "hello", **self.report}))
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        assert self._control is not None
        try:
            for raw in self._control:
                msg = json.loads(raw)
                if msg.get("type") == "dial":
                    threading.Thread(target=self._serve, args=(msg["stream"],), daemon=True).start()
        except ConnectionClosed:
            pass

    def _serve(self, stream_id: str) -> None:
        with self._connect(f"/api/v1/agent/streams/{stream_id}") as ws:
            mode = self.report.get("ssh_mode", "built-in")
            ws.send(json.dumps({"mode": mode, "version": self.report.get("ssh_server_version") or ""}))
            try:
                for data in ws:
                    ws.send(data)
            except ConnectionClosed:
                pass

    def stop(self) -> None:
        self._stack.close()
        if self._thread is not None:
            self._thread.join(5)


def ssh_stream(url: str, token: str, workspace: str, payload: bytes, owner: str | None = None) -> tuple[bytes, str | None]:
    """Open the client side of an SSH relay stream (what ``hatchway proxy`` does) to
    ``workspace`` (of ``owner``, default the token's user), send ``payload`` and read it back;
    returns (echo, refusal message or None)."""
    with connect(
        _ws_url(url) + f"/api/v1/workspaces/{workspace}/ssh" + (f"?owner={owner}" if owner else ""),
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=10,
        max_size=None,
    ) as ws:
        got = b""
        with contextlib.suppress(ConnectionClosed):  # refused at once: the reason is still queued
            ws.send(payload)
        try:
            while len(got) < len(payload):
                frame = ws.recv(timeout=10)
                if isinstance(frame, str):
                    return got, json.loads(frame).get("error")
                got += frame
        except ConnectionClosed:
            pass
        return got, None
