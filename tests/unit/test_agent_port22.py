"""Port 22: banner parsing (pure), the per-connection probe and the monitor (real sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncssh
import pytest

from hatchway.agent.port22 import (
    NOT_SSH_DIAGNOSTIC,
    BannerStatus,
    Port22Monitor,
    PortState,
    fetch_host_keys,
    parse_banner,
    probe,
)

# ---- parse_banner ---------------------------------------------------------------------------


def test_openssh_banner() -> None:
    status, banner = parse_banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
    assert status is BannerStatus.SSH
    assert banner is not None
    assert banner.line == "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"
    assert banner.proto == "2.0"
    assert banner.software == "OpenSSH_9.2p1"
    assert banner.comments == "Debian-2+deb12u3"
    assert banner.version == "OpenSSH_9.2p1 Debian-2+deb12u3"
    assert banner.is_openssh


def test_banner_without_comments_and_bare_lf_and_trailing_bytes() -> None:
    status, banner = parse_banner(b"SSH-1.99-dropbear_2022.83\n\x00\x00\x01\x14\x0a\x14kexinit...")
    assert status is BannerStatus.SSH
    assert banner is not None
    assert (banner.proto, banner.software, banner.comments) == ("1.99", "dropbear_2022.83", "")
    assert banner.version == "dropbear_2022.83"
    assert not banner.is_openssh


@pytest.mark.parametrize("partial", [b"", b"S", b"SS", b"SSH", b"SSH-", b"SSH-2.0-Open", b"SSH-2.0-OpenSSH_9.2p1\r"])
def test_prefixes_of_a_banner_need_more(partial: bytes) -> None:
    assert parse_banner(partial) == (BannerStatus.NEED_MORE, None)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 400 Bad Request\r\n\r\n",
        b"s",
        b"SSX",
        b"220 smtp.example.com ESMTP\r\n",
        b"SSH-2.0-" + b"x" * 300,  # no line end within 255 bytes
        b"SSH-2.0-Open\x1b[31mSSH\r\n",  # terminal escape in the banner
        b"SSH-2.0-Op\xc3\xa9nSSH\r\n",  # not ASCII
        b"SSH-2.0\r\n",  # no software version
        b"SSH--x\r\n",  # no protocol version
        b"SSH-1.5-OldServer\r\n",  # SSH 1 only: every OpenSSH client would fail against it
        b"SSH-1.0-x\r\n",
        b"SSH-3.0-x\r\n",
        b"SSH-2.00-x\r\n",
    ],
)
def test_not_ssh(data: bytes) -> None:
    assert parse_banner(data) == (BannerStatus.NOT_SSH, None)


def test_banner_of_exactly_255_bytes_including_crlf_is_accepted() -> None:
    line = b"SSH-2.0-" + b"a" * (255 - len(b"SSH-2.0-") - 2) + b"\r\n"
    assert len(line) == 255
    status, banner = parse_banner(line)
    assert status is BannerStatus.SSH and banner is not None and len(banner.line) == 253


async def test_an_ssh1_only_listener_is_not_trusted_and_reported() -> None:
    """A server greeting ``SSH-1.5-`` is a listener we cannot forward to (clients would see
    "Protocol major versions differ: 2 vs. 1"): the built-in server serves and a warning says so."""

    async def ssh1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-1.5-OldServer\r\n")
        await writer.drain()
        await reader.read(1)

    async with listener(ssh1) as port:
        result = await probe(port, keep=True)
        assert (result.state, result.writer) == (PortState.NOT_SSH, None)
        assert result.detail == "greeting is not an SSH banner: b'SSH-1.5-OldServer\\r\\n'"
        monitor = Port22Monitor(port, on_change=lambda: None)
        assert await monitor.refresh() is True
        assert monitor.status.diagnostics == (NOT_SSH_DIAGNOSTIC,)
        assert not monitor.status.is_ssh


# ---- probe against real listeners ----------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def listener(handler: Handler) -> AsyncIterator[int]:
    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_probe_keeps_an_ssh_connection_and_returns_every_byte_read() -> None:
    received = asyncio.get_running_loop().create_future()

    async def fake_sshd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Banner split over two segments, KEXINIT-ish bytes right behind it.
        writer.write(b"SSH-2.0-OpenSSH_9.9")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b" Test\r\n\x00\x00\x00\x0cKEXINIT-BYTES")
        await writer.drain()
        received.set_result(await reader.readexactly(5))
        writer.write(b"bye")
        await writer.drain()

    async with listener(fake_sshd) as port:
        result = await probe(port, keep=True)
        try:
            assert result.state is PortState.SSH
            assert result.banner is not None and result.banner.version == "OpenSSH_9.9 Test"
            # Everything read so far is handed over, to be replayed to the client.
            initial = result.initial
            assert result.reader is not None and result.writer is not None
            while not initial.endswith(b"KEXINIT-BYTES"):
                initial += await result.reader.read(100)
            assert initial == b"SSH-2.0-OpenSSH_9.9 Test\r\n\x00\x00\x00\x0cKEXINIT-BYTES"
            result.writer.write(b"hello")
            assert await asyncio.wait_for(received, 2) == b"hello"
            assert await result.reader.readexactly(3) == b"bye"
        finally:
            await result.close()
        assert result.writer is None


async def test_probe_without_keep_closes_the_connection() -> None:
    closed = asyncio.Event()

    async def fake_sshd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.9\r\n")
        await writer.drain()
        assert await reader.read(10) == b""
        closed.set()

    async with listener(fake_sshd) as port:
        result = await probe(port)
        assert result.state is PortState.SSH and result.writer is None
        await asyncio.wait_for(closed.wait(), 2)


async def test_http_server_is_not_ssh_and_decided_without_waiting() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await reader.read(10)

    async with listener(http) as port:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await probe(port, keep=True, timeout=5.0)
        assert loop.time() - t0 < 1.0
        assert result.state is PortState.NOT_SSH
        assert result.writer is None and result.reader is None
        assert "not an SSH banner" in result.detail


async def test_silent_listener_times_out_as_not_ssh() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)

    async with listener(silent) as port:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await probe(port, keep=True, timeout=0.3)
        assert 0.25 < loop.time() - t0 < 1.5
        assert result.state is PortState.NOT_SSH
        assert result.writer is None
        assert result.detail == "no SSH banner within 0.3 s"


async def test_listener_that_closes_at_once_is_not_ssh() -> None:
    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return

    async with listener(rude) as port:
        result = await probe(port)
        assert result.state is PortState.NOT_SSH
        assert result.detail == "closed the connection at once"


async def test_refused_port_and_disabled_forwarding_are_closed() -> None:
    assert (await probe(closed_port())).state is PortState.CLOSED
    result = await probe(0)
    assert result.state is PortState.CLOSED and result.detail == "forwarding to port 22 is disabled"


# ---- host keys and the monitor --------------------------------------------------------------


async def test_fetch_host_keys_returns_every_key_type_of_a_real_ssh_server() -> None:
    ed = asyncssh.generate_private_key("ssh-ed25519")
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[ed, rsa], config=None, gss_host=None)
    try:
        port = server.sockets[0].getsockname()[1]
        keys = await fetch_host_keys(port)
    finally:
        server.close()
        await server.wait_closed()

    def line(k: asyncssh.SSHKey) -> str:
        return " ".join(k.export_public_key("openssh").decode().split()[:2])

    assert keys == [line(ed), line(rsa)]


async def test_fetch_host_keys_from_a_non_ssh_port_is_empty_and_bounded() -> None:
    async def banner_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.9\r\n")
        await writer.drain()
        await reader.read(1 << 20)
        await asyncio.sleep(10)

    async with listener(banner_then_silence) as port:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await fetch_host_keys(port, timeout=0.5) == []
        assert loop.time() - t0 < 2.0


async def test_monitor_fetches_host_keys_once_per_change_and_reports_changes() -> None:
    banner = [b"SSH-2.0-OpenSSH_9.9\r\n"]

    async def fake_sshd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner[0])
        await writer.drain()

    fetched: list[int] = []
    changes: list[int] = []

    async def key_fetcher(port: int) -> list[str]:
        fetched.append(port)
        return [f"ssh-ed25519 KEY{len(fetched)}"]

    async def collect() -> list[str]:
        return ["a diagnostic"]

    async with listener(fake_sshd) as port:
        mon = Port22Monitor(port, on_change=lambda: changes.append(1), collect_diagnostics=collect, key_fetcher=key_fetcher)
        assert await mon.refresh() is True
        assert mon.status.is_ssh and mon.status.host_keys == ("ssh-ed25519 KEY1",)
        assert mon.status.diagnostics == ("a diagnostic",)
        assert await mon.refresh() is False  # nothing changed: no new fetch, no report
        assert fetched == [port] and changes == [1]
        banner[0] = b"SSH-2.0-OpenSSH_10.0\r\n"  # sshd upgraded
        assert await mon.refresh() is True
        assert mon.status.banner is not None and mon.status.banner.version == "OpenSSH_10.0"
        assert mon.status.host_keys == ("ssh-ed25519 KEY2",)
        assert len(fetched) == 2 and changes == [1, 1]

    # The listener is gone: back to the built-in server, no keys, no diagnostics.
    assert await mon.refresh() is True
    assert mon.status.state is PortState.CLOSED
    assert mon.status.host_keys == () and mon.status.diagnostics == ()


async def test_monitor_reports_a_non_ssh_listener_as_a_diagnostic() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nhi")
        await writer.drain()

    async with listener(http) as port:
        mon = Port22Monitor(port, on_change=lambda: None)
        assert await mon.refresh() is True
        assert mon.status.state is PortState.NOT_SSH
        assert mon.status.diagnostics == (NOT_SSH_DIAGNOSTIC,)
        assert NOT_SSH_DIAGNOSTIC == "port 22 answers but is not an SSH server; using the built-in server"


async def test_while_port_22_is_closed_the_keys_sshd_will_present_are_reported() -> None:
    """sshd not started yet (systemd still booting): its host keys, read from disk, are
    reported, so config-ssh pins them before the first connection reaches it."""
    on_disk = ["ssh-ed25519 DISKKEY"]

    async def installed() -> list[str]:
        return list(on_disk)

    async def fetched(_port: int) -> list[str]:
        return ["ssh-ed25519 DISKKEY"]

    async def fake_sshd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.9\r\n")
        await writer.drain()

    changes: list[int] = []
    mon = Port22Monitor(closed_port(), on_change=lambda: changes.append(1), installed_keys=installed)
    assert await mon.refresh() is True
    assert mon.status.state is PortState.CLOSED and mon.status.host_keys == ("ssh-ed25519 DISKKEY",)
    on_disk.append("ecdsa-sha2-nistp256 KEY2")  # keys generated at first boot: reported again
    assert await mon.refresh() is True
    assert mon.status.host_keys == ("ssh-ed25519 DISKKEY", "ecdsa-sha2-nistp256 KEY2")
    async with listener(fake_sshd) as port:  # sshd answers: what it presents is what counts
        mon.port, mon.key_fetcher = port, fetched
        assert await mon.refresh() is True
        assert mon.status.is_ssh and mon.status.host_keys == ("ssh-ed25519 DISKKEY",)
    assert changes == [1, 1, 1]


async def test_observe_pokes_the_monitor_only_on_news() -> None:
    mon = Port22Monitor(closed_port(), on_change=lambda: None)
    await mon.refresh()
    mon.observe(await probe(closed_port()))
    assert not mon._poke.is_set()

    async def fake_sshd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.9\r\n")
        await writer.drain()

    async with listener(fake_sshd) as port:
        mon.observe(await probe(port))
    assert mon._poke.is_set()
