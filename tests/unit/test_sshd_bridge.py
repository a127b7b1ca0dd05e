"""hatchway.sshd.forward.Bridge when the socket side reads before its channel exists.

asyncio's loop honours pause_reading() called from connection_made; uvloop starts reading right
after connection_made regardless, so a client that connects and sends at once (then half-closes)
has its first bytes and its EOF delivered before the channel to the SSH client is open. They
must reach the channel once it is, in order, EOF last.
"""

from __future__ import annotations

from hatchway.sshd.forward import Bridge


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.closed = False
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.written.append(b"<eof>")

    def close(self) -> None:
        self.closed = True


class FakeChannel:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def write_eof(self) -> None:
        self.sent.append(b"<eof>")

    def close(self) -> None:
        self.closed = True


def test_bytes_and_eof_before_the_channel_are_passed_on_in_order() -> None:
    bridge = Bridge("test")
    transport = FakeTransport()
    bridge.socket_end.connection_made(transport)  # type: ignore[arg-type]
    assert not transport.reading  # asked to wait for the channel
    bridge.socket_end.data_received(b"ping ")  # uvloop read anyway
    bridge.socket_end.data_received(b"via -R")
    assert bridge.socket_end.eof_received() is True  # keep the sending direction open
    assert not transport.closed
    chan = FakeChannel()
    bridge.channel_end.connection_made(chan)
    assert chan.sent == [b"ping ", b"via -R", b"<eof>"]
    assert not transport.reading  # nothing more to read after EOF
    bridge.channel_end.data_received(b"ping via -R", None)
    assert bridge.channel_end.eof_received() is False  # both directions done: closed
    assert transport.written == [b"ping via -R", b"<eof>"] and transport.closed and chan.closed


def test_without_early_bytes_reading_resumes_when_the_channel_opens() -> None:
    bridge = Bridge("test")
    transport = FakeTransport()
    bridge.socket_end.connection_made(transport)  # type: ignore[arg-type]
    chan = FakeChannel()
    bridge.channel_end.connection_made(chan)
    assert transport.reading and chan.sent == []
    bridge.socket_end.data_received(b"later")
    assert chan.sent == [b"later"]
